"""Running the ablation: train the dense models and the fine-tunes, evaluate every row.

:func:`run_ablation` is resumable: a result file that exists is not computed again, a
finished training is not repeated, an interrupted one resumes from its last checkpoint; a
folder made with another recipe (iterations, gate learning-rate factor, noise annealing)
is refused. Rows and recipe: :mod:`.variants`; the report: :mod:`.report`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..analysis import count_model_flops, paired_latency
from ..checkpoint import load_model
from ..data import dataset_names, first_test_inputs, prepare_dataset
from ..engine import (PlainFormatter, build_model, do_train, evaluate_with_keep, result_metric,
                      warnings_quiet)
from ..errors import InputError
from ..fileio import atomic_write_json, make_output_dir
from .report import summarize, write_outputs
from .variants import (GATE_LR_FACTOR, GATE_NOISE_ANNEAL, SCALES, VARIANTS, Scale, Variant,
                       seeds_of, study_configs, variant_config)

__all__ = ["run_ablation", "progress"]


def progress(message: str) -> None:
    """A timestamped progress line on stdout."""
    print(f"[ablation {time.strftime('%H:%M:%S')}] {message}", flush=True)


class _OnlyTrainingLines(logging.Filter):
    """Passes Detectron2's periodic training lines and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("detectron2.utils.events") or record.levelno >= logging.ERROR


@contextlib.contextmanager
def _logging_to(path: str):
    """Detectron2 / fvcore logs to ``path``; the periodic training lines also to the console."""
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(PlainFormatter())
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


def _train(cfg, out_dir: str, seed: int, iters: int, init: str, log_period: int) -> float:
    """Train ``cfg`` into ``out_dir`` (resuming an interrupted run); returns seconds spent."""
    from detectron2.utils.env import seed_all_rng

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
    """The model of ``cfg`` with the weights of ``checkpoint``, in eval mode."""
    cfg.train.init_checkpoint = checkpoint
    return load_model(cfg)


def _backbone_inputs(model, inputs: Sequence[dict]) -> List[torch.Tensor]:
    with torch.no_grad():
        return [model.preprocess_image([inp]).tensor for inp in inputs]


def _evaluate(variant: Variant, seed: int, cfg, checkpoint: str, out_dir: str,
              dense: Dict[str, Any], scale: Scale, log_path: str) -> Dict[str, Any]:
    """Box / mask AP, backbone FLOPs, latency and keep ratio of one variant."""
    from detectron2.utils.env import seed_all_rng

    start = time.perf_counter()
    seed_all_rng(seed)
    model = _load(cfg, checkpoint)
    cfg.dataloader.evaluator.output_dir = out_dir
    results, keep = evaluate_with_keep(cfg, model, log_path)
    with warnings_quiet():
        flops = count_model_flops(model, dense["flops_inputs"])
    images = dense["latency_inputs"]
    dense_ms, ms = paired_latency(
        [lambda x=x: dense["model"].backbone.net(x) for x in images],
        [lambda x=x: model.backbone.net(x) for x in images], scale.latency_rounds,
        cuda=bool(images) and images[0].is_cuda)
    dense_flops = dense.get("backbone_flops") or flops.backbone
    return dict(
        variant=variant.name, seed=seed, checkpoint=checkpoint,
        box_ap=result_metric(results, "bbox"), mask_ap=result_metric(results, "segm"),
        backbone_gflops=flops.backbone / 1e9, gate_gflops=flops.gates / 1e9,
        total_gflops=flops.total / 1e9, backbone_flops_ratio=flops.backbone / dense_flops,
        keep_ratio=keep, backbone_ms=ms, dense_backbone_ms=dense_ms,
        backbone_speedup=dense_ms / ms if ms > 0 else float("nan"),
        eval_seconds=time.perf_counter() - start, results=results,
    )


