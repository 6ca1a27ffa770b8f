"""Running the VLTP study: train the unpruned task model and the fine-tunes, evaluate every row.

:func:`run_vltp_study` trains the unpruned task model in its own process, then hands the
units (a setting and a seed: its fine-tunes and its rows) to ``jobs`` worker processes of
one thread each, balanced by cost, and writes the report when all are done. Resumable in
the way of the SViT study (:mod:`.runner`): results are written atomically and never
recomputed, a finished training is not repeated, an interrupted one resumes, and a folder
made with another scale or recipe is refused. Rows, recipe and findings: :mod:`.vltp`;
the report: :mod:`.vltp_report`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..analysis import count_model_flops
from ..config import project_config
from ..data import dataset_names, first_test_inputs, prepare_dataset
from ..engine import evaluate_with_keep, result_metric, warnings_quiet
from ..errors import InputError
from ..fileio import atomic_write_json, make_output_dir
from .runner import _load, _logging_to, collect_seconds, trained_once
from .variants import GATE_NOISE_ANNEAL
from .vltp import (GATE_LR_FACTOR, KEEP_POINTS, PRETRAIN_SEED, SCALES, SETTING_TRAININGS,
                   TASK_DENSE_CONFIG, TRAIN_BASE, VLTP_CONFIG, Row, Scale, row_config, rows,
                   unit_cost, units)
from .vltp_report import write_vltp_outputs
from .workers import balance, progress, run_workers

__all__ = ["run_vltp_study", "parse_unit"]

#: The task-segmentation metrics of a row (percent) besides box and mask AP.
_TASK_SEG = {"miou": "mIoU", "miou_nonempty": "mIoU-nonempty", "ciou": "cIoU",
             "empty_pairs": "empty_pairs"}


def parse_unit(text: str) -> Tuple[str, int]:
    """``"frozen:3"`` -> ("frozen", 3)."""
    setting, _, seed = text.partition(":")
    if setting not in SETTING_TRAININGS or not seed.lstrip("-").isdigit():
        raise InputError(f"bad work unit {text!r}: expected SETTING:SEED with SETTING one "
                         f"of {sorted(SETTING_TRAININGS)}")
    return setting, int(seed)


def _recipe(scale: Scale) -> Dict[str, Any]:
    """What the saved runs depend on: a folder made with another recipe is not resumed."""
    return dict(pretrain_iters=scale.pretrain_iters, dense_iters=scale.dense_iters,
                finetune_iters=scale.finetune_iters,
                dense_seed=scale.dense_seed, train_base=TRAIN_BASE,
                gate_lr_factor=GATE_LR_FACTOR, gate_noise_anneal=GATE_NOISE_ANNEAL,
                keep_points={p: base for p, (base, _) in KEEP_POINTS.items()})


class _VltpStudy:
    """One run of the VLTP study into ``output``."""

    def __init__(self, output: str, scale_name: str, dense_checkpoint: Optional[str],
                 pretrained: Optional[str], configs: Tuple[str, str], worker: bool):
        if scale_name not in SCALES:
            raise InputError(f"unknown scale {scale_name!r}; choose from {sorted(SCALES)}")
        self.output, self.scale_name, self.scale = output, scale_name, SCALES[scale_name]
        self.dense_checkpoint, self.pretrained, self.configs = (dense_checkpoint, pretrained,
                                                                configs)
        self.log_path = os.path.join(output, "log.txt")
        self.state = self._open_state(update=not worker)
        self._dense_path: Optional[str] = None
        self._dense_flops: Optional[float] = None
        for sub in ("results", "runs", "eval", "seconds"):
            os.makedirs(os.path.join(output, sub), exist_ok=True)

    def _open_state(self, update: bool) -> Dict[str, Any]:
        path = os.path.join(self.output, "ablation.json")
        recipe = _recipe(self.scale)
        state: Dict[str, Any] = {}
        if os.path.isfile(path):
            with open(path) as f:
                state = json.load(f)
            if state.get("study") != "vltp" or state.get("scale") != self.scale_name:
                raise InputError(f"{self.output} holds a --study {state.get('study', 'svit')} "
                                 f"--scale {state.get('scale')} run; use another output folder")
            changed = [f"{k} {state.get(k)} (this version: {v})" for k, v in recipe.items()
                       if state.get(k) != v]
            if changed:
                raise InputError(f"{self.output} holds a study made with another recipe: "
                                 f"{', '.join(changed)}; use another output folder")
        state.update(study="vltp", scale=self.scale_name, seeds=list(self.scale.seeds),
                     description=self.scale.description, **recipe)
        state.setdefault("seconds", {})
        if update:
            atomic_write_json(path, state)
        return state

    def result_path(self, row: Row, seed: int) -> str:
        return os.path.join(self.output, "results", f"{row.name}_seed{seed}.json")

    def config(self, setting: str, method: str, point: Optional[str] = None,
               training: bool = False):
        cfg = row_config(self.scale, setting, method, point, training, self.configs)
        if training:
            cfg.train.gate_noise_anneal = GATE_NOISE_ANNEAL
        return cfg

    def _trained(self, key: str, cfg, run: str, seed: int, iters: int, init: str,
                 **kw) -> str:
        return trained_once(self.output, key, cfg, run, seed, iters, init,
                            self.scale.log_period, **kw)

    def _prepared(self, method: str):
        cfg = self.config("frozen", method)
        for name in dataset_names(cfg):
            prepare_dataset(name)
        return cfg

    def pretrained_weights(self) -> str:
        """The detector the unpruned task model starts from (given, or trained)."""
        if self.pretrained:
            return self.pretrained
        return self._trained("pretrain", self._prepared("pretrain"),
                             os.path.join(self.output, "runs", "pretrain"), PRETRAIN_SEED,
                             self.scale.pretrain_iters, "", threads=self.scale.dense_threads)

    def dense_weights(self) -> str:
        """The unpruned task model every fine-tune starts from (trained on the first call,
        from :meth:`pretrained_weights`)."""
        if self._dense_path is None:
            cfg = self._prepared("task_dense")
            self._dense_path = self.dense_checkpoint or self._trained(
                "task_dense", cfg, os.path.join(self.output, "runs", "task_dense"),
                self.scale.dense_seed, self.scale.dense_iters, self.pretrained_weights(),
                threads=self.scale.dense_threads)
        return self._dense_path

    def weights(self, setting: str, method: str, seed: int) -> str:
        train = "unguided" if method == "random" else method
        return self._trained(f"{setting}_{train}", self.config(setting, train, training=True),
                             os.path.join(self.output, "runs", f"{setting}_{train}_seed{seed}"),
                             seed, self.scale.finetune_iters, self.dense_weights())

    def dense_flops(self) -> float:
        """The unpruned task model's ViT FLOPs per image (fvcore), counted once."""
        if self._dense_flops is None:
            cfg = self.config("frozen", "task_dense")
            model = _load(cfg, self.dense_weights())
            with warnings_quiet():
                self._dense_flops = count_model_flops(
                    model, first_test_inputs(cfg, self.scale.flops_images)).backbone
        return self._dense_flops

    def evaluate(self, row: Row, seed: int) -> Dict[str, Any]:
        """Train what ``row`` needs, evaluate it, save and return its result."""
        from detectron2.utils.env import seed_all_rng

        t0 = time.perf_counter()
        checkpoint = self.weights(row.setting, row.method, seed)
        cfg = self.config(row.setting, row.method, row.point)
        out_dir = os.path.join(self.output, "eval", f"{row.name}_seed{seed}")
        cfg.dataloader.evaluator[0].output_dir = out_dir
        progress(f"evaluating {row.name} seed {seed}")
        seed_all_rng(seed)
        model = _load(cfg, checkpoint)
        results, keep, per_block = evaluate_with_keep(cfg, model, self.log_path)
        with warnings_quiet():
            flops = count_model_flops(model, first_test_inputs(cfg, self.scale.flops_images))
        task_seg = results.get("task_seg", {})
        res = dict(row=row.name, setting=row.setting, method=row.method, point=row.point,
                   seed=seed, checkpoint=checkpoint,
                   box_ap=result_metric(results, "bbox"), mask_ap=result_metric(results, "segm"),
                   **{k: float(task_seg.get(v, float("nan"))) for k, v in _TASK_SEG.items()},
                   vit_gflops=flops.backbone / 1e9, decoder_gflops=flops.gates / 1e9,
                   vit_flops_ratio=flops.backbone / self.dense_flops(),
                   keep_ratio=keep, keep_ratios=per_block, results=results,
                   seconds=time.perf_counter() - t0)
        atomic_write_json(self.result_path(row, seed), res)
        progress(f"{row.name} seed {seed}: mIoU {res['miou']:.1f}, box AP {res['box_ap']:.1f}, "
                 f"ViT {res['vit_flops_ratio']:.3f} x unpruned, keep {keep:.3f}")
        return res

    def todo(self, work: Sequence[Tuple[str, int]]) -> List[Tuple[Row, int]]:
        return [(row, seed) for setting, seed in work for row in rows(setting)
                if not os.path.isfile(self.result_path(row, seed))]

    def run_units(self, work: Sequence[Tuple[str, int]], name: str) -> None:
        todo = self.todo(work)
        started = time.perf_counter()
        for n, (row, seed) in enumerate(todo, 1):
            left = ""
            if n > 1:
                per = (time.perf_counter() - started) / (n - 1)
                left = f"; about {per * (len(todo) - n + 1) / 60:.0f} min left in {name}"
            progress(f"{name} [{n}/{len(todo)}] {row.name} seed {seed}{left}")
            self.evaluate(row, seed)

    def found(self) -> Dict[str, List[dict]]:
        """{row name: the result dicts of its seeds found}."""
        out: Dict[str, List[dict]] = {}
        for setting, seed in units(self.scale):
            for row in rows(setting):
                path = self.result_path(row, seed)
                if os.path.isfile(path):
                    with open(path) as f:
                        out.setdefault(row.name, []).append(json.load(f))
        return out


