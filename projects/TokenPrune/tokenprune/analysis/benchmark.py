"""Latency, throughput and peak memory of a token-pruned ViTDet: dense vs pruned.

    python -m tokenprune.tools.benchmark --config-file configs/COCO/mask_rcnn_vitdet_b_svit.py \\
        --schedule svit --device cpu --input-size 1024 --repeats 3
    # the same from the dense ViTDet-B config (converted in memory, see below):
    python -m tokenprune.tools.benchmark --config-file configs/COCO/mask_rcnn_vitdet_b_dense.py \\
        --schedule svit --device cpu --input-size 1024 --repeats 3 \\
        -- "model.backbone.net.window_block_indexes=[]"
    python -m tokenprune.tools.benchmark --config-file CFG --keep-ratios 1.0 0.7 0.5 \\
        --input-size 512 --batch-size 2 --output out/bench -- model.backbone.net.depth=12

What is measured, in one process, on the same weights and the same inputs:

* ``backbone``: the ViT alone (``model.backbone.net``) on the padded, normalised image
  tensor the whole model would feed it;
* ``model``: the whole network, ``model([{"image": ..., "height": S, "width": S}])``
  (preprocessing, backbone, feature pyramid, RPN, box and mask heads, postprocessing).

Variants (all share the model object; only :meth:`PrunedViT.pruning` changes):

* ``dense``: the reference. ``pruning(gates=False)``: every block runs Detectron2's own
  dense ``Block.forward``: exactly the dense ViTDet, no gate cost.
* ``keep R`` (``--keep-ratios``): every pruned block keeps its top ``R`` of the tokens by
  gate score (``fixed_keep_ratio=R``). ``keep 1.0`` is the dense computation plus the
  gates' cost.
* ``svit schedule`` (``--schedule svit``): the config's per-block targets ``keep_ratios``
  (0.7 / 0.49 / 0.343 for SViT) forced as top-k rates.
* ``learned gates``: ``fixed_keep_ratio=None``, the gates decide per image (only with
  ``--weights checkpoint`` and a config that has gates: untrained gates decide nothing).

A dense config (a plain ViT backbone) is converted in memory into a PrunedViT with SViT's
schedule (``tokenprune.modeling.svit_schedule``); the parameter names are the same, so
``--weights checkpoint`` loads the dense checkpoint into it (the gates stay random, so
only forced rates are measured).

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

Peak memory (``--memory``, :mod:`.memory`): the extra memory one forward needs over what is allocated
before it (weights, inputs), per variant and scope.

* ``tensors`` (default): the peak of live PyTorch tensor memory during the forward minus
  the live memory before it. CUDA: ``torch.cuda.max_memory_allocated()`` minus
  ``memory_allocated()``. CPU: the same quantity from ``torch.profiler``'s allocation
  records (``profile_memory=True``; the running sum of allocations and frees). Exact and
  unaffected by allocator caching, but it leaves out memory not held in tensors.
* ``rss`` (CPU, Linux): each variant in a fresh subprocess (so no memory retained by the
  allocator from other variants hides or inflates its peak); the process's resident-set
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

import json
import math
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..checkpoint import load_model
from ..errors import CheckpointError, ConfigError, InputError
from ..modeling import PrunedViT, find_pruned_vit, svit_schedule
from .cost import BackboneSpec
from .memory import resident_peaks, tensor_peak
from .timing import interleaved_times

__all__ = ["Variant", "Bench", "check_args", "prepare_config", "setup", "variants",
           "time_variants", "peak_memory", "memory_probe", "profile_report", "results",
           "PROBE_TAG"]

PROBE_TAG = "TOKENPRUNE_MEMORY_PROBE "


@dataclass
class Variant:
    """One row: a forced rate per pruned block (``fixed``), the gates (None) or no pruning."""

    key: str  # "dense", "keep0.7", "svit", "gates"
    name: str
    fixed: Optional[Dict[int, float]]  # forced rate per pruned block; None: the gates decide
    gates_off: bool = False


def variants(args, vit, has_trained_gates: bool) -> List[Variant]:
    """dense, then one variant per ``--keep-ratios``, the schedule, the learned gates."""
    out = [Variant("dense", "dense", None, gates_off=True)]
    blocks = vit.pruned_blocks
    for r in args.keep_ratios or []:
        key = f"keep{r:g}"
        if all(v.key != key for v in out):
            out.append(Variant(key, f"keep {r:g}", {i: float(r) for i in blocks}))
    if args.schedule == "svit":
        out.append(Variant("svit", "svit schedule", dict(vit.keep_ratios)))
    if has_trained_gates:
        out.append(Variant("gates", "learned gates", None))
    return out


def check_args(args) -> None:
    """InputError for arguments out of range (before anything is built)."""
    for r in args.keep_ratios or []:
        if not (0.0 < r <= 1.0) or math.isnan(r):
            raise InputError(f"keep ratio {r:g} is outside (0, 1]")
    for name, value, low in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
                             ("--batch-size", args.batch_size, 1)):
        if value < low:
            raise InputError(f"{name} must be at least {low}, got {value}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    if args.input_size is not None and args.input_size <= 0:
        raise InputError(f"--input-size must be positive, got {args.input_size}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: CUDA is not available on this machine")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise InputError(f"--device must be cpu or cuda[:N], got {args.device}")
    if args.memory == "rss" and args.device != "cpu":
        raise InputError("--memory rss measures a CPU process; use --memory tensors on CUDA")


def prepare_config(cfg, args):
    """The loaded config with the benchmark's changes; returns (cfg, converted_from_dense,
    input_size)."""
    from detectron2.modeling.backbone.vit import ViT
    from detectron2.utils.registry import locate

    net = cfg.model.get("backbone", {}).get("net") if "model" in cfg else None
    if net is None or "_target_" not in net:
        raise ConfigError(f"{args.config_file}: the benchmark needs a ViTDet model "
                          "(model.backbone.net)")
    target = net._target_
    target = locate(target) if isinstance(target, str) else target
    if not (isinstance(target, type) and issubclass(target, ViT)):
        raise ConfigError(f"{args.config_file}: model.backbone.net is {target}, not a ViTDet ViT")
    converted = not issubclass(target, PrunedViT)
    if converted:
        net._target_ = PrunedViT
        net.update(svit_schedule(int(net.depth)))
        net.fixed_keep_ratio = None
    size = args.input_size
    if size is None:
        size = int(cfg.model.backbone.get("square_pad", 0) or net.get("img_size", 1024))
    if "square_pad" in cfg.model.backbone and cfg.model.backbone.square_pad:
        cfg.model.backbone.square_pad = size
    if args.weights == "random":
        cfg.train.init_checkpoint = ""
    elif not cfg.train.get("init_checkpoint"):
        raise CheckpointError("--weights checkpoint: the config sets no train.init_checkpoint")
    return cfg, converted, size


def _build(cfg, device: str):
    """The model (random weights seeded, or the checkpoint), every head at full work."""
    torch.manual_seed(0)  # random weights: identical in every process
    try:
        model = load_model(cfg, device)
    except (CheckpointError, ConfigError):
        raise
    except (OSError, RuntimeError) as e:  # e.g. a remote checkpoint that cannot be fetched
        if cfg.train.init_checkpoint:
            raise CheckpointError(f"cannot load {cfg.train.init_checkpoint}: "
                                  f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
        raise
    for m in model.modules():  # the heads always do their full work (see module docstring)
        if hasattr(m, "test_score_thresh"):
            m.test_score_thresh = 0.0
    return model, find_pruned_vit(model)


def _inputs(model, size: int, batch: int, prompt, task_id):
    """A seeded random image ``batch`` times: (input dicts, backbone input, guidance)."""
    g = torch.Generator().manual_seed(1)
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


def _runners(model, vit, x, batched, guidance) -> Dict[str, Callable[[], object]]:
    def backbone():
        with vit.guided(guidance) if guidance is not None else nullcontext():
            return vit(x)

    return {"backbone": backbone, "model": lambda: model(batched)}


@dataclass
class Bench:
    """What every measurement shares: the model, its PrunedViT, the variants and inputs."""

    model: torch.nn.Module
    vit: PrunedViT
    variants: List[Variant]
    runners: Dict[str, Callable[[], object]]
    scopes: List[str]
    x: torch.Tensor
    spec: BackboneSpec
    converted: bool


def setup(cfg, args) -> Bench:
    """Build the model and the inputs of ``prepare_config``'s config (``args.input_size``)."""
    cfg, converted, size = prepare_config(cfg, args)
    args.input_size = size
    model, vit = _build(cfg, args.device)
    batched, x, guidance = _inputs(model, size, args.batch_size, args.prompt, args.task_id)
    grid = (x.shape[-2] // vit.patch_embed.proj.stride[0],
            x.shape[-1] // vit.patch_embed.proj.stride[1])
    return Bench(model=model, vit=vit,
                 variants=variants(args, vit, args.weights == "checkpoint" and not converted),
                 runners=_runners(model, vit, x, batched, guidance),
                 scopes=["backbone"] if args.backbone_only else ["backbone", "model"],
                 x=x, spec=BackboneSpec.from_vit(vit, grid, guidance), converted=converted)


def _applied(bench: Bench, variant: Variant):
    """The variant's switches on the PrunedViT (a context)."""
    return bench.vit.pruning(keep_ratio=variant.fixed, gates=not variant.gates_off)


def time_variants(bench: Bench, args, progress: str) -> Tuple[dict, dict, dict, dict]:
    """Medians (ms) of wall-clock and CPU time per (variant key, scope), and each variant's
    keep masks and ratios of its first backbone forward."""
    from tqdm import tqdm

    pairs = [(v, s) for v in bench.variants for s in bench.scopes]
    masks, ratios = {}, {}

    def call(v: Variant, s: str) -> Callable[[], object]:
        def run():
            with _applied(bench, v):
                return bench.runners[s]()
        return run

    with tqdm(total=(args.warmup + args.repeats) * len(pairs), desc=progress, unit="run",
              file=sys.stderr, dynamic_ncols=True) as bar, torch.no_grad():
        def after(i: int) -> None:
            v, s = pairs[i]
            if s == "backbone" and v.key not in masks:
                masks[v.key] = {b: m.detach().cpu() for b, m in bench.vit.last_keep_masks.items()}
                ratios[v.key] = {b: float(t.float().mean())
                                 for b, t in bench.vit.last_keep_ratios.items()}
            bar.set_postfix_str(f"{v.name} / {s}", refresh=False)
            bar.update()

        wall, cpu = interleaved_times([call(v, s) for v, s in pairs], args.repeats, args.warmup,
                                      cuda=args.device.startswith("cuda"), after_call=after)
    ms = {(v.key, s): 1e3 * statistics.median(t) for (v, s), t in zip(pairs, wall)}
    cpu_ms = {(v.key, s): 1e3 * statistics.median(t) for (v, s), t in zip(pairs, cpu)}
    times = {(v.key, s): t for (v, s), t in zip(pairs, wall)}
    return ms, cpu_ms, times, dict(masks=masks, ratios=ratios)


def _tensor_peaks(bench: Bench, device: str) -> Dict[str, Dict[str, float]]:
    out = {}
    with torch.no_grad():
        for v in bench.variants:
            with _applied(bench, v):
                out[v.key] = {s: tensor_peak(bench.runners[s], device) for s in bench.scopes}
    return out


def memory_probe(bench: Bench, args) -> None:
    """Child process: one variant's resident peaks, printed as one tagged JSON line."""
    (variant,) = [v for v in bench.variants if v.key == args.memory_probe]
    with torch.no_grad(), _applied(bench, variant):
        peaks, method = resident_peaks({s: bench.runners[s] for s in bench.scopes})
    print(PROBE_TAG + json.dumps({"method": method, "peaks": peaks}), flush=True)


def _probe_command(args, key: str, module: str) -> List[str]:
    cmd = [sys.executable, "-m", module, "--config-file", args.config_file,
           "--threads", str(torch.get_num_threads()),
           "--device", args.device, "--batch-size", str(args.batch_size),
           "--input-size", str(args.input_size), "--weights", args.weights,
           "--memory", "rss", "--memory-probe", key]
    if args.keep_ratios:
        cmd += ["--keep-ratios", *[repr(r) for r in args.keep_ratios]]
    if args.schedule:
        cmd += ["--schedule", args.schedule]
    if args.backbone_only:
        cmd.append("--backbone-only")
    if args.prompt is not None:
        cmd += ["--prompt", args.prompt]
    if args.task_id is not None:
        cmd += ["--task-id", str(args.task_id)]
    return cmd + ["--", *args.opts]


def _resident_peaks_per_process(bench: Bench, args, module: str) -> Tuple[dict, str]:
    """Each variant's resident peaks in a fresh ``python -m module`` (the tool's probe)."""
    import tokenprune

    out, method = {}, ""
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(tokenprune.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    for v in bench.variants:
        proc = subprocess.run(_probe_command(args, v.key, module), capture_output=True,
                              text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(PROBE_TAG)]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory probe for {v.name} failed (exit {proc.returncode}):\n"
                               + proc.stderr[-3000:])
        res = json.loads(lines[-1][len(PROBE_TAG):])
        out[v.key], method = res["peaks"], res["method"]
    return out, method


def peak_memory(bench: Bench, args, probe_module: str) -> Tuple[dict, str]:
    """{variant key: {scope: MiB}} as ``args.memory`` asks, and how it was measured."""
    if args.memory == "off":
        return {}, "not measured (--memory off)"
    if args.memory == "tensors" and args.device.startswith("cuda"):
        return _tensor_peaks(bench, args.device), (
            "CUDA tensors: torch.cuda.max_memory_allocated() during one forward minus "
            "memory_allocated() before it")
    if args.memory == "tensors":
        return _tensor_peaks(bench, args.device), (
            "CPU tensors: peak of live tensor memory during one forward (torch.profiler "
            "allocation records) minus the live memory before it")
    mem, how = _resident_peaks_per_process(bench, args, probe_module)
    return mem, ("CPU: resident-set high-water mark during the first forward in a fresh "
                 "process per variant, minus the resident set before it"
                 + (" (VmHWM reset via /proc/self/clear_refs)" if how == "VmHWM"
                    else " (ru_maxrss delta: a lower bound)"))


def profile_report(bench: Bench) -> str:
    """profile.md: one profiled backbone forward per variant (the model's ``tp::`` ranges)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    labels = ["tp::gate", "tp::group_kept_tokens", "tp::pack", "tp::unpack",
              "tp::rel_pos_bias", "tp::gathered_block", "tp::dense_block"]
    parts = ["# Profile of one backbone forward per variant\n",
             "Inclusive CPU time inside the labelled pieces (ms), then the operators with "
             "the most self CPU time.\n"]
    with torch.no_grad():
        for v in bench.variants:
            with _applied(bench, v):
                bench.runners["backbone"]()  # warm
                with profile(activities=activities) as prof:
                    t0 = time.perf_counter()
                    bench.runners["backbone"]()
                    wall = time.perf_counter() - t0
            ka = prof.key_averages()
            by_key = {e.key: e for e in ka}
            parts.append(f"\n## {v.name} (wall {wall * 1e3:.1f} ms under the profiler)\n\n")
            parts.append("| piece | calls | CPU ms (inclusive) |\n|---|---:|---:|\n")
            for label in labels:
                e = by_key.get(label)
                if e is not None:
                    parts.append(f"| {label} | {e.count} | {e.cpu_time_total / 1e3:.1f} |\n")
            parts.append("\n```\n" + ka.table(sort_by="self_cpu_time_total", row_limit=20)
                         + "\n```\n")
    return "".join(parts)