def _load_results(output: str, jobs,
                  result_path: Callable[[str, int], str]) -> Dict[str, List[dict]]:
    """{variant name: the result dicts of its seeds found in ``output``}."""
    found: Dict[str, List[dict]] = {}
    for variant, seed in jobs:
        path = result_path(variant.name, seed)
        if os.path.isfile(path):
            with open(path) as f:
                found.setdefault(variant.name, []).append(json.load(f))
    return found


def _open_state(output: str, scale_name: str, scale: Scale, seeds: int) -> Dict[str, Any]:
    """ablation.json of ``output``, refused if made with another scale or recipe."""
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
    return state


def _check_inputs(scale_name: str, seeds: Optional[int], dense_checkpoint: Optional[str],
                  configs: Sequence[str]) -> Tuple[Scale, int]:
    if scale_name not in SCALES:
        raise InputError(f"unknown scale {scale_name!r}; choose from {sorted(SCALES)}")
    scale = SCALES[scale_name]
    seeds = scale.seeds if seeds is None else seeds
    if seeds < 1:
        raise InputError(f"--seeds must be 1 or more, got {seeds}")
    if dense_checkpoint and not os.path.isfile(dense_checkpoint):
        raise InputError(f"dense checkpoint not found: {dense_checkpoint}")
    for path in configs:
        if not os.path.isfile(path):
            raise InputError(f"config file not found: {path} (the ablation uses the "
                             f"repository's configs/Synthetic; pass --dense-config / "
                             f"--svit-config)")
    return scale, seeds


class _Study:
    """One run of the study into ``output``: its state, folders and trained weights."""

    def __init__(self, output: str, scale_name: str, scale: Scale, seeds: int,
                 dense_checkpoint: Optional[str], configs: Tuple[str, str]):
        self.output, self.scale_name, self.scale = output, scale_name, scale
        self.dense_checkpoint, self.configs = dense_checkpoint, configs
        self.state = _open_state(output, scale_name, scale, seeds)
        self.log_path = os.path.join(output, "log.txt")
        self.jobs = [(v, s) for v in VARIANTS for s in seeds_of(v, seeds)]
        self.dense_cache: Dict[int, Dict[str, Any]] = {}
        for sub in ("results", "runs", "eval"):
            os.makedirs(os.path.join(output, sub), exist_ok=True)

    def result_path(self, name: str, seed: int) -> str:
        return os.path.join(self.output, "results", f"{name}_seed{seed}.json")

    def config(self, variant: Variant, training: bool = False):
        return variant_config(variant, self.scale, *self.configs, training=training)

    def _trained(self, key: str, cfg, run: str, seed: int, iters: int, init: str) -> str:
        """``run``/model_final.pth, trained first if it is not there."""
        checkpoint = os.path.join(run, "model_final.pth")
        if not os.path.isfile(checkpoint):
            what = f"fine-tun%s '{key}'" if init else f"train%s {key}"
            progress(f"{what % 'ing'} seed {seed}{' from dense' if init else ''}: "
                     f"{iters} iterations")
            secs = _train(cfg, run, seed, iters, init, self.scale.log_period)
            self.state["seconds"][f"train_{key}_seed{seed}"] = secs
            atomic_write_json(os.path.join(self.output, "ablation.json"), self.state)
            progress(f"{what % 'ed'} seed {seed} in {secs:.0f} s")
        return checkpoint

    def dense_weights(self, seed: int) -> str:
        dcfg = self.config(VARIANTS[0])
        for name in dataset_names(dcfg):
            prepare_dataset(name)
        if seed == 0 and self.dense_checkpoint:
            return self.dense_checkpoint
        return self._trained("dense", dcfg, os.path.join(self.output, "runs", f"dense_seed{seed}"),
                             seed, self.scale.dense_iters, "")

    def variant_weights(self, variant: Variant, seed: int, dense: str) -> str:
        if variant.train is None:
            return dense
        return self._trained(variant.train, self.config(variant, training=True),
                             os.path.join(self.output, "runs", f"{variant.train}_seed{seed}"),
                             seed, self.scale.finetune_iters, dense)

    def dense_reference(self, seed: int, dense: str) -> Dict[str, Any]:
        """The dense model of ``seed`` and its FLOP and latency inputs, built once."""
        if seed not in self.dense_cache:
            scale = self.scale
            dcfg = self.config(VARIANTS[0])
            dmodel = _load(self.config(VARIANTS[0]), dense)
            inputs = first_test_inputs(dcfg, max(scale.flops_images, scale.latency_images))
            self.dense_cache.clear()  # one dense model in memory at a time
            self.dense_cache[seed] = dict(
                model=dmodel, flops_inputs=inputs[:scale.flops_images],
                latency_inputs=_backbone_inputs(dmodel, inputs[:scale.latency_images]),
                backbone_flops=count_model_flops(dmodel, inputs[:scale.flops_images]).backbone,
            )
        return self.dense_cache[seed]

    def evaluate(self, variant: Variant, seed: int) -> Dict[str, Any]:
        """Train what ``variant`` needs, evaluate it, save and return its result."""
        t0 = time.perf_counter()
        dense = self.dense_weights(seed)
        checkpoint = self.variant_weights(variant, seed, dense)
        reference = self.dense_reference(seed, dense)
        progress(f"evaluating {variant.name} seed {seed}: {variant.label}")
        res = _evaluate(variant, seed, self.config(variant), checkpoint,
                        os.path.join(self.output, "eval", f"{variant.name}_seed{seed}"),
                        reference, self.scale, self.log_path)
        res.update(label=variant.label, train=variant.train, scale=self.scale_name,
                   finetune_iters=self.scale.finetune_iters if variant.train else 0,
                   seconds=time.perf_counter() - t0)
        atomic_write_json(self.result_path(variant.name, seed), res)
        return res

    def found(self) -> Dict[str, List[dict]]:
        return _load_results(self.output, self.jobs, self.result_path)


