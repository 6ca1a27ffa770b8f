"""Latency, throughput and peak memory of a token-pruned ViTDet: dense vs pruned.

    python -m tokenprune.tools.benchmark --config-file configs/COCO/mask_rcnn_vitdet_b_svit.py \\
        --schedule svit --device cpu --input-size 1024 --repeats 3
    # the same from the dense ViTDet-B config (converted in memory, see below):
    python -m tokenprune.tools.benchmark --config-file configs/COCO/mask_rcnn_vitdet_b_dense.py \\
        --schedule svit --device cpu --input-size 1024 --repeats 3 \\
        -- "model.backbone.net.window_block_indexes=[]"
    python -m tokenprune.tools.benchmark --config-file CFG --sweep 1.0 0.7 0.5 \\
        --input-size 512 --batch-size 2 --output out/bench -- model.backbone.net.depth=12

What is measured, in one process, on the same weights and the same inputs:

* ``backbone``: the ViT alone (``model.backbone.net``) on the padded, normalised image
  tensor the whole model would feed it;
* ``model``: the whole network, ``model([{"image": ..., "height": S, "width": S}])``
  (preprocessing, backbone, feature pyramid, RPN, box and mask heads, postprocessing).

Variants (all share the model object; only :meth:`PrunedViT.pruning` changes):

* two dense references, both ``pruning(gates=False)`` (no gate cost): ``dense
  (Detectron2)``, every block Detectron2's own ``Block.forward``, exactly the dense ViTDet;
  and ``dense (SDPA)``, the same computation through
  ``torch.nn.functional.scaled_dot_product_attention`` with the relative positions as an
  additive bias (:mod:`tokenprune.modeling.attention`). Every speedup is taken against the
  **faster** of the two in that scope (and batch size), named in the results.
* ``keep R`` (``--sweep``, or ``--keep-ratio`` with one number): every pruned block keeps
  its top ``R`` of the tokens by gate score (``fixed_keep_ratio=R``). ``keep 1.0`` is the
  dense computation plus the gates' cost.
* ``keep R1/R2/...`` (``--keep-ratio`` with one number per pruned block): that schedule,
  forced as top-k rates.
* ``svit schedule`` (``--schedule svit``): the config's per-block targets ``keep_ratios``
  (0.7 / 0.49 / 0.343 for SViT) forced as top-k rates; with a batch of B > 1 images also
  ``svit schedule, unequal``: image b keeps ``min(1, r * s_b)`` with ``s`` evenly spaced
  in [0.6, 1.4] (unequal counts per image at the schedule's mean).
* ``learned gates``: ``fixed_keep_ratio=None``, the gates decide per image (only with
  ``--weights checkpoint`` and a config that has gates: untrained gates decide nothing).

The pruned variants run ``--attention`` (default ``sdpa``; ``eager``, ``flex``; several
kernels: one row per variant and kernel, the kernel in brackets) in their dense and
gathered blocks, windows bucketed by kept count (the model's ``bucket_quantum``);
each row reports the padding the gathered attention computes over the kept tokens, with
one bucket (every group padded to the fullest, as before bucketing) and with the buckets.
``--batch-size 1 2 4 8`` measures every batch size in one run (the same image repeated);
``--precision bfloat16|float16`` runs every call under ``torch.autocast``.

``--compile none default freeze`` measures every variant (the dense references included) in
each mode, named "eager", "compiled" and "compiled + freezing" (inductor's ``freezing``:
weights folded in as constants); the speedups are against the **fastest dense row** of the
run, any kernel and mode. A compiled variant runs ``torch.compile`` of the ViT (backbone
scope) or of the whole model, and its PrunedViT compiles its blocks
(``pruning(compile=...)``, :mod:`tokenprune.modeling.compiled`: a dense ViT is traced
whole; a pruned one keeps its decisions eager around compiled blocks). Its first call
compiles (so ``--warmup`` must be at least 1); it reports the compile seconds (the first
call's time beyond its median), the graphs built during its calls (``torch._dynamo``'s
unique graphs; a graph shared with a row measured before it counts there), those built in
the timed rounds (recompiles) and the graph breaks. The flex kernel has no compiled row
(it compiles itself on CUDA). Peak memory is measured for the eager rows only.
``--images N`` runs N distinct seeded images: round r (warm-up rounds first) runs image
``r % N`` in every variant, so learned gates keep other counts every round (and a compiled
model meets them, recompiles included, in its timed rounds); the FLOP prediction and the
kept fractions are then the mean over the timed rounds.

A dense config (a plain ViT backbone) is converted in memory into a PrunedViT with SViT's
schedule (``tokenprune.modeling.svit_schedule``); the parameter names are the same, so
``--weights checkpoint`` loads the dense checkpoint into it (the gates stay random, so
only forced rates are measured). A pruned config's checkpoint without its gates is refused
unless ``--allow-untrained-gates`` (then ``learned gates`` measures untrained gates).

Weights: ``--weights random`` (default; a fixed seed, identical across variants and
processes) or ``--weights checkpoint`` (``train.init_checkpoint``). The fixed-rate variants
do the same work whatever the weights, so their timings do not depend on this choice. To
make the heads' work independent of the weights and of the input, every box predictor's
score threshold is set to 0: each image yields ``test_topk_per_image`` (100) detections
and masks, for every variant (the heads' heaviest case, so whole-model speedups are
conservative). ``model.backbone.square_pad`` follows ``--input-size``.

Timing (:func:`.timing.interleaved_times`): ``--warmup`` untimed rounds, then ``--repeats``
timed rounds; each round runs every (variant, scope) once, the order rotated every round
so that slow drift (thermal, other processes) spreads over all variants. Figures are medians of
wall-clock time; on a CPU also of the process's CPU time (``time.process_time``, all
threads), which other processes on a shared machine disturb much less. ``--threads N``
sets ``torch.set_num_threads``: on a busy shared machine ``--threads 1`` gives stable
figures. On CUDA every timed call is bracketed by ``torch.cuda.synchronize()``.

Predicted speedup: multiply-accumulates of the backbone counted analytically per block
from the kept tokens of the measured forward (:mod:`.cost`): q/k/v, output
projection and MLP linear in the tokens, attention quadratic per attention group (the kept
tokens of an image for a global block, of a window for a windowed block), decomposed
relative positions linear, the gates on all tokens, the patch embedding on all tokens.
The dense count follows Detectron2's dense block (windowed blocks attend over padded
windows). Reported as dense MACs / variant MACs, next to the measured speedup and their
ratio (``measured_over_predicted``).

Peak memory (``--memory``, :mod:`.memory`): the extra memory one forward needs over what is
allocated before it (weights, inputs), per variant and scope.

* ``tensors`` (default): the peak of live PyTorch tensor memory during the forward minus
  the live memory before it. CUDA: ``torch.cuda.max_memory_allocated()`` minus
  ``memory_allocated()``. CPU: the same quantity from ``torch.profiler``'s allocation
  records (``profile_memory=True``; the running sum of allocations and frees). Exact and
  unaffected by allocator caching, but it leaves out memory not held in tensors.
* ``rss`` (CPU, Linux): each variant in a fresh subprocess (``python -m
  tokenprune.analysis.memory_probe``, so no memory retained by the allocator from other
  variants hides or inflates its peak); the process's resident-set
  high-water mark is reset (``/proc/self/clear_refs``) after set-up and read after one
  backbone forward, then reset and read after one whole-model forward, both relative to
  the resident set before the first forward. Includes everything the process touches
  (allocator slack, library scratch buffers); a first forward in a fresh process.
* ``off``: not measured.

``--profile`` additionally runs one profiled backbone forward per variant
(``torch.profiler``) and writes ``profile.md``: time inside the gates, the token grouping,
packing, the relative-position bias, gathered and dense blocks, and the top operators.

Outputs (``--output``, default ``<train.output_dir>/benchmark``), each written atomically:
``speedup.png``, ``results.md``, then ``results.json`` (present only after a complete run).
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..checkpoint import load_model
from ..errors import CheckpointError, ConfigError, InputError
from ..modeling import PrunedViT, find_pruned_vit, svit_schedule
from ..modeling.keep_policy import per_block_ratios
from ..modeling.attention import DEFAULT_ATTENTION
from ..modeling.autocast import autocast_model
from ..modeling.compiled import inductor_options
from ..modeling.sparse_block import group_kept_tokens
from .benchmark_options import BenchmarkOptions
from .cost import BackboneSpec
from .timing import interleaved_times

__all__ = ["BenchmarkVariant", "Bench", "CallRecord", "prepare_config", "setup",
           "for_batch", "variants", "applied", "runner", "time_variants", "padding_fractions"]


@dataclass
class BenchmarkVariant:
    """One row: a forced rate per pruned block (``fixed``), the gates (None) or no pruning."""

    key: str  # "dense", "dense_sdpa", "keep0.7", "svit", "svit_unequal", "gates" (+ mode)
    name: str
    fixed: Optional[Dict[int, float]]  # forced rate per pruned block; None: the gates decide
    gates_off: bool = False  # a dense reference
    attention: str = DEFAULT_ATTENTION
    image_scales: Optional[List[float]] = None
    compile: str = "none"  # a mode of tokenprune.modeling.compiled.COMPILE_MODES


def variants(options: BenchmarkOptions, vit, has_trained_gates: bool,
             batch: int) -> List[BenchmarkVariant]:
    """The two dense references, one variant per ``--sweep`` ratio, the ``--keep-ratio``
    schedule, the config's schedule (and its unequal form for a batch), the learned gates."""
    dense = [BenchmarkVariant("dense", "dense (Detectron2)", None, gates_off=True,
                              attention="eager"),
             BenchmarkVariant("dense_sdpa", "dense (SDPA)", None, gates_off=True,
                              attention="sdpa")]
    blocks = vit.pruned_blocks
    pruned = []
    uniform = options.sweep + (options.keep_ratio if len(options.keep_ratio) == 1 else ())
    for r in dict.fromkeys(uniform):
        pruned.append(BenchmarkVariant(f"keep{r:g}", f"keep {r:g}", {i: float(r) for i in blocks}))
    if len(options.keep_ratio) > 1:
        try:
            forced = per_block_ratios(options.keep_ratio, blocks, "--keep-ratio")
        except ValueError as e:
            raise InputError(str(e)) from None
        pruned.append(BenchmarkVariant("keep_blocks", "keep " + "/".join(
            f"{r:g}" for r in options.keep_ratio), forced))
    if options.schedule == "svit":
        pruned.append(BenchmarkVariant("svit", "svit schedule", dict(vit.keep_ratios)))
        if batch > 1:
            scales = [0.6 + 0.8 * b / (batch - 1) for b in range(batch)]
            pruned.append(BenchmarkVariant("svit_unequal", "svit schedule, unequal",
                                  dict(vit.keep_ratios), image_scales=scales))
    if has_trained_gates:
        pruned.append(BenchmarkVariant("gates", "learned gates", None))
    kernels = list(dict.fromkeys(options.attention))
    if len(kernels) == 1:
        rows = dense + [replace(v, attention=kernels[0]) for v in pruned]
    else:
        rows = dense + [replace(v, key=f"{v.key}_{k}", name=f"{v.name} [{k}]", attention=k)
                        for v in pruned for k in kernels]
    modes = list(dict.fromkeys(options.compile))
    if modes == ["none"]:
        return rows
    return [replace(v, key=v.key if m == "none" else f"{v.key}@{m}",
                    name=f"{v.name}, {_MODE_LABELS[m]}", compile=m)
            for m in modes for v in rows if m == "none" or v.attention != "flex"]


