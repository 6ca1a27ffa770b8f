"""Running the SViT study: train the dense model and the fine-tunes, evaluate every row.

:func:`run_ablation` trains the one dense model in its own process, then hands the seeds to
``jobs`` worker processes of one thread each (``--worker-seeds``; their logs are
``worker<k>.txt``, their progress lines reach the console) and writes the report when all
are done. It is resumable: a result file that exists is not computed again (results are
written atomically), a finished training is not repeated (finished = Detectron2 tagged
``model_final.pth`` as its last checkpoint, which it does only after writing it), an
interrupted one resumes from its last checkpoint; a folder made with another recipe
(iterations, gate learning-rate factor, noise annealing, targets, dense seed) is refused.
Rows and recipe: :mod:`.variants`; statistics: :mod:`.statistics`; the report: :mod:`.report`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
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
from ..evaluation import images_by_count, subset_ap
from .report import summarize, write_outputs
from .workers import progress, run_workers, split_seeds
from .variants import (GATE_LR_FACTOR, GATE_NOISE_ANNEAL, KEEP_TARGETS, MATCHED_TO, SCALES,
                       VARIANTS, Scale, Variant, seeds_of, study_configs, variant_config)

__all__ = ["run_ablation", "progress", "trained_once", "collect_seconds"]


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


def _train(cfg, out_dir: str, seed: int, iters: int, init: str, log_period: int,
           eval_period: int = 0, threads: Optional[int] = None) -> float:
    """Train ``cfg`` into ``out_dir`` (resuming an interrupted run); returns seconds spent.
    ``eval_period`` > 0 evaluates on the test set every so many iterations (a learning
    curve in ``out_dir``/metrics.json)."""
    from detectron2.utils.env import seed_all_rng

    cfg.train.output_dir = out_dir
    cfg.train.init_checkpoint = init
    cfg.train.max_iter = iters
    cfg.train.eval_period = eval_period
    cfg.train.flops_period = 0
    cfg.train.flops_num_images = 0
    cfg.train.log_period = log_period
    cfg.train.seed = seed
    if threads:
        cfg.train.num_threads = threads
    cfg.train.checkpointer = dict(period=max(iters // 4, 25), max_to_keep=1)
    if eval_period:
        cfg.dataloader.evaluator.output_dir = os.path.join(out_dir, "inference")
    elif "evaluator" in cfg.dataloader:
        del cfg.dataloader["evaluator"]  # the study evaluates every row itself
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    seed_all_rng(seed)
    model = build_model(cfg)
    do_train(cfg, model, resume=True)
    return time.perf_counter() - start


def _finished(run: str) -> Optional[str]:
    """``run``/model_final.pth once its training finished: Detectron2 tags the last
    checkpoint only after writing it, so a run killed while writing it is not finished."""
    try:
        with open(os.path.join(run, "last_checkpoint")) as f:
            done = f.read().strip() == "model_final.pth"
    except OSError:
        return None
    return os.path.join(run, "model_final.pth") if done else None


def trained_once(output: str, key: str, cfg, run: str, seed: int, iters: int, init: str,
                 log_period: int, **train_kw) -> str:
    """``run``/model_final.pth, trained first (:func:`_train`) if its training did not
    finish; its seconds go to ``output``/seconds/train_<key>_seed<seed>.json."""
    checkpoint = _finished(run)
    if checkpoint is None:
        what = f"fine-tun%s '{key}'" if init else f"train%s {key}"
        start = f" from {os.path.basename(os.path.dirname(init))}" if init else ""
        progress(f"{what % 'ing'} seed {seed}{start}: {iters} iterations")
        secs = _train(cfg, run, seed, iters, init, log_period, **train_kw)
        # one file per run: workers never write the same file
        atomic_write_json(os.path.join(output, "seconds", f"train_{key}_seed{seed}.json"),
                          {"seconds": secs})
        progress(f"{what % 'ed'} seed {seed} in {secs:.0f} s")
        checkpoint = os.path.join(run, "model_final.pth")
    return checkpoint


def _load(cfg, checkpoint: str):
    """The model of ``cfg`` with the weights of ``checkpoint``, in eval mode."""
    cfg.train.init_checkpoint = checkpoint
    return load_model(cfg, allow_untrained_gates=True)  # random / attention gates: no weights


def _backbone_inputs(model, inputs: Sequence[dict]) -> List[torch.Tensor]:
    with torch.no_grad():
        return [model.preprocess_image([inp]).tensor for inp in inputs]


#: Image subsets reported beside the whole validation set, by annotated object count.
SUBSETS = {"sparse": (0, 2), "crowded": (12, 10 ** 6)}


def _subset_aps(cfg, out_dir: str) -> Dict[str, float]:
    """Box and mask AP of the sparse and crowded validation images ({"sparse_box_ap": ...})."""
    from detectron2.data import MetadataCatalog

    gt_json = MetadataCatalog.get(dataset_names(cfg, ("test",))[0]).json_file
    dets = os.path.join(out_dir, "coco_instances_results.json")
    out = {}
    for name, aps in subset_ap(gt_json, dets, images_by_count(gt_json, SUBSETS)).items():
        out[f"{name}_box_ap"], out[f"{name}_mask_ap"] = aps["bbox"], aps["segm"]
    return out


def _evaluate(variant: Variant, seed: int, cfg, checkpoint: str, out_dir: str,
              dense: Dict[str, Any], scale: Scale, log_path: str) -> Dict[str, Any]:
    """Box / mask AP (whole set, by size, sparse and crowded images), backbone FLOPs,
    latency and kept fractions of one row."""
    from detectron2.utils.env import seed_all_rng

    start = time.perf_counter()
    seed_all_rng(seed)
    model = _load(cfg, checkpoint)
    cfg.dataloader.evaluator.output_dir = out_dir
    results, keep, per_block = evaluate_with_keep(cfg, model, log_path)
    with warnings_quiet():
        flops = count_model_flops(model, dense["flops_inputs"])
    images = dense["latency_inputs"]
    dense_ms, ms = paired_latency(
        [lambda x=x: dense["model"].backbone.net(x) for x in images],
        [lambda x=x: model.backbone.net(x) for x in images], scale.latency_rounds,
        cuda=bool(images) and images[0].is_cuda)
    dense_flops = dense.get("backbone_flops") or flops.backbone
    by_size = {f"box_ap_{s}": float(results.get("bbox", {}).get(f"AP{s}", math.nan))
               for s in ("s", "m", "l")}
    return dict(
        variant=variant.name, seed=seed, checkpoint=checkpoint,
        box_ap=result_metric(results, "bbox"), mask_ap=result_metric(results, "segm"),
        **by_size, **_subset_aps(cfg, out_dir),
        backbone_gflops=flops.backbone / 1e9, gate_gflops=flops.gates / 1e9,
        total_gflops=flops.total / 1e9, backbone_flops_ratio=flops.backbone / dense_flops,
        keep_ratio=keep, keep_ratios=per_block, backbone_ms=ms, dense_backbone_ms=dense_ms,
        backbone_speedup=dense_ms / ms if ms > 0 else float("nan"),
        eval_seconds=time.perf_counter() - start, results=results,
    )


def _load_results(jobs, result_path: Callable[[str, int], str]) -> Dict[str, List[dict]]:
    """{variant name: the result dicts of its seeds found}."""
    found: Dict[str, List[dict]] = {}
    for variant, seed in jobs:
        path = result_path(variant.name, seed)
        if os.path.isfile(path):
            with open(path) as f:
                found.setdefault(variant.name, []).append(json.load(f))
    return found


def _recipe(scale: Scale) -> Dict[str, Any]:
    """What the saved runs depend on: a folder made with another recipe is not resumed."""
    return dict(dense_iters=scale.dense_iters, finetune_iters=scale.finetune_iters,
                gate_lr_factor=GATE_LR_FACTOR, gate_noise_anneal=GATE_NOISE_ANNEAL,
                keep_targets=list(KEEP_TARGETS), dense_seed=scale.dense_seed)


def _open_state(output: str, scale_name: str, scale: Scale, update: bool) -> Dict[str, Any]:
    """ablation.json of ``output``, refused if made with another scale or recipe; written
    back (with this run's scale and recipe) when ``update``."""
    state_path = os.path.join(output, "ablation.json")
    state: Dict[str, Any] = {}
    recipe = _recipe(scale)
    if os.path.isfile(state_path):
        with open(state_path) as f:
            state = json.load(f)
        if state.get("study", "svit") != "svit":
            raise InputError(f"{output} holds a --study {state['study']} run; use another "
                             f"output folder")
        if state.get("scale") != scale_name:
            raise InputError(f"{output} holds a --scale {state.get('scale')} ablation; use "
                             f"another output folder for --scale {scale_name}")
        changed = [f"{key} {state.get(key)} (this version: {value})"
                   for key, value in recipe.items() if state.get(key) != value]
        if changed:
            raise InputError(f"{output} holds an ablation made with another recipe: "
                             f"{', '.join(changed)}; use another output folder")
    state.update(scale=scale_name, seeds=list(scale.seeds), description=scale.description,
                 **recipe)
    state.setdefault("seconds", {})
    if update:
        atomic_write_json(state_path, state)
    return state


def _check_inputs(scale_name: str, jobs: int, dense_checkpoint: Optional[str],
                  configs: Sequence[str]) -> Scale:
    if scale_name not in SCALES:
        raise InputError(f"unknown scale {scale_name!r}; choose from {sorted(SCALES)}")
    if jobs < 1:
        raise InputError(f"--jobs must be 1 or more, got {jobs}")
    if dense_checkpoint and not os.path.isfile(dense_checkpoint):
        raise InputError(f"dense checkpoint not found: {dense_checkpoint}")
    for path in configs:
        if not os.path.isfile(path):
            raise InputError(f"config file not found: {path} (the study uses the "
                             f"repository's configs/Study; pass --dense-config / "
                             f"--svit-config)")
    return SCALES[scale_name]


class _Study:
    """One run of the study into ``output``: its state, folders and trained weights."""

    def __init__(self, output: str, scale_name: str, scale: Scale,
                 dense_checkpoint: Optional[str], configs: Tuple[str, str], worker: bool):
        self.output, self.scale_name, self.scale = output, scale_name, scale
        self.dense_checkpoint, self.configs = dense_checkpoint, configs
        self.state = _open_state(output, scale_name, scale, update=not worker)
        self.log_path = os.path.join(output, "log.txt")
        self.jobs = [(v, s) for s in scale.seeds for v in VARIANTS if s in seeds_of(v, scale)]
        self.dense_cache: Dict[str, Any] = {}
        self._dense_path: Optional[str] = None
        for sub in ("results", "runs", "eval", "seconds"):
            os.makedirs(os.path.join(output, sub), exist_ok=True)

    def result_path(self, name: str, seed: int) -> str:
        return os.path.join(self.output, "results", f"{name}_seed{seed}.json")

    def config(self, variant: Variant, training: bool = False,
               ratios: Optional[Dict[int, float]] = None):
        return variant_config(variant, self.scale, *self.configs, training=training,
                              ratios=ratios)

    def _trained(self, key: str, cfg, run: str, seed: int, iters: int, init: str,
                 **train_kw) -> str:
        return trained_once(self.output, key, cfg, run, seed, iters, init,
                            self.scale.log_period, **train_kw)

    def dense_weights(self) -> str:
        """The one dense model every row starts from (its data prepared and the model trained
        on the first call if missing; the path is kept for the later ones)."""
        if self._dense_path is None:
            self._dense_path = self._dense_weights()
        return self._dense_path

    def _dense_weights(self) -> str:
        scale = self.scale
        dcfg = self.config(VARIANTS[0])
        for name in dataset_names(dcfg):
            prepare_dataset(name)
        if self.dense_checkpoint:
            return self.dense_checkpoint
        return self._trained("dense", dcfg, os.path.join(self.output, "runs", "dense"),
                             scale.dense_seed, scale.dense_iters, "",
                             eval_period=scale.dense_eval_period, threads=scale.dense_threads)

    def matched_ratios(self, seed: int) -> Dict[int, float]:
        """{block: kept fraction} of :data:`MATCHED_TO` on ``seed`` (evaluated first if
        missing)."""
        path = self.result_path(MATCHED_TO, seed)
        if not os.path.isfile(path):
            self.evaluate(next(v for v in VARIANTS if v.name == MATCHED_TO), seed)
        with open(path) as f:
            return {int(b): float(r) for b, r in json.load(f)["keep_ratios"].items()}

    def variant_weights(self, variant: Variant, seed: int, dense: str) -> str:
        if variant.train is None:
            return dense
        ratios = self.matched_ratios(seed) if variant.train == "fixed" else None
        return self._trained(variant.train, self.config(variant, training=True, ratios=ratios),
                             os.path.join(self.output, "runs", f"{variant.train}_seed{seed}"),
                             seed, self.scale.finetune_iters, dense)

    def dense_reference(self, dense: str) -> Dict[str, Any]:
        """The dense model and its FLOP and latency inputs, built once."""
        if not self.dense_cache:
            scale = self.scale
            dcfg = self.config(VARIANTS[0])
            dmodel = _load(self.config(VARIANTS[0]), dense)
            inputs = first_test_inputs(dcfg, max(scale.flops_images, scale.latency_images))
            self.dense_cache.update(
                model=dmodel, flops_inputs=inputs[:scale.flops_images],
                latency_inputs=_backbone_inputs(dmodel, inputs[:scale.latency_images]),
                backbone_flops=count_model_flops(dmodel, inputs[:scale.flops_images]).backbone,
            )
        return self.dense_cache

    def evaluate(self, variant: Variant, seed: int) -> Dict[str, Any]:
        """Train what ``variant`` needs, evaluate it, save and return its result."""
        t0 = time.perf_counter()
        dense = self.dense_weights()
        checkpoint = self.variant_weights(variant, seed, dense)
        ratios = self.matched_ratios(seed) if variant.matched else None
        cfg = self.config(variant, ratios=ratios)
        reference = self.dense_reference(dense)
        progress(f"evaluating {variant.name} seed {seed}: {variant.label}")
        res = _evaluate(variant, seed, cfg, checkpoint,
                        os.path.join(self.output, "eval", f"{variant.name}_seed{seed}"),
                        reference, self.scale, self.log_path)
        res.update(label=variant.label, train=variant.train, scale=self.scale_name,
                   finetune_iters=self.scale.finetune_iters if variant.train else 0,
                   seconds=time.perf_counter() - t0)
        atomic_write_json(self.result_path(variant.name, seed), res)
        progress(f"{variant.name} seed {seed}: box AP {res['box_ap']:.1f}, mask AP "
                 f"{res['mask_ap']:.1f}, backbone {res['backbone_gflops']:.3f} GFLOPs "
                 f"({res['backbone_flops_ratio']:.2f} x dense), keep {res['keep_ratio']:.3f}")
        return res

    def found(self) -> Dict[str, List[dict]]:
        return _load_results(self.jobs, self.result_path)

    def todo(self, seeds: Sequence[int]) -> List[Tuple[Variant, int]]:
        return [(v, s) for v, s in self.jobs
                if s in seeds and not os.path.isfile(self.result_path(v.name, s))]

    def run_seeds(self, seeds: Sequence[int], name: str) -> None:
        """Every missing result of ``seeds``, with a progress line and the time left."""
        todo = self.todo(seeds)
        started, done = time.perf_counter(), 0
        for n, (variant, seed) in enumerate(todo, 1):
            if os.path.isfile(self.result_path(variant.name, seed)):
                continue  # evaluated earlier in this loop (the matched rows' reference)
            left = ""
            if done:
                per = (time.perf_counter() - started) / done
                left = f"; about {per * (len(todo) - n + 1) / 60:.0f} min left in {name}"
            progress(f"{name} [{n}/{len(todo)}] {variant.name} seed {seed}{left}")
            self.evaluate(variant, seed)
            done += 1


def run_ablation(output: str, scale_name: str = "quick", jobs: int = 1,
                 dense_checkpoint: Optional[str] = None, dense_config: Optional[str] = None,
                 svit_config: Optional[str] = None,
                 worker_seeds: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Run (or resume) the study into ``output``; returns the summary rows and the state.

    Args:
        jobs: worker processes for the fine-tune seeds, after the dense model (one per
            CPU core; 1 runs everything in this process).
        dense_config / svit_config: None for the project's (:func:`.study_configs`).
        worker_seeds: run as a worker (``--worker-seeds``): only these seeds, no report.
    """
    configs = study_configs(dense_config, svit_config)
    scale = _check_inputs(scale_name, jobs, dense_checkpoint, configs)
    make_output_dir(output)
    worker = worker_seeds is not None
    study = _Study(output, scale_name, scale, dense_checkpoint, configs, worker)
    started = time.perf_counter()
    if worker:
        with _logging_to(study.log_path), warnings_quiet():
            study.run_seeds(worker_seeds, f"seeds {','.join(map(str, worker_seeds))}")
        return dict(rows=[], state=study.state)
    todo = study.todo(scale.seeds)
    progress(f"scale {scale_name} ({scale.description}); {len(study.jobs)} evaluations, "
             f"{len(study.jobs) - len(todo)} already done; output {output}")
    with _logging_to(study.log_path), warnings_quiet():
        study.dense_weights()
        parts = split_seeds(list(scale.seeds), jobs)
        if todo and len(parts) > 1:
            extra = [f"--{k}={v}" for k, v in (("dense-checkpoint", dense_checkpoint),
                                               ("dense-config", dense_config),
                                               ("svit-config", svit_config)) if v]
            run_workers(output, scale_name, parts, extra)
        elif todo:
            study.run_seeds(scale.seeds, "the study")
    collect_seconds(output, study.state, time.perf_counter() - started)
    found = study.found()
    write_outputs(output, study.state, found, _learning_curve(output, scale.dense_iters))
    progress(f"done in {study.state['seconds']['last_run']:.0f} s: {os.path.join(output, 'table.md')}")
    return dict(rows=summarize(found), state=study.state)


def collect_seconds(output: str, state: Dict[str, Any], last_run: float) -> None:
    """Into ``state``["seconds"]: this run's and all runs' seconds and every training's
    (``output``/seconds/*.json); ``state`` written to ``output``/ablation.json."""
    seconds = state["seconds"]
    seconds["last_run"] = last_run
    seconds["all_runs"] = seconds.get("all_runs", 0.0) + last_run
    for name in sorted(os.listdir(os.path.join(output, "seconds"))):
        with open(os.path.join(output, "seconds", name)) as f:
            seconds[name[:-len(".json")]] = json.load(f)["seconds"]
    atomic_write_json(os.path.join(output, "ablation.json"), state)


def _learning_curve(output: str, iters: int) -> List[Tuple[int, float, float]]:
    """(iterations done, box AP, mask AP) of the dense model's evaluations during its
    training of ``iters`` iterations."""
    curve = []
    path = os.path.join(output, "runs", "dense", "metrics.json")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if "bbox/AP" in rec:
                    done = min(int(rec["iteration"]) + 1, iters)
                    curve.append((done, float(rec["bbox/AP"]),
                                  float(rec.get("segm/AP", math.nan))))
    return curve