def run_ablation(output: str, scale_name: str = "quick", seeds: Optional[int] = None,
                 dense_checkpoint: Optional[str] = None, dense_config: Optional[str] = None,
                 svit_config: Optional[str] = None) -> Dict[str, Any]:
    """Run (or resume) the study into ``output``; returns the summary rows and the state.
    ``dense_config`` / ``svit_config``: None for the project's (:func:`.study_configs`)."""
    configs = study_configs(dense_config, svit_config)
    scale, seeds = _check_inputs(scale_name, seeds, dense_checkpoint, configs)
    make_output_dir(output)
    study = _Study(output, scale_name, scale, seeds, dense_checkpoint, configs)
    started = time.perf_counter()
    todo = [(v, s) for v, s in study.jobs if not os.path.isfile(study.result_path(v.name, s))]
    todo.sort(key=lambda job: job[1])  # seed by seed: one dense reference at a time
    progress(f"scale {scale_name} ({scale.description}); {len(study.jobs)} evaluations, "
             f"{len(study.jobs) - len(todo)} already done; output {output}")
    with _logging_to(study.log_path), warnings_quiet():
        for n, (variant, seed) in enumerate(todo, 1):
            progress(f"[{n}/{len(todo)}] {variant.name} seed {seed}")
            res = study.evaluate(variant, seed)
            progress(f"{variant.name} seed {seed}: box AP {res['box_ap']:.1f}, mask AP "
                     f"{res['mask_ap']:.1f}, backbone {res['backbone_gflops']:.3f} GFLOPs "
                     f"({res['backbone_flops_ratio']:.2f} x dense), keep {res['keep_ratio']:.2f}, "
                     f"{res['backbone_ms']:.1f} ms vs {res['dense_backbone_ms']:.1f} ms dense")
            write_outputs(output, study.state, study.found(), plot=False)
    study.state["seconds"]["last_run"] = time.perf_counter() - started
    atomic_write_json(os.path.join(output, "ablation.json"), study.state)
    rows = summarize(study.found())
    write_outputs(output, study.state, study.found())
    progress(f"done in {study.state['seconds']['last_run']:.0f} s: "
             f"{os.path.join(output, 'table.md')}")
    return dict(rows=rows, state=study.state)