_MODE_LABELS = {"none": "eager", "default": "compiled", "freeze": "compiled + freezing"}


def prepare_config(cfg, options: BenchmarkOptions):
    """The loaded config with the benchmark's changes; returns (cfg, converted_from_dense,
    input_size)."""
    from detectron2.modeling.backbone.vit import ViT
    from detectron2.utils.registry import locate

    net = cfg.model.get("backbone", {}).get("net") if "model" in cfg else None
    if net is None or "_target_" not in net:
        raise ConfigError(f"{options.config_file}: the benchmark needs a ViTDet model "
                          "(model.backbone.net)")
    target = net._target_
    target = locate(target) if isinstance(target, str) else target
    if not (isinstance(target, type) and issubclass(target, ViT)):
        raise ConfigError(f"{options.config_file}: model.backbone.net is {target}, "
                          "not a ViTDet ViT")
    converted = not issubclass(target, PrunedViT)
    if converted:
        net._target_ = PrunedViT
        net.update(svit_schedule(int(net.depth)))
        net.fixed_keep_ratio = None
    size = options.input_size
    if size is None:
        size = int(cfg.model.backbone.get("square_pad", 0) or net.get("img_size", 1024))
    if "square_pad" in cfg.model.backbone and cfg.model.backbone.square_pad:
        cfg.model.backbone.square_pad = size
    if options.weights == "random":
        cfg.train.init_checkpoint = ""
    elif not cfg.train.get("init_checkpoint"):
        raise CheckpointError("--weights checkpoint: the config sets no train.init_checkpoint")
    return cfg, converted, size