def run_vltp_study(output: str, scale_name: str = "quick", jobs: int = 1,
                   dense_checkpoint: Optional[str] = None, dense_config: Optional[str] = None,
                   vltp_config: Optional[str] = None, pretrained: Optional[str] = None,
                   worker_units: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run (or resume) the VLTP study into ``output``; returns the report's rows, findings
    and the state.

    Args:
        jobs: worker processes (one per CPU core) for the units after the task model.
        dense_checkpoint: an unpruned task model to start from instead of training one.
        pretrained: the detector the unpruned task model starts from, instead of training
            it (e.g. the pilot's: the pretraining is the same at every scale).
        dense_config / vltp_config: None for the project's.
        worker_units: run as a worker: only these ``SETTING:SEED`` units, no report.
    """
    if jobs < 1:
        raise InputError(f"--jobs must be 1 or more, got {jobs}")
    for what, path in (("unpruned task", dense_checkpoint), ("pretrained", pretrained)):
        if path and not os.path.isfile(path):
            raise InputError(f"{what} checkpoint not found: {path}")
    configs = (dense_config or project_config(TASK_DENSE_CONFIG),
               vltp_config or project_config(VLTP_CONFIG))
    for path in configs:
        if not os.path.isfile(path):
            raise InputError(f"config file not found: {path}")
    make_output_dir(output)
    worker = worker_units is not None
    study = _VltpStudy(output, scale_name, dense_checkpoint, pretrained, configs, worker)
    study.state.update(pretrained=pretrained or "trained in runs/pretrain")
    started = time.perf_counter()
    if worker:
        work = [parse_unit(u) for u in worker_units]
        with _logging_to(study.log_path), warnings_quiet():
            study.run_units(work, ", ".join(worker_units))
        return dict(rows=[], findings=[], state=study.state)
    all_units = units(study.scale)
    todo = study.todo(all_units)
    progress(f"VLTP study, scale {scale_name} ({study.scale.description}); "
             f"{len(todo)} of "
             f"{sum(len(rows(s)) for s, _ in all_units)} evaluations to do; output {output}")
    with _logging_to(study.log_path), warnings_quiet():
        study.dense_weights()
        pending = sorted({(row.setting, seed) for row, seed in todo})
        parts = balance({f"{s}:{seed}": unit_cost(s) for s, seed in pending}, jobs)
        if len(parts) > 1:
            extra = ["--study", "vltp"] + [f"--{k}={v}" for k, v in (
                ("dense-checkpoint", dense_checkpoint), ("dense-config", dense_config),
                ("vltp-config", vltp_config), ("pretrained", pretrained)) if v]
            run_workers(output, scale_name, parts, extra)
        elif parts:
            study.run_units(pending, "the study")
    collect_seconds(output, study.state, time.perf_counter() - started)
    report = write_vltp_outputs(output, study.state, study.found())
    progress(f"done in {study.state['seconds']['last_run']:.0f} s: "
             f"{os.path.join(output, 'table.md')}")
    return dict(report, state=study.state)
