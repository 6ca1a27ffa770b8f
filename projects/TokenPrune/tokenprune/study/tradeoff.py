"""The trade-off sweep: one trained model's box / mask AP, FLOPs and measured latency at
every reducer and forced keep ratio (what the points are and the report:
:mod:`tokenprune.analysis.tradeoff`).

Every point is one evaluation pass of the config's test set (its first ``num_images``
images) through the model's public switches: the reducer's model is the config with the
reducer's PrunedViT arguments (:func:`~tokenprune.analysis.tradeoff.model_args`), loaded
strictly from the checkpoint, and the point runs inside :meth:`PrunedViT.pruning`
(``keep_ratio=r``; ``keep_ratio=None`` for the gates' dynamic rate; ``gates=False`` for
dense). FLOPs: fvcore (:func:`~tokenprune.analysis.count_model_flops`) on the first
``latency_images`` images. Latency: the backbone (on the preprocessed images) and the whole
model, the point and dense interleaved in this process
(:func:`~tokenprune.analysis.paired_latency`), medians, per image.

Resumable: ``results/<point>.json`` is written atomically when a point is done and a point
with a file is not measured again; ``tradeoff.json`` records what the points depend on
(config, overrides, checkpoint and its SHA-256, images, batch, precision, timing), and a
folder made with other values is refused.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Tuple

import torch
from omegaconf import ListConfig

from ..analysis import count_model_flops, paired_latency
from ..analysis.tradeoff import (DEFAULT_KEEP_RATIOS, LEARNED_REDUCERS, REDUCERS, Point,
                                 choice_text, csv_text, markdown, model_args, plot_png,
                                 with_ratios)
from ..checkpoint import load_model, local_checkpoint_file
from ..config import apply_overrides, load_config
from ..data import dataset_names, first_images_dataset, first_test_inputs
from ..engine import evaluate_with_keep, result_metric, warnings_quiet
from ..errors import ConfigError, InputError
from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, make_output_dir
from ..modeling import find_pruned_vit
from ..modeling.autocast import amp_dtype, autocast_model
from ..modeling.baselines import net_overrides

__all__ = ["TradeoffOptions", "run_tradeoff"]


@dataclass(frozen=True)
class TradeoffOptions:
    """The sweep's settings (the flags of ``tokenprune.tools.tradeoff``, same names).

    Attributes:
        config_file, overrides: the LazyConfig and its ``key=value`` overrides.
        checkpoint: the weights; None: the config's ``train.init_checkpoint``.
        keep_ratios: forced keep ratios in (0, 1]. reducers: keys of ``REDUCERS``.
        num_images: the first images of the test set; None: all of them.
        batch_size: images per call (evaluation and timing). precision: inference autocast.
        output: the folder; None: ``<train.output_dir>/tradeoff``.
        max_ap_drop: box AP points below dense allowed for the suggested point; None: no
            suggestion. latency_images: the first images FLOPs and latency are measured
            on. repeats: timed rounds (one untimed round first).
        allow_untrained_gates: with the learned reducers (gates, topk), the checkpoint may
            lack the gates (SViT) or pruning decoders (VLTP); refused by default.
    """

    config_file: str
    overrides: Tuple[str, ...] = ()
    checkpoint: Optional[str] = None
    keep_ratios: Tuple[float, ...] = DEFAULT_KEEP_RATIOS
    reducers: Tuple[str, ...] = tuple(REDUCERS)
    num_images: Optional[int] = None
    batch_size: int = 1
    precision: str = "float32"
    output: Optional[str] = None
    max_ap_drop: Optional[float] = None
    latency_images: int = 4
    repeats: int = 5
    allow_untrained_gates: bool = False

    def check(self) -> None:
        """InputError for settings out of range (before anything is built)."""
        for r in self.keep_ratios:
            if math.isnan(r) or not 0.0 < r <= 1.0:
                raise InputError(f"keep ratio {r:g} is outside (0, 1]")
        for name in self.reducers:
            if name not in REDUCERS:
                raise InputError(f"unknown reducer {name!r}; choose from {', '.join(REDUCERS)}")
        for flag, value in (("--num-images", self.num_images), ("--batch-size", self.batch_size),
                            ("--latency-images", self.latency_images),
                            ("--repeats", self.repeats)):
            if value is not None and value < 1:
                raise InputError(f"{flag} must be at least 1, got {value}")
        if self.max_ap_drop is not None and not self.max_ap_drop >= 0:
            raise InputError(f"--max-ap-drop must be 0 or more, got {self.max_ap_drop:g}")

    def points(self) -> List[Point]:
        """Dense first, the gates' dynamic point, then each reducer at each ratio."""
        ratios = list(dict.fromkeys(float(r) for r in self.keep_ratios))
        reducers = list(dict.fromkeys(self.reducers))
        return ([Point("dense")] + [Point("gates") for r in reducers if r == "gates"]
                + [Point(red, r) for red in reducers if red != "gates" for r in ratios])


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _under(context: Callable[[], ContextManager], fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` called inside a fresh ``context()``."""
    def call() -> object:
        with context():
            return fn()
    return call


class _Sweep:
    """The models, the evaluation config and the measured inputs of one sweep; everything
    that can be refused is checked here, before a file is written."""

    def __init__(self, cfg, options: TradeoffOptions):
        self.options = options
        self.device = cfg.train.device
        if options.precision != "float32":
            try:
                amp_dtype(options.precision, self.device)
            except ConfigError as e:
                raise InputError(f"--precision {options.precision}: {e}") from None
        checkpoint = options.checkpoint or cfg.train.get("init_checkpoint") or ""
        if not checkpoint:
            raise InputError("no weights: pass --checkpoint FILE or set train.init_checkpoint")
        self.checkpoint_file = local_checkpoint_file(checkpoint)
        self.checkpoint = checkpoint
        if "evaluator" not in cfg.dataloader:
            raise ConfigError(f"{options.config_file} sets no dataloader.evaluator to score "
                              "the points with")
        self.test_names = dataset_names(cfg, ("test",))
        self.num_images = self._limit_test_set(cfg)
        self.cfg = cfg
        learned = any(r in LEARNED_REDUCERS for r in options.reducers)
        # the learned reducers run the checkpoint's gates: refused when it lacks them
        self.models = {"dense": self._load(cfg, strict=learned, gates_used=learned)}
        self.vit = find_pruned_vit(self.models["dense"])
        if self.vit is None:
            raise ConfigError(f"{options.config_file}: the trade-off needs a token-pruned "
                              "backbone (a PrunedViT: an SViT or VLTP config)")
        if learned and (self.vit.reducer is not None or not any(
                getattr(g, "learned", True) for g in self.vit.gates.values())):
            raise InputError("the config's model has no learned gates: choose --reducers "
                             "from random, evit, tome")
        self.has_gate_kwargs = cfg.model.backbone.net.get("gate_kwargs") is not None
        for name in dict.fromkeys(options.reducers):
            if name not in LEARNED_REDUCERS:
                self.models[name] = self._load(self._reducer_config(name), strict=True,
                                               gates_used=False)
        inputs = first_test_inputs(cfg, min(options.latency_images, self.num_images))
        self.flop_inputs = inputs
        self.batches = [inputs[i:i + options.batch_size]
                        for i in range(0, len(inputs), options.batch_size)]

    def _limit_test_set(self, cfg) -> int:
        """Point the test loader at the first ``num_images`` images; returns their count."""
        from detectron2.data import DatasetCatalog

        num = self.options.num_images
        subset = first_images_dataset(self.test_names, num) if num else None
        if subset is not None:
            cfg.dataloader.test.dataset.names = subset
        cfg.dataloader.test.batch_size = self.options.batch_size
        return len(DatasetCatalog.get(subset)) if subset else sum(
            len(DatasetCatalog.get(n)) for n in self.test_names)

    def _reducer_config(self, name: str):
        args = model_args(name, self.has_gate_kwargs)
        return apply_overrides(load_config(self.options.config_file, self.options.overrides),
                               net_overrides(args))

    def _load(self, cfg, strict: bool, gates_used: bool) -> torch.nn.Module:
        """The model of ``cfg`` from the checkpoint; with ``gates_used``, the checkpoint must
        hold its gates unless ``allow_untrained_gates`` (the baselines' gates learn nothing)."""
        cfg.train.init_checkpoint = self.checkpoint
        return load_model(cfg, precision=self.options.precision, strict=strict,
                          allow_untrained_gates=self.options.allow_untrained_gates
                          or not gates_used)

    def identity(self) -> Dict[str, Any]:
        """What the saved points depend on: a folder made with other values is refused."""
        o = self.options
        return dict(config_file=os.path.abspath(o.config_file), overrides=list(o.overrides),
                    checkpoint=self.checkpoint, checkpoint_sha256=_sha256(self.checkpoint_file),
                    test_dataset="+".join(self.test_names), num_images=self.num_images,
                    batch_size=o.batch_size, precision=o.precision,
                    latency_images=len(self.flop_inputs), repeats=o.repeats)

    def model_of(self, point: Point) -> torch.nn.Module:
        return self.models["dense" if point.reducer in LEARNED_REDUCERS else point.reducer]

    def applied(self, point: Point, model: torch.nn.Module) -> ContextManager:
        """The point's switch on its model's PrunedViT (a context)."""
        vit = find_pruned_vit(model)
        if point.reducer == "dense":
            return vit.pruning(gates=False)
        return vit.pruning(keep_ratio=point.ratio)  # None: the gates' dynamic rate

    def _calls(self, point: Point) -> Dict[str, List[Callable[[], object]]]:
        """{scope: one call per batch of the measured images}, each in the point's context."""
        model = self.model_of(point)
        vit = find_pruned_vit(model)
        vit_call = autocast_model(vit, self.options.precision, self.device)
        calls: Dict[str, List[Callable[[], object]]] = {"backbone": [], "model": []}
        for batch in self.batches:
            with torch.no_grad():
                x = model.preprocess_image(batch).tensor
                guide = model.guidance(batch) if getattr(model, "guidance", None) else None

            def backbone(x=x, guide=guide) -> object:
                with vit.guided(guide):
                    return vit_call(x)

            calls["backbone"].append(_under(lambda: self.applied(point, model), backbone))
            calls["model"].append(_under(lambda: self.applied(point, model),
                                         lambda batch=batch: model(batch)))
        return calls

    def measure(self, point: Point, log_path: str) -> Dict[str, Any]:
        """One point: its evaluation pass, FLOPs and latency against dense."""
        start = time.perf_counter()
        model = self.model_of(point)
        with self.applied(point, model), warnings_quiet():
            torch.manual_seed(0)  # the random reducer's draws
            results, kept, _ = evaluate_with_keep(self.cfg, model, log_path)
            flops = count_model_flops(model, self.flop_inputs)
        dense, own = self._calls(Point("dense")), self._calls(point)
        per_image = len(self.flop_inputs) / len(self.batches)
        row = dict(key=point.key, reducer=point.reducer, keep_ratio=point.ratio,
                   label=_label(point), override=point.override(self.has_gate_kwargs),
                   box_ap=result_metric(results, "bbox"), mask_ap=result_metric(results, "segm"),
                   task_miou=result_metric(results, "task_seg", "mIoU"), kept=kept,
                   backbone_gflops=flops.backbone / 1e9, total_gflops=flops.total / 1e9,
                   gate_gflops=flops.gates / 1e9)
        for scope in ("backbone", "model"):
            ref_ms, ms = paired_latency(dense[scope], own[scope], self.options.repeats,
                                        cuda=str(self.device).startswith("cuda"))
            row.update({f"dense_{scope}_ms": ref_ms / per_image, f"{scope}_ms": ms / per_image,
                        f"{scope}_speedup": ref_ms / ms})
            if point.reducer == "dense":  # the reference; against itself: the timing noise
                row.update({f"{scope}_noise": ref_ms / ms, f"{scope}_speedup": 1.0})
        row.update(results=results, seconds=time.perf_counter() - start)
        return row


def _label(point: Point) -> str:
    if point.reducer == "dense":
        return "dense"
    if point.ratio is None:
        return "learned gates (dynamic)"
    return f"{point.reducer} {point.ratio:g}"


def _open_state(output: str, identity: Dict[str, Any]) -> None:
    """Refuse a folder made with other values (InputError), else record them in
    ``tradeoff.json``; nothing is written before the check."""
    path = os.path.join(output, "tradeoff.json")
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        changed = [f"{k} {saved.get(k)!r} (now {v!r})" for k, v in identity.items()
                   if saved.get(k) != v]
        if changed:
            raise InputError(f"{output} holds a trade-off made with another "
                             f"{changed[0]}; use another --output folder")
    make_output_dir(os.path.join(output, "results"))
    atomic_write_json(path, identity)


def _machine(device: str) -> Dict[str, Any]:
    name = (torch.cuda.get_device_name(device) if str(device).startswith("cuda")
            else platform.processor() or platform.machine())
    return dict(device=str(device), device_name=name, torch_version=torch.__version__,
                torch_threads=torch.get_num_threads())


def _write_report(output: str, rows: List[Dict[str, Any]], info: Dict[str, Any],
                  options: TradeoffOptions, plot: bool) -> str:
    """tradeoff.csv and tradeoff.md of ``rows`` (dense first), tradeoff.png with ``plot``;
    returns the markdown."""
    md = markdown(rows, info, options.max_ap_drop)
    atomic_write_text(os.path.join(output, "tradeoff.csv"), csv_text(rows))
    if plot:
        title = f"{os.path.basename(options.config_file)}: {info['num_images']} images, " \
                f"{info['device']}, batch {options.batch_size}, {options.precision}"
        atomic_write_bytes(os.path.join(output, "tradeoff.png"), plot_png(rows, title))
    atomic_write_text(os.path.join(output, "tradeoff.md"), md)
    return md


@contextmanager
def _progress(total: int, prog: str) -> Iterator[Any]:
    from tqdm import tqdm

    with tqdm(total=total, desc=prog, unit="point", file=sys.stderr,
              dynamic_ncols=True) as bar:
        yield bar


def run_tradeoff(cfg, options: TradeoffOptions, prog: str) -> Dict[str, Any]:
    """Measure the points not yet in the output folder and write the report; returns
    ``rows`` (dense first, with ratios and Pareto marks), ``choice`` (the
    ``--max-ap-drop`` text or None) and ``output``. ``cfg``: the loaded config."""
    options.check()
    sweep = _Sweep(cfg, options)
    output = options.output or os.path.join(cfg.train.output_dir, "tradeoff")
    identity = sweep.identity()
    _open_state(output, identity)
    for node in _evaluators(cfg):
        node.output_dir = os.path.join(output, "eval")
    log_path = os.path.join(output, "log.txt")
    info = dict(identity, **_machine(sweep.device))

    def result_path(point: Point) -> str:
        return os.path.join(output, "results", f"{point.key}.json")

    points = options.points()
    todo = [p for p in points if not os.path.isfile(result_path(p))]
    with _progress(len(todo), prog) as bar:
        for point in todo:
            bar.set_postfix_str(_label(point), refresh=True)
            atomic_write_json(result_path(point), sweep.measure(point, log_path))
            bar.update()
    rows = []
    for point in points:
        with open(result_path(point)) as f:
            rows.append(json.load(f))
    rows = with_ratios(rows)
    md = _write_report(output, rows, info, options, plot=True)
    choice = None if options.max_ap_drop is None else choice_text(rows, options.max_ap_drop)
    return dict(rows=rows, choice=choice, output=output, markdown=md,
                measured=len(todo))


def _evaluators(cfg) -> List[Any]:
    """The config's evaluator nodes (one, or a list of them)."""
    node = cfg.dataloader.evaluator
    return list(node) if isinstance(node, (list, tuple, ListConfig)) else [node]