def _build(cfg, device: str, allow_untrained_gates: bool):
    """The model (random weights seeded, or the checkpoint), every head at full work."""
    torch.manual_seed(0)  # random weights: identical in every process
    try:
        model = load_model(cfg, device, allow_untrained_gates=allow_untrained_gates)
    except (OSError, RuntimeError) as e:  # e.g. a remote checkpoint that cannot be fetched
        if cfg.train.init_checkpoint:
            raise CheckpointError(f"cannot load {cfg.train.init_checkpoint}: "
                                  f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
        raise
    for m in model.modules():  # the heads always do their full work (see module docstring)
        if hasattr(m, "test_score_thresh"):
            m.test_score_thresh = 0.0
    return model, find_pruned_vit(model)


def _inputs(model, size: int, batch: int, prompt, task_id, seed: int = 1):
    """A seeded random image ``batch`` times: (input dicts, backbone input, guidance)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
    batched = []
    for _ in range(batch):
        d = {"image": image.clone(), "height": size, "width": size}
        if prompt is not None:
            d["prompt"] = prompt
        if task_id is not None:
            d["task_id"] = task_id
        batched.append(d)
    with torch.no_grad():
        x = model.preprocess_image(batched).tensor
        guidance = None
        if getattr(model, "guidance", None) is not None:
            guidance = model.guidance(batched)
    return batched, x, guidance


def _runners(model, vit, inputs: List[tuple], current: List[int],
             options: BenchmarkOptions) -> Dict[Tuple[str, str], Callable[[], object]]:
    """{(scope, compile mode): call} on image ``current[0]`` of ``inputs`` (from
    :func:`_inputs`), each under ``--precision``'s autocast; a compiled mode's calls go
    through ``torch.compile`` of the ViT / the model (the pruned blocks compile themselves,
    ``pruning(compile=...)``)."""
    eager = {"backbone": autocast_model(vit, options.precision, options.device),
             "model": autocast_model(model, options.precision, options.device)}
    runners = {}
    for mode in dict.fromkeys(options.compile):
        for scope, module in eager.items():
            call = module if mode == "none" else torch.compile(
                module, options=inductor_options(mode))
            runners[(scope, mode)] = _image_call(scope, call, vit, inputs, current)
    return runners


def _image_call(scope: str, call, vit, inputs: List[tuple], current: List[int]):
    def run():
        batched, x, guidance = inputs[current[0] % len(inputs)]
        if scope == "model":
            return call(batched)
        with vit.guided(guidance):  # None: unguided, as outside the context
            return call(x)
    return run


@dataclass
class Bench:
    """What every measurement shares: the model, its PrunedViT, and (after
    :func:`for_batch`) the variants and inputs of one batch size."""

    model: torch.nn.Module
    vit: PrunedViT
    scopes: List[str]
    spec: BackboneSpec
    converted: bool
    has_trained_gates: bool
    input_size: int
    batch: int = 0
    variants: Optional[List[BenchmarkVariant]] = None
    runners: Optional[Dict[Tuple[str, str], Callable[[], object]]] = None
    x: Optional[torch.Tensor] = None  # the first image's backbone input
    current: Optional[List[int]] = None  # [index of the image the runners use]


def setup(cfg, options: BenchmarkOptions) -> Bench:
    """Build the model of ``prepare_config``'s config (``bench.input_size``: the input side
    ``options.input_size`` or the model's)."""
    cfg, converted, size = prepare_config(cfg, options)
    # random weights, and the gates of a converted dense model, are meant to be untrained
    model, vit = _build(cfg, options.device, options.weights == "random" or converted
                        or options.allow_untrained_gates)
    _, x, guidance = _inputs(model, size, 1, options.prompt, options.task_id)
    grid = (x.shape[-2] // vit.patch_embed.proj.stride[0],
            x.shape[-1] // vit.patch_embed.proj.stride[1])
    return Bench(model=model, vit=vit,
                 scopes=["backbone"] if options.backbone_only else ["backbone", "model"],
                 spec=BackboneSpec.from_vit(vit, grid, guidance), converted=converted,
                 has_trained_gates=options.weights == "checkpoint" and not converted,
                 input_size=size)


def for_batch(bench: Bench, options: BenchmarkOptions, batch: int) -> Bench:
    """``bench`` with the variants, inputs (``options.images`` seeded images) and calls of a
    batch of ``batch`` images."""
    inputs = [_inputs(bench.model, bench.input_size, batch, options.prompt, options.task_id,
                      seed=1 + k) for k in range(options.images)]
    current = [0]
    return replace(bench, batch=batch, x=inputs[0][1], current=current,
                   variants=variants(options, bench.vit, bench.has_trained_gates, batch),
                   runners=_runners(bench.model, bench.vit, inputs, current, options))


def runner(bench: Bench, v: BenchmarkVariant, scope: str) -> Callable[[], object]:
    """The call of ``scope`` ("backbone" or "model") that variant ``v`` is timed with."""
    return bench.runners[(scope, v.compile)]


def applied(bench: Bench, variant: BenchmarkVariant):
    """The variant's switches on the PrunedViT (a context)."""
    return bench.vit.pruning(keep_ratio=variant.fixed, gates=not variant.gates_off,
                             attention=variant.attention, image_scales=variant.image_scales,
                             compile=variant.compile)


@dataclass
class CallRecord:
    """The calls of one (variant, scope): the first call's seconds (it compiles), and per
    call, warm-up rounds first, the graphs ``torch.compile`` built during it (``torch._dynamo``
    counters: unique graphs; graph breaks summed)."""

    first_s: Optional[float] = None
    graphs: List[int] = field(default_factory=list)
    breaks: int = 0


def time_variants(bench: Bench, options: BenchmarkOptions,
                  progress: str) -> Tuple[dict, dict, dict, dict]:
    """Medians (ms) of wall-clock and CPU time per (variant key, scope), the timed seconds,
    and what was observed: each variant's keep masks and ratios of every backbone forward
    (``masks``, ``ratios``: lists over the calls, warm-up first) and a :class:`CallRecord`
    per (variant key, scope) (``calls``). Round r runs image ``r % options.images``."""
    from torch._dynamo.utils import counters
    from tqdm import tqdm

    pairs = [(v, s) for v in bench.variants for s in bench.scopes]
    masks: Dict[str, list] = {v.key: [] for v in bench.variants}
    ratios: Dict[str, list] = {v.key: [] for v in bench.variants}
    calls = {(v.key, s): CallRecord() for v, s in pairs}

    def call(v: BenchmarkVariant, s: str) -> Callable[[], object]:
        record, run_scope = calls[(v.key, s)], runner(bench, v, s)

        def run():
            graphs = counters["stats"]["unique_graphs"]
            breaks = sum(counters["graph_break"].values())
            t0 = time.perf_counter()
            with applied(bench, v):
                out = run_scope()
            if record.first_s is None:
                record.first_s = time.perf_counter() - t0
            record.graphs.append(counters["stats"]["unique_graphs"] - graphs)
            record.breaks += sum(counters["graph_break"].values()) - breaks
            return out
        return run

    def next_round(r: int) -> None:
        bench.current[0] = r

    with tqdm(total=(options.warmup + options.repeats) * len(pairs), desc=progress, unit="run",
              file=sys.stderr, dynamic_ncols=True) as bar, torch.no_grad():
        def after(i: int) -> None:
            v, s = pairs[i]
            if s == "backbone":
                masks[v.key].append({b: m.detach().cpu()
                                     for b, m in bench.vit.last_keep_masks.items()})
                ratios[v.key].append({b: float(t.float().mean())
                                      for b, t in bench.vit.last_keep_ratios.items()})
            bar.set_postfix_str(f"{v.name} / {s}", refresh=False)
            bar.update()

        wall, cpu = interleaved_times([call(v, s) for v, s in pairs], options.repeats,
                                      options.warmup, cuda=options.device.startswith("cuda"),
                                      after_call=after, before_round=next_round)
    ms = {(v.key, s): 1e3 * statistics.median(t) for (v, s), t in zip(pairs, wall)}
    cpu_ms = {(v.key, s): 1e3 * statistics.median(t) for (v, s), t in zip(pairs, cpu)}
    times = {(v.key, s): t for (v, s), t in zip(pairs, wall)}
    return ms, cpu_ms, times, dict(masks=masks, ratios=ratios, calls=calls)


def padding_fractions(bench: Bench, masks: Dict[int, torch.Tensor]) -> Dict[str, float]:
    """Padding slots over kept tokens of the gathered attention, summed over the pruned
    blocks that gathered (``masks``: {block: (B, N) bool}): with one bucket per block (every
    group padded to the fullest) and with the model's buckets."""
    quantum = bench.vit.bucket_quantum
    kept = slots_one = slots_buckets = 0
    for i, keep in masks.items():
        if bool(keep.all()):
            continue  # ran densely
        groups = group_kept_tokens(keep, bench.spec.grid, bench.spec.window_sizes[i])
        kept += sum(groups.counts)
        slots_one += groups.num_groups * groups.length
        slots_buckets += sum(groups.bucket_lengths(quantum))
    if not kept:
        return {"one_bucket": 0.0, "buckets": 0.0}
    return {"one_bucket": slots_one / kept - 1, "buckets": slots_buckets / kept - 1}
