"""The ablation study: SViT's four findings and the baseline token reducers, as one table.

    python -m tokenprune.ablation --output DIR [--scale quick|full] [--seeds N]
                                  [--dense-checkpoint FILE]

Trains the dense synthetic ViTDet-T Mask R-CNN (``configs/Synthetic/mask_rcnn_vitdet_t_dense.py``)
once per seed, on the mixed-colour shapes (``synthetic_mixcolor_*``: an object's colour says
nothing about its class, so classifying it takes its outline, the deeper blocks' work),
fine-tunes every variant from it with the same budget (the SViT recipe of
``configs/Synthetic/mask_rcnn_vitdet_t_svit.py``: its schedule, learning rate and keep-ratio
loss, with the keep targets of :data:`KEEP_TARGETS`, the gates at :data:`GATE_LR_FACTOR`
times the learning rate and their Gumbel noise annealed to 0 over the first
:data:`GATE_NOISE_ANNEAL` of the run), and evaluates every variant the same way: box and
mask AP on the validation set, backbone FLOPs (:func:`tokenprune.flops.count_model_flops`
on the first validation images, gates included), backbone latency (the ViT alone on the
same preprocessed images, dense and variant interleaved, median) and the mean kept
fraction of the tokens.

Rows (each a config override of the SViT config, see :data:`VARIANTS`): dense (the starting
point) and dense fine-tuned with the same recipe and budget but no gates (the reference
every claim about dense is measured against: the pruned rows get that much more training);
SViT; SViT without preserve (discard); without reactivation (inherit); with a fixed rate;
with the heavier attention gate; DynamicViT; EViT; ToMe; random; SViT's weights with a
random choice of tokens (does the learned choice matter once the model is fine-tuned?); and,
because learned gates keep a different number of tokens at inference than their training
targets, top-k versions of the inherit and heavy-gate runs, so every finding has a pair of
rows at the same keep ratio (:data:`FINDINGS`, stated under the table). Variants whose training is
identical share one fine-tuning run: the ``dynamic`` switch acts only at inference for a
learned gate, so "SViT with a fixed rate" evaluates SViT's weights with top-k, and
DynamicViT evaluates the discard run's weights with top-k. ToMe is training-free (it runs
on the dense weights). ``--seeds N`` repeats the rows marked ``all_seeds`` (dense, dense
fine-tuned, random keep, SViT and its fixed-rate and random-choice rows, ToMe) for N seeds
(the others use seed 0); the table gives mean +- sample standard deviation.

Outputs in DIR: ``table.md``, ``results.csv``, ``ap_vs_flops.png`` (written atomically
after every run), ``results/<variant>_seed<k>.json`` (one per evaluation), ``runs/``
(training folders and checkpoints), ``ablation.json`` (scale, durations) and ``log.txt``
(Detectron2's log). Resumable: a result file that exists is not computed again, a finished
training is not repeated, an interrupted one resumes from its last checkpoint; a folder
made with another recipe (iterations, gate learning-rate factor, noise annealing) is
refused.

Scales: ``quick`` (a 4-block, 96-wide ViT, a few iterations, the 8-image minival set;
minutes on 2 CPU cores, for tests and CI; its numbers mean nothing) and ``full`` (the
12-block ViT-T synthetic config, 300 dense iterations per seed, 150 per variant, the
128-image validation set, 2 seeds by default; about an hour on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .cli import (atomic_write_bytes, atomic_write_json, atomic_write_text, figure_png,
                  first_test_inputs, make_output_dir, run_tool)
from .errors import InputError

__all__ = ["Variant", "VARIANTS", "TRAININGS", "FINDINGS", "Scale", "SCALES", "variant_config",
           "run_ablation", "summarize", "main"]

PROG = "python -m tokenprune.ablation"
NET = "model.backbone.net"
_PACKAGE = os.path.dirname(os.path.abspath(__file__))  # <repo>/projects/TokenPrune/tokenprune
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(_PACKAGE)))
DENSE_CONFIG = os.path.join(_REPO, "configs", "Synthetic", "mask_rcnn_vitdet_t_dense.py")
SVIT_CONFIG = os.path.join(_REPO, "configs", "Synthetic", "mask_rcnn_vitdet_t_svit.py")


# --------------------------------------------------------------------------- variants

@dataclass(frozen=True)
class Variant:
    """One row of the table.

    Attributes:
        name: file and CSV name. label: the table's description.
        overrides: applied to the SViT config for evaluation (``None`` = the dense config).
        train: the fine-tuning run in :data:`TRAININGS` whose weights it evaluates; ``None``
            = the dense weights (the dense row, training-free reducers).
        all_seeds: evaluated for every seed (else seed 0 only).
    """

    name: str
    label: str
    overrides: Optional[Tuple[str, ...]]
    train: Optional[str]
    all_seeds: bool = False


_RANDOM_CHOICE = (f"{NET}.gate=random", f"{NET}.dynamic=False")  # random keep at the targets

#: Fine-tuning runs: overrides of the SViT config used for training.
TRAININGS: Dict[str, Tuple[str, ...]] = {
    "dense_ft": (f"{NET}.pruned_blocks=[]", f"{NET}.keep_ratios=[]"),  # the recipe, no gates
    "svit": (),
    "discard": (f"{NET}.preserve=False",),
    "inherit": (f"{NET}.reactivate=False",),
    "heavy_gate": (f"{NET}.gate=attention_net",),
    "evit": (f"{NET}.gate=attention", f"{NET}.dynamic=False", f"{NET}.reactivate=False"),
    "random": _RANDOM_CHOICE,
}

VARIANTS: List[Variant] = [
    Variant("dense", "Dense ViTDet, the starting point (not fine-tuned)", None, None,
            all_seeds=True),
    Variant("dense_ft", "Dense ViTDet fine-tuned with the same budget (the reference)",
            TRAININGS["dense_ft"], "dense_ft", all_seeds=True),
    Variant("random", "Random keep at the target rates (the floor)", TRAININGS["random"],
            "random", all_seeds=True),
    Variant("svit", "SViT: MLP gate, preserve, reactivate, dynamic rate", (), "svit",
            all_seeds=True),
    Variant("svit_fixed_rate", "SViT with a fixed rate (top-k at the targets)",
            (f"{NET}.dynamic=False",), "svit", all_seeds=True),
    Variant("svit_random_choice", "SViT's fine-tuned weights, tokens chosen at random (fixed "
            "rate)", _RANDOM_CHOICE, "svit", all_seeds=True),
    Variant("svit_no_preserve", "SViT without preserve (pruned tokens discarded)",
            TRAININGS["discard"], "discard"),
    Variant("svit_no_reactivate", "SViT without reactivation (pruned tokens stay pruned)",
            TRAININGS["inherit"], "inherit"),
    Variant("svit_no_reactivate_fixed", "SViT without reactivation, fixed rate (top-k)",
            (*TRAININGS["inherit"], f"{NET}.dynamic=False"), "inherit"),
    Variant("svit_heavy_gate", "SViT with a heavier gate (self-attention + MLP)",
            TRAININGS["heavy_gate"], "heavy_gate"),
    Variant("svit_heavy_gate_fixed", "SViT with the heavier gate, fixed rate (top-k)",
            (*TRAININGS["heavy_gate"], f"{NET}.dynamic=False"), "heavy_gate"),
    Variant("dynamicvit", "DynamicViT: MLP gate, fixed top-k, discard",
            (f"{NET}.preserve=False", f"{NET}.dynamic=False"), "discard"),
    Variant("evit", "EViT: top-k by received attention, inattentive tokens kept as is",
            TRAININGS["evit"], "evit"),
    Variant("tome", "ToMe: bipartite token merging, unmerged for the neck (training-free)",
            (f"{NET}.reducer=tome",), None, all_seeds=True),
]


#: The comparisons the table states: (claim, row A, row B, how A should compare with B).
#: "above": A's box AP higher; "matches": A within 1.0 box AP of B or above it, both as the
#: mean difference over the seeds the two rows have in common. Dense means
#: the dense model fine-tuned as long as the pruned ones. Except finding 3 (which compares
#: the dynamic rate with the fixed one), the pruned rows of a pair keep the same number of
#: tokens: top-k at the targets.
FINDINGS: List[Tuple[str, str, str, str]] = [
    ("SViT within 1.0 box AP of dense", "svit", "dense_ft", "matches"),
    ("SViT (fixed rate) within 1.0 box AP of dense", "svit_fixed_rate", "dense_ft", "matches"),
    ("1. preserving pruned tokens beats discarding them", "svit_fixed_rate", "dynamicvit",
     "above"),
    ("2. reactivation helps", "svit_fixed_rate", "svit_no_reactivate_fixed", "above"),
    ("3. a dynamic rate beats a fixed one", "svit", "svit_fixed_rate", "above"),
    ("4. the MLP gate matches a heavier gate", "svit_fixed_rate", "svit_heavy_gate_fixed",
     "matches"),
    ("SViT (fixed rate) beats random keep", "svit_fixed_rate", "random", "above"),
    ("SViT's learned choice beats a random one on its own weights", "svit_fixed_rate",
     "svit_random_choice", "above"),
    ("SViT (fixed rate) beats EViT", "svit_fixed_rate", "evit", "above"),
    ("SViT (fixed rate) beats ToMe", "svit_fixed_rate", "tome", "above"),
]


# --------------------------------------------------------------------------- scales

@dataclass(frozen=True)
class Scale:
    dense_iters: int
    finetune_iters: int
    overrides: Tuple[str, ...]  # both configs
    svit_overrides: Tuple[str, ...]  # the pruned configs only
    flops_images: int
    latency_images: int
    latency_rounds: int
    seeds: int
    log_period: int
    description: str = ""


_TRAIN_DATA = "dataloader.train.dataset.names=synthetic_mixcolor_train"
#: Keep targets per stage of three pruned blocks: SViT's geometric schedule with ratio 0.5
#: instead of 0.7, so that the last stage keeps about as many tokens as this data's objects
#: cover (9% of the tokens); see the README's ablation section.
KEEP_TARGETS = (0.5, 0.25, 0.125)
_FULL_TARGETS = [k for k in KEEP_TARGETS for _ in range(3)]  # blocks 3-11, 3 per stage
#: Data loading in the training process, so that no loader worker competes with the model
#: for the 2 CPU cores (the generated images need no parallel decoding).
_IN_PROCESS_LOADING = ("dataloader.train.num_workers=0", "dataloader.test.num_workers=0")
_TINY = (
    _TRAIN_DATA, f"{NET}.depth=4", f"{NET}.embed_dim=96", f"{NET}.window_block_indexes=[0,2]",
    "dataloader.train.total_batch_size=2", *_IN_PROCESS_LOADING,
    "dataloader.test.dataset.names=synthetic_mixcolor_minival",
)

SCALES: Dict[str, Scale] = {
    "quick": Scale(dense_iters=20, finetune_iters=4, overrides=_TINY,
                   svit_overrides=(f"{NET}.pruned_blocks=[1,2,3]",
                                   f"{NET}.keep_ratios={list(KEEP_TARGETS)}"),
                   flops_images=1, latency_images=2, latency_rounds=5, seeds=1, log_period=10,
                   description="4-block 96-wide ViT, blocks 1-3 pruned at 0.5/0.25/0.125, "
                               "mixed-colour minival (8 images): a smoke test, the numbers "
                               "mean nothing"),
    "full": Scale(dense_iters=300, finetune_iters=150,
                  overrides=(_TRAIN_DATA, "dataloader.test.dataset.names=synthetic_mixcolor_val",
                             *_IN_PROCESS_LOADING),
                  svit_overrides=(f"{NET}.keep_ratios={_FULL_TARGETS}",),
                  flops_images=4, latency_images=8, latency_rounds=5, seeds=2, log_period=20,
                  description="ViT-T (12 blocks, 192 wide), blocks 3-11 pruned at "
                              "0.5/0.25/0.125, mixed-colour shapes, validation set (128 images)"),
}


#: Learning-rate factor of the gates in every fine-tuning run. AdamW moves a parameter by
#: about the learning rate per step, so at the recipe's 1e-4 the gates of a 150-iteration
#: fine-tune cannot reach their targets (measured: SViT still kept 46% of the tokens in
#: training at the end, against targets averaging 29%; the paper fine-tunes for 4-6 COCO
#: epochs). The VLTP config uses the same factor for its new decoders.
GATE_LR_FACTOR = 10.0
#: Fraction of every fine-tuning run over which the gates' Gumbel noise falls from 1 to 0
#: (:class:`tokenprune.engine.GateNoiseHook`). With SViT's constant noise, gates that are
#: still unsure after 150 iterations train on near-random choices, and the deterministic
#: inference decision then leaves 18% of the tokens unprocessed by every pruned block, a
#: state never met in training (measured: top-k lost 2.0-3.4 box AP to a random choice on
#: the same weights). Gates without parameters (random, EViT) decide without noise anyway.
GATE_NOISE_ANNEAL = 0.67


def variant_config(variant: Variant, scale: Scale, dense_config: str = DENSE_CONFIG,
                   svit_config: str = SVIT_CONFIG, training: bool = False):
    """The LazyConfig of ``variant`` at ``scale`` (its fine-tuning run's when ``training``)."""
    from .config import load_config
    from .engine.lr import gate_lr

    if variant.overrides is None:
        return load_config(dense_config, list(scale.overrides))
    extra = TRAININGS[variant.train] if training and variant.train else variant.overrides
    cfg = load_config(svit_config, [*scale.overrides, *scale.svit_overrides, *extra])
    if training:
        gate_lr(cfg.optimizer, GATE_LR_FACTOR)
        cfg.train.gate_noise_anneal = GATE_NOISE_ANNEAL
    return cfg


# --------------------------------------------------------------------------- logging

def _progress(message: str) -> None:
    print(f"[ablation {time.strftime('%H:%M:%S')}] {message}", flush=True)


class _OnlyTrainingLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("detectron2.utils.events") or record.levelno >= logging.ERROR


@contextlib.contextmanager
def _logging_to(path: str):
    """Detectron2 / fvcore logs to ``path``; the periodic training lines also to the console."""
    fmt = logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%m/%d %H:%M:%S")
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(fmt)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("  %(message)s"))
    console.addFilter(_OnlyTrainingLines())
    saved = []
    for name in ("detectron2", "fvcore", "d2", "tokenprune"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(file_handler)
        if name == "detectron2":
            logger.addHandler(console)
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(file_handler)
            logger.removeHandler(console)
            logger.setLevel(level)
            logger.propagate = propagate
        file_handler.close()


# --------------------------------------------------------------------------- steps

def _train(cfg, out_dir: str, seed: int, iters: int, init: str, log_period: int) -> float:
    """Train ``cfg`` into ``out_dir`` (resuming an interrupted run); returns seconds spent."""
    from detectron2.utils.env import seed_all_rng

    from .engine import build_model, do_train

    cfg.train.output_dir = out_dir
    cfg.train.init_checkpoint = init
    cfg.train.max_iter = iters
    cfg.train.eval_period = 0
    cfg.train.flops_period = 0
    cfg.train.log_period = log_period
    cfg.train.seed = seed
    cfg.train.checkpointer = dict(period=max(iters // 4, 25), max_to_keep=1)
    if "evaluator" in cfg.dataloader:
        del cfg.dataloader["evaluator"]  # the ablation evaluates every variant itself
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    seed_all_rng(seed)
    model = build_model(cfg)
    do_train(cfg, model, resume=True)
    return time.perf_counter() - start


def _load(cfg, checkpoint: str):
    from .checkpoint import TokenPruneCheckpointer
    from .engine import build_model, verify_checkpoint

    model = build_model(cfg)
    verify_checkpoint(model, checkpoint, strict=False)
    TokenPruneCheckpointer(model).load(checkpoint)
    return model.eval()


def _backbone_inputs(model, inputs: Sequence[dict]) -> List[torch.Tensor]:
    with torch.no_grad():
        return [model.preprocess_image([inp]).tensor for inp in inputs]


def backbone_latency(reference: torch.nn.Module, model: torch.nn.Module,
                     images: Sequence[torch.Tensor], rounds: int) -> Tuple[float, float]:
    """Median milliseconds of ``reference(x)`` and ``model(x)`` (ViT backbones) over
    ``rounds`` passes of ``images``, the two interleaved image by image (one untimed warm-up
    pass each), so that slow drift of the machine affects both alike."""
    times: Dict[int, List[float]] = {0: [], 1: []}
    sync = torch.cuda.synchronize if images and images[0].is_cuda else (lambda: None)
    with torch.no_grad():
        for net in (reference, model):
            net(images[0])
        for r in range(rounds):
            for j, x in enumerate(images):
                order = (0, 1) if (r + j) % 2 == 0 else (1, 0)
                for k in order:
                    net = reference if k == 0 else model
                    sync()
                    start = time.perf_counter()
                    net(x)
                    sync()
                    times[k].append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times[0]), statistics.median(times[1])


class _KeepRatioMeter:
    """Mean kept fraction of the tokens over pruned blocks and images, during a test run."""

    def __init__(self, model):
        from .modeling.meta_arch import find_pruned_vit

        self.values: List[float] = []
        self.vit = find_pruned_vit(model)
        self.handle = None if self.vit is None else self.vit.register_forward_hook(self._hook)

    def _hook(self, module, inputs, outputs):
        if module.last_keep_ratios:
            ratios = torch.stack([r.float() for r in module.last_keep_ratios.values()])
            self.values.extend(ratios.mean(dim=0).tolist())

    def close(self) -> float:
        if self.handle is not None:
            self.handle.remove()
        return float(sum(self.values) / len(self.values)) if self.values else 1.0


def _ap(results: Dict[str, Any], task: str) -> float:
    value = results.get(task, {}).get("AP", float("nan"))
    return float(value) if value is not None else float("nan")


def _evaluate(variant: Variant, seed: int, cfg, checkpoint: str, out_dir: str,
              dense: Dict[str, Any], scale: Scale, log_path: str) -> Dict[str, Any]:
    """Box / mask AP, backbone FLOPs, latency and keep ratio of one variant."""
    from detectron2.utils.env import seed_all_rng

    from .engine import do_test
    from .flops import count_model_flops

    start = time.perf_counter()
    seed_all_rng(seed)
    model = _load(cfg, checkpoint)
    cfg.dataloader.evaluator.output_dir = out_dir
    meter = _KeepRatioMeter(model)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log):  # pycocotools prints
        with torch.no_grad():
            results = do_test(cfg, model)
    keep = meter.close()
    with warnings_quiet():
        flops = count_model_flops(model, dense["flops_inputs"])
    dense_ms, ms = backbone_latency(dense["model"].backbone.net, model.backbone.net,
                                    dense["latency_inputs"], scale.latency_rounds)
    dense_flops = dense.get("backbone_flops") or flops.backbone
    return dict(
        variant=variant.name, seed=seed, checkpoint=checkpoint,
        box_ap=_ap(results, "bbox"), mask_ap=_ap(results, "segm"),
        backbone_gflops=flops.backbone / 1e9, gate_gflops=flops.gates / 1e9,
        total_gflops=flops.total / 1e9, backbone_flops_ratio=flops.backbone / dense_flops,
        keep_ratio=keep, backbone_ms=ms, dense_backbone_ms=dense_ms,
        backbone_speedup=dense_ms / ms if ms > 0 else float("nan"),
        eval_seconds=time.perf_counter() - start, results=results,
    )


@contextlib.contextmanager
def warnings_quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
        yield


# --------------------------------------------------------------------------- the study

def _seeds_of(variant: Variant, seeds: int) -> List[int]:
    return list(range(seeds)) if variant.all_seeds else [0]


def run_ablation(output: str, scale_name: str = "quick", seeds: Optional[int] = None,
                 dense_checkpoint: Optional[str] = None, dense_config: str = DENSE_CONFIG,
                 svit_config: str = SVIT_CONFIG) -> Dict[str, Any]:
    """Run (or resume) the study into ``output``; returns the summary rows."""
    from .data import prepare_dataset
    from .flops import count_model_flops

    if scale_name not in SCALES:
        raise InputError(f"unknown scale {scale_name!r}; choose from {sorted(SCALES)}")
    scale = SCALES[scale_name]
    seeds = scale.seeds if seeds is None else seeds
    if seeds < 1:
        raise InputError(f"--seeds must be 1 or more, got {seeds}")
    if dense_checkpoint and not os.path.isfile(dense_checkpoint):
        raise InputError(f"dense checkpoint not found: {dense_checkpoint}")
    for path in (dense_config, svit_config):
        if not os.path.isfile(path):
            raise InputError(f"config file not found: {path} (the ablation uses the "
                             f"repository's configs/Synthetic; pass --dense-config / "
                             f"--svit-config)")
    make_output_dir(output)
    state_path = os.path.join(output, "ablation.json")
    state: Dict[str, Any] = {}
    # what the saved runs depend on: a folder made with another recipe is not resumed
    recipe = dict(dense_iters=scale.dense_iters, finetune_iters=scale.finetune_iters,
                  gate_lr_factor=GATE_LR_FACTOR, gate_noise_anneal=GATE_NOISE_ANNEAL)
    if os.path.isfile(state_path):
        with open(state_path) as f:
            state = json.load(f)
        if state.get("scale") != scale_name:
            raise InputError(f"{output} holds a --scale {state.get('scale')} ablation; use "
                             f"another output folder for --scale {scale_name}")
        changed = [f"{key} {state.get(key)} (this version: {value})"
                   for key, value in recipe.items() if state.get(key) != value]
        if changed:
            raise InputError(f"{output} holds an ablation made with another recipe: "
                             f"{', '.join(changed)}; use another output folder")
    state.update(scale=scale_name, seeds=max(seeds, int(state.get("seeds", 0))),
                 description=scale.description, **recipe)
    state.setdefault("seconds", {})
    atomic_write_json(state_path, state)
    for sub in ("results", "runs", "eval"):
        os.makedirs(os.path.join(output, sub), exist_ok=True)
    log_path = os.path.join(output, "log.txt")
    started = time.perf_counter()

    def result_path(name: str, seed: int) -> str:
        return os.path.join(output, "results", f"{name}_seed{seed}.json")

    def dense_ckpt(seed: int) -> str:
        if seed == 0 and dense_checkpoint:
            return dense_checkpoint
        return os.path.join(output, "runs", f"dense_seed{seed}", "model_final.pth")

    jobs = [(v, s) for v in VARIANTS for s in _seeds_of(v, seeds)]
    todo = [(v, s) for v, s in jobs if not os.path.isfile(result_path(v.name, s))]
    todo.sort(key=lambda job: job[1])  # seed by seed: one dense reference at a time
    _progress(f"scale {scale_name} ({scale.description}); {len(jobs)} evaluations, "
              f"{len(jobs) - len(todo)} already done; output {output}")
    with _logging_to(log_path), warnings_quiet():
        dense_cache: Dict[int, Dict[str, Any]] = {}
        for n, (variant, seed) in enumerate(todo, 1):
            t0 = time.perf_counter()
            tag = f"{variant.name} seed {seed}"
            # dense weights of this seed
            dcfg = variant_config(VARIANTS[0], scale, dense_config, svit_config)
            for name in _dataset_names(dcfg):
                prepare_dataset(name)
            dpath = dense_ckpt(seed)
            if not os.path.isfile(dpath):
                _progress(f"training dense seed {seed}: {scale.dense_iters} iterations")
                secs = _train(dcfg, os.path.dirname(dpath), seed, scale.dense_iters, "",
                              scale.log_period)
                state["seconds"][f"train_dense_seed{seed}"] = secs
                atomic_write_json(state_path, state)
                _progress(f"trained dense seed {seed} in {secs:.0f} s")
            # weights of the variant
            checkpoint = dpath
            if variant.train is not None:
                run = os.path.join(output, "runs", f"{variant.train}_seed{seed}")
                checkpoint = os.path.join(run, "model_final.pth")
                if not os.path.isfile(checkpoint):
                    _progress(f"fine-tuning '{variant.train}' seed {seed} from dense: "
                              f"{scale.finetune_iters} iterations")
                    tcfg = variant_config(variant, scale, dense_config, svit_config, training=True)
                    secs = _train(tcfg, run, seed, scale.finetune_iters, dpath, scale.log_period)
                    state["seconds"][f"train_{variant.train}_seed{seed}"] = secs
                    atomic_write_json(state_path, state)
                    _progress(f"fine-tuned '{variant.train}' seed {seed} in {secs:.0f} s")
            # the dense reference of this seed (FLOPs, latency), built once
            if seed not in dense_cache:
                dmodel = _load(variant_config(VARIANTS[0], scale, dense_config, svit_config), dpath)
                inputs = first_test_inputs(dcfg, max(scale.flops_images, scale.latency_images))
                dense_cache.clear()  # one dense model in memory at a time
                dense_cache[seed] = dict(
                    model=dmodel, flops_inputs=inputs[:scale.flops_images],
                    latency_inputs=_backbone_inputs(dmodel, inputs[:scale.latency_images]),
                    backbone_flops=count_model_flops(dmodel, inputs[:scale.flops_images]).backbone,
                )
            _progress(f"[{n}/{len(todo)}] evaluating {tag}: {variant.label}")
            cfg = variant_config(variant, scale, dense_config, svit_config)
            res = _evaluate(variant, seed, cfg, checkpoint,
                            os.path.join(output, "eval", f"{variant.name}_seed{seed}"),
                            dense_cache[seed], scale, log_path)
            res.update(label=variant.label, train=variant.train, scale=scale_name,
                       finetune_iters=scale.finetune_iters if variant.train else 0,
                       seconds=time.perf_counter() - t0)
            atomic_write_json(result_path(variant.name, seed), res)
            _progress(f"{tag}: box AP {res['box_ap']:.1f}, mask AP {res['mask_ap']:.1f}, "
                      f"backbone {res['backbone_gflops']:.3f} GFLOPs "
                      f"({res['backbone_flops_ratio']:.2f} x dense), keep {res['keep_ratio']:.2f}, "
                      f"{res['backbone_ms']:.1f} ms vs {res['dense_backbone_ms']:.1f} ms dense")
            _write_outputs(output, state, _load_results(output, jobs, result_path))
    state["seconds"]["last_run"] = time.perf_counter() - started
    atomic_write_json(state_path, state)
    rows = summarize(_load_results(output, jobs, result_path))
    _write_outputs(output, state, _load_results(output, jobs, result_path))
    _progress(f"done in {state['seconds']['last_run']:.0f} s: {os.path.join(output, 'table.md')}")
    return dict(rows=rows, state=state)


def _dataset_names(cfg) -> List[str]:
    from .engine.train_loop import dataset_names

    return dataset_names(cfg)


def _load_results(output: str, jobs,
                  result_path: Callable[[str, int], str]) -> Dict[str, List[dict]]:
    found: Dict[str, List[dict]] = {}
    for variant, seed in jobs:
        path = result_path(variant.name, seed)
        if os.path.isfile(path):
            with open(path) as f:
                found.setdefault(variant.name, []).append(json.load(f))
    return found


# --------------------------------------------------------------------------- reporting

_METRICS = ("box_ap", "mask_ap", "backbone_gflops", "gate_gflops", "backbone_flops_ratio",
            "keep_ratio", "backbone_ms", "dense_backbone_ms", "backbone_speedup")


def summarize(found: Dict[str, List[dict]]) -> List[Dict[str, Any]]:
    """One row per variant (in :data:`VARIANTS` order): means over seeds, AP spread."""
    rows = []
    for variant in VARIANTS:
        results = found.get(variant.name)
        if not results:
            continue
        row: Dict[str, Any] = dict(variant=variant.name, label=variant.label,
                                   seeds=len(results), train=variant.train or "",
                                   finetune_iters=results[0].get("finetune_iters", 0))
        for key in _METRICS:
            values = [float(r[key]) for r in results]
            row[key] = sum(values) / len(values)
        for key in ("box_ap", "mask_ap"):
            values = [float(r[key]) for r in results]
            row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else float("nan")
        row["box_ap_by_seed"] = {int(r["seed"]): float(r["box_ap"]) for r in results}
        rows.append(row)
    return rows


_CSV_COLUMNS = ("variant", "label", "seeds", "box_ap", "box_ap_sd", "mask_ap", "mask_ap_sd",
                "backbone_gflops", "backbone_flops_ratio", "gate_gflops", "keep_ratio",
                "backbone_ms", "dense_backbone_ms", "backbone_speedup", "train",
                "finetune_iters")


def _csv(rows: List[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _ap_cell(row: Dict[str, Any], key: str) -> str:
    value, sd = row[key], row[f"{key}_sd"]
    return f"{value:.1f}" if math.isnan(sd) else f"{value:.1f} ± {sd:.1f}"


def _markdown(rows: List[Dict[str, Any]], state: Dict[str, Any]) -> str:
    lines = [
        f"# Token pruning ablation (synthetic shapes, --scale {state['scale']})",
        "",
        f"{state['description']}. Dense model: {state['dense_iters']} iterations per seed; "
        f"each variant fine-tuned from it for {state['finetune_iters']} iterations "
        f"(the same budget; 'shares' = evaluated on another row's fine-tuned weights, whose "
        f"training is identical), training-free rows run on the dense weights.",
        "",
        "| Variant | Description | Box AP | Mask AP | Backbone GFLOPs | vs dense | of which "
        "gates | Kept tokens | Backbone ms | Speed-up | Weights |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    owners: Dict[str, str] = {}
    for row in rows:
        if row["train"] and row["train"] not in owners:
            owners[row["train"]] = row["variant"]
        if not row["train"]:
            weights = "dense (trained)" if row["variant"] == "dense" else "dense (training-free)"
        elif owners[row["train"]] == row["variant"]:
            weights = f"fine-tuned {row['finetune_iters']} it"
        else:
            weights = f"shares {owners[row['train']]}"
        seeds = f" (n={row['seeds']})" if row["seeds"] > 1 else ""
        lines.append(
            f"| {row['variant']}{seeds} | {row['label']} | {_ap_cell(row, 'box_ap')} | "
            f"{_ap_cell(row, 'mask_ap')} | {row['backbone_gflops']:.3f} | "
            f"{row['backbone_flops_ratio']:.2f} | {row['gate_gflops']:.3f} | "
            f"{row['keep_ratio']:.2f} | {row['backbone_ms']:.1f} | "
            f"{row['backbone_speedup']:.2f}x | {weights} |")
    total = sum(v for k, v in state.get("seconds", {}).items() if k != "last_run")
    lines += ["", *_findings(rows)]
    lines += [
        "",
        "Box / mask AP: COCO AP (0-100) on the validation images; ± = sample standard "
        "deviation over seeds (n). Backbone GFLOPs: fvcore (one multiply-add = one flop) for "
        "the ViT (gates and reducer included), mean over the first validation images; 'vs "
        "dense' divides by the dense backbone's. Kept tokens: mean fraction of the tokens a "
        "pruned block computes (merged tokens for ToMe), over pruned blocks and validation "
        "images. Backbone ms: median time of the ViT alone on preprocessed validation images "
        "(batch 1), interleaved with the dense backbone; speed-up = dense ms / variant ms. "
        "'Of which gates': the gates' share of the backbone FLOPs (EViT's score recomputes q "
        "and k; ToMe's matching is no gate and counts in the backbone only).",
        "",
        f"Training time so far: {total / 60:.1f} min; last run "
        f"{state.get('seconds', {}).get('last_run', float('nan')) / 60:.1f} min. "
        f"Re-run: `python -m tokenprune.ablation --output DIR --scale {state['scale']} "
        f"--seeds {state['seeds']}`.",
        "",
    ]
    return "\n".join(lines)


def _findings(rows: List[Dict[str, Any]]) -> List[str]:
    """The :data:`FINDINGS` whose two rows are in ``rows``, one bullet each, with a verdict.

    A claim is judged on the seeds both rows have: the mean of the per-seed differences.
    Seeds differ by several AP, so a two-seed row against a seed-0 row would otherwise
    compare seed 1 with nothing.
    """
    by = {row["variant"]: row for row in rows}
    out = []
    for claim, a, b, how in FINDINGS:
        if a not in by or b not in by:
            continue
        ap_a, ap_b = by[a]["box_ap_by_seed"], by[b]["box_ap_by_seed"]
        common = sorted(set(ap_a) & set(ap_b))
        if not common:
            continue
        diffs = [ap_a[s] - ap_b[s] for s in common]
        diff = sum(diffs) / len(diffs)
        holds = diff > 0 if how == "above" else diff >= -1.0
        if len(ap_a) == len(ap_b) == len(diffs):
            paired = f"{diff:+.1f}" + (
                f"; per seed {' / '.join(f'{d:+.1f}' for d in diffs)}" if len(diffs) > 1 else "")
        else:
            paired = (f"{diff:+.1f} on seed{'s' if len(common) > 1 else ''} "
                      f"{', '.join(map(str, common))}, the seeds both rows have")
        out.append(f"* {claim}: **{'holds' if holds else 'does not hold'}** -- {a} "
                   f"{_ap_cell(by[a], 'box_ap')} box AP at keep {by[a]['keep_ratio']:.2f} vs "
                   f"{b} {_ap_cell(by[b], 'box_ap')} at keep {by[b]['keep_ratio']:.2f} "
                   f"({paired}).")
    return ["Findings (box AP, means over seeds; each claim judged on the seeds both rows "
            "have):", "", *out] if out else []


def _spread_labels(xs: Sequence[float], ys: Sequence[float], near: float,
                   gap: float) -> List[float]:
    """Label heights for points (xs, ys): among points less than ``near`` apart in x, labels
    are at least ``gap`` apart in y, in the points' order, centred on the points' heights."""
    heights = list(ys)
    if not heights:
        return heights
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    groups, current = [], [order[0]]
    for prev, i in zip(order, order[1:]):
        if xs[i] - xs[prev] < near:
            current.append(i)
        else:
            groups.append(current)
            current = [i]
    groups.append(current)
    for group in groups:
        group.sort(key=lambda i: ys[i])
        for prev, i in zip(group, group[1:]):
            heights[i] = max(heights[i], heights[prev] + gap)
        shift = (sum(ys[i] for i in group) - sum(heights[i] for i in group)) / len(group)
        for i in group:
            heights[i] += shift
    return heights


def _plot(rows: List[Dict[str, Any]]) -> bytes:
    """Box and mask AP against backbone GFLOPs, one labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharex=True)
    xs = [r["backbone_gflops"] for r in rows]
    near = 0.1 * (max(xs) - min(xs) or 1.0)  # points this close in x share a label column
    for ax, key, title in ((axes[0], "box_ap", "box AP"), (axes[1], "mask_ap", "mask AP")):
        ys = [r[key] for r in rows]
        label_ys = _spread_labels(xs, ys, near, gap=0.045 * (max(ys) - min(ys) or 1.0))
        for r, x, y, label_y in zip(rows, xs, ys, label_ys):
            sd = r[f"{key}_sd"]
            ax.errorbar([x], [y], yerr=None if math.isnan(sd) else [sd], fmt="o",
                        capsize=3, color="black" if r["variant"] in ("dense", "dense_ft") else
                        "tab:red" if r["variant"] == "svit" else "tab:blue")
            ax.annotate(r["variant"], (x, y), xytext=(x + 0.3 * near, label_y), fontsize=7,
                        va="center", arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5"))
        ax.set_xlim(right=max(xs) + 3 * near)  # room for the labels of the rightmost points
        ax.set_xlabel("backbone GFLOPs per image (fvcore, gates included)")
        ax.set_ylabel(title)
        ax.set_title(f"{title} against backbone FLOPs")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig, dpi=110)


def _write_outputs(output: str, state: Dict[str, Any], found: Dict[str, List[dict]]) -> None:
    rows = summarize(found)
    if not rows:
        return
    atomic_write_text(os.path.join(output, "results.csv"), _csv(rows))
    atomic_write_bytes(os.path.join(output, "ap_vs_flops.png"), _plot(rows))
    atomic_write_text(os.path.join(output, "table.md"), _markdown(rows, state))


# --------------------------------------------------------------------------- tool

def build_parser() -> argparse.ArgumentParser:
    from .cli import _OneLineErrorParser

    parser = _OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--scale", default="quick", choices=sorted(SCALES),
                        help="quick: minutes, a smoke test; full: about an hour on 2 CPU cores, "
                             "real numbers")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="seeds for the rows marked all_seeds (dense, dense_ft, random, SViT "
                             "and its controls, ToMe; default: 1 quick, 2 full)")
    parser.add_argument("--dense-checkpoint", default=None, metavar="FILE",
                        help="use this dense model (trained with the scale's dense config "
                             "on the mixed-colour shapes) for seed 0 instead of training one")
    parser.add_argument("--dense-config", default=DENSE_CONFIG, metavar="FILE")
    parser.add_argument("--svit-config", default=SVIT_CONFIG, metavar="FILE")
    return parser


def main(args: argparse.Namespace) -> Dict[str, Any]:
    return run_ablation(args.output, args.scale, args.seeds, args.dense_checkpoint,
                        args.dense_config, args.svit_config)


def cli(argv: Optional[Sequence[str]] = None) -> Any:
    return run_tool(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
