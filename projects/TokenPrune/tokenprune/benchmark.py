"""Latency, throughput and peak memory of a token-pruned ViTDet: dense vs pruned.

    python -m tokenprune.benchmark --config-file configs/COCO/mask_rcnn_vitdet_b_svit.py \\
        --schedule svit --device cpu --input-size 1024 --repeats 3
    # the same from the dense ViTDet-B config (converted in memory, see below):
    python -m tokenprune.benchmark --config-file configs/COCO/mask_rcnn_vitdet_b_dense.py \\
        --schedule svit --device cpu --input-size 1024 --repeats 3 \\
        -- "model.backbone.net.window_block_indexes=[]"
    python -m tokenprune.benchmark --config-file CFG --keep-ratios 1.0 0.7 0.5 \\
        --input-size 512 --batch-size 2 --output out/bench -- model.backbone.net.depth=12

What is measured, in one process, on the same weights and the same inputs:

* ``backbone``: the ViT alone (``model.backbone.net``) on the padded, normalised image
  tensor the whole model would feed it;
* ``model``: the whole network, ``model([{"image": ..., "height": S, "width": S}])``
  (preprocessing, backbone, feature pyramid, RPN, box and mask heads, postprocessing).

Variants (all share the model object; only the PrunedViT's pruning switches change):

* ``dense``: the reference. The gates are detached for this variant, so every block runs
  Detectron2's own dense ``Block.forward``: exactly the dense ViTDet, no gate cost.
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

Timing: ``--warmup`` untimed rounds, then ``--repeats`` timed rounds; each round runs
every variant once (backbone, then whole model), the order rotated every round so that
slow drift (thermal, other processes) spreads over all variants. Figures are medians of
wall-clock time; on a CPU also of the process's CPU time (``time.process_time``, all
threads), which other processes on a shared machine disturb much less. ``--threads N``
sets ``torch.set_num_threads``: on a busy shared machine ``--threads 1`` gives stable
figures. On CUDA every timed call is bracketed by ``torch.cuda.synchronize()``.

Predicted speedup: multiply-accumulates of the backbone counted analytically per block
from the kept tokens of the measured forward (:func:`backbone_macs`): q/k/v, output
projection and MLP linear in the tokens, attention quadratic per attention group (the kept
tokens of an image for a global block, of a window for a windowed block), decomposed
relative positions linear, the gates on all tokens, the patch embedding on all tokens.
The dense count follows Detectron2's dense block (windowed blocks attend over padded
windows). Reported as dense MACs / variant MACs, next to the measured speedup and their
ratio (``measured_over_predicted``).

Peak memory (``--memory``): the extra memory one forward needs over what is allocated
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

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .cli import (atomic_write_bytes, atomic_write_json, atomic_write_text, build_eval_model,
                  figure_png, load_tool_config, make_output_dir, run_tool, tool_parser)
from .errors import CheckpointError, ConfigError, InputError

__all__ = ["BackboneSpec", "attention_groups", "block_macs", "backbone_macs", "main"]

PROG = "tokenprune.benchmark"
_PROBE_TAG = "TOKENPRUNE_MEMORY_PROBE "
_MIB = 1024.0 ** 2


# --------------------------------------------------------------------------- analytic MACs
@dataclass
class BackboneSpec:
    """What the MAC count of a ViTDet backbone depends on (one image).

    Attributes:
        grid: (H, W) token grid.
        embed_dim: C. mlp_hidden: hidden width of the blocks' MLP.
        patch_macs: MACs of the patch embedding per token (in_chans * p * p * C).
        window_sizes: per block, 0 for global attention.
        use_rel_pos: per block, decomposed relative positions on/off.
        residual_macs: per block, MACs per token of its residual conv block (0 if none).
        gate_macs: {block: MACs per token of its gate's linear layers}.
    """

    grid: Tuple[int, int]
    embed_dim: int
    mlp_hidden: int
    patch_macs: int
    window_sizes: List[int]
    use_rel_pos: List[bool]
    residual_macs: List[int] = field(default_factory=list)
    gate_macs: Dict[int, int] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return len(self.window_sizes)

    @classmethod
    def from_vit(cls, vit: nn.Module, grid: Tuple[int, int],
                 guidance: Optional[torch.Tensor] = None) -> "BackboneSpec":
        """The spec of a (Pruned)ViT on a ``grid`` of tokens; ``guidance`` (1, D) is what
        guided gates receive (their MACs are counted by fvcore on one image)."""
        proj = vit.patch_embed.proj
        kh, kw = proj.kernel_size
        blocks = list(vit.blocks)
        residual = []
        for blk in blocks:
            macs = 0
            if getattr(blk, "use_residual_block", False):
                for conv in blk.residual.modules():
                    if isinstance(conv, nn.Conv2d):
                        k = conv.kernel_size[0] * conv.kernel_size[1]
                        macs += conv.in_channels * conv.out_channels * k // conv.groups
            residual.append(macs)
        gates = getattr(vit, "gates", {})
        return cls(
            grid=(int(grid[0]), int(grid[1])),
            embed_dim=int(proj.out_channels),
            mlp_hidden=int(blocks[0].mlp.fc1.out_features),
            patch_macs=int(proj.in_channels * kh * kw * proj.out_channels // proj.groups),
            window_sizes=[int(blk.window_size) for blk in blocks],
            use_rel_pos=[bool(blk.attn.use_rel_pos) for blk in blocks],
            residual_macs=residual,
            gate_macs={int(i): _gate_macs_per_token(g, int(proj.out_channels), grid, guidance)
                       for i, g in gates.items()},
        )


_MLP_PARTS = (nn.Linear, nn.LayerNorm, nn.GELU, nn.ReLU, nn.SiLU, nn.Identity, nn.Dropout,
              nn.Sequential, nn.ModuleList)


def _gate_macs_per_token(gate: nn.Module, dim: int, grid: Tuple[int, int],
                         guidance: Optional[torch.Tensor]) -> int:
    """MACs per token of a gate: exact for per-token MLP gates (their linear layers); for
    other gates (guided pruning decoders) fvcore's count on one image, divided by N."""
    if all(isinstance(m, _MLP_PARTS) for m in gate.modules() if m is not gate):
        return sum(m.in_features * m.out_features for m in gate.modules()
                   if isinstance(m, nn.Linear))
    from fvcore.nn import FlopCountAnalysis

    n = grid[0] * grid[1]
    p = next(gate.parameters())
    x = torch.zeros(1, n, dim, device=p.device, dtype=p.dtype)
    g = None if guidance is None else guidance[:1].to(p.device)
    flops = FlopCountAnalysis(gate, (x, g))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    with torch.no_grad():
        return int(round(flops.total() / n))


def attention_groups(spec: BackboneSpec, block: int,
                     keep: Optional[torch.Tensor]) -> Tuple[List[int], int, int]:
    """Attention groups of ``block`` for one image.

    Returns (sizes of the groups, tokens through q/k/v and projection, tokens through the
    MLP). ``keep``: (H*W) bool, or None / all True for the dense block (windowed blocks
    then attend over padded windows, as Detectron2 computes them).
    """
    H, W = spec.grid
    N = H * W
    ws = spec.window_sizes[block]
    if keep is None or bool(keep.all()):
        if not ws:
            return [N], N, N
        hp, wp = -(-H // ws) * ws, -(-W // ws) * ws
        return [ws * ws] * (hp * wp // (ws * ws)), hp * wp, N
    keep = keep.reshape(-1).bool().cpu()
    kept = int(keep.sum())
    if not ws:
        return [kept], kept, kept
    rows = torch.arange(H).repeat_interleave(W)
    cols = torch.arange(W).repeat(H)
    win = (rows // ws) * (-(-W // ws)) + cols // ws
    counts = torch.bincount(win[keep])
    return [int(c) for c in counts if c > 0], kept, kept


def block_macs(spec: BackboneSpec, block: int, keep: Optional[torch.Tensor] = None) -> int:
    """Multiply-accumulates of one block for one image (dense if ``keep`` is None)."""
    C, H, W = spec.embed_dim, *spec.grid
    groups, attn_tokens, mlp_tokens = attention_groups(spec, block, keep)
    ws = spec.window_sizes[block]
    fh, fw = (ws, ws) if ws else (H, W)
    macs = attn_tokens * 4 * C * C  # qkv (3 C^2) and output projection (C^2)
    macs += sum(g * g for g in groups) * 2 * C  # q @ k^T and attn @ v, per group
    if spec.use_rel_pos[block]:
        macs += attn_tokens * (fh + fw) * C  # query . relative embeddings (rows, cols)
    macs += mlp_tokens * 2 * C * spec.mlp_hidden
    if spec.residual_macs:
        macs += H * W * spec.residual_macs[block]
    return macs


def backbone_macs(spec: BackboneSpec, keep_masks: Optional[Dict[int, torch.Tensor]] = None,
                  gates: bool = True) -> int:
    """MACs of the backbone for one image: patch embedding, blocks, and (``gates``) every
    gate of ``spec.gate_macs`` on all tokens. ``keep_masks``: {block: (H*W) bool kept}."""
    keep_masks = keep_masks or {}
    N = spec.grid[0] * spec.grid[1]
    total = N * spec.patch_macs
    total += sum(block_macs(spec, i, keep_masks.get(i)) for i in range(spec.depth))
    if gates:
        total += N * sum(spec.gate_macs.values())
    return total


def _uniform_curve(spec: BackboneSpec, pruned: Sequence[int],
                   ratios: Sequence[float]) -> List[float]:
    """Predicted speedup of forcing ``r`` on every pruned block, kept tokens spread evenly."""
    H, W = spec.grid
    dense = backbone_macs(spec, gates=False)
    out = []
    for r in ratios:
        masks = {}
        for i in pruned:
            ws = spec.window_sizes[i] or max(H, W)
            keep = torch.zeros(H, W, dtype=torch.bool)
            # keep the first ceil(r * n) tokens (raster order) of every window / the image
            for y0 in range(0, H, ws):
                for x0 in range(0, W, ws):
                    h, w = min(ws, H - y0), min(ws, W - x0)
                    flat = torch.zeros(h * w, dtype=torch.bool)
                    flat[:min(h * w, max(1, math.ceil(r * h * w - 1e-6)))] = True
                    keep[y0:y0 + h, x0:x0 + w] = flat.view(h, w)
            masks[i] = keep.view(-1)
        out.append(dense / backbone_macs(spec, masks))
    return out


# --------------------------------------------------------------------------- variants
@dataclass
class Variant:
    key: str  # "dense", "keep0.7", "svit", "gates"
    name: str
    fixed: Optional[Dict[int, float]]  # forced rate per pruned block; None: the gates decide
    gates_off: bool = False


@contextlib.contextmanager
def _applied(vit, variant: Variant) -> Iterator[None]:
    saved = (vit.fixed_keep_ratio, vit.dynamic, vit.gates)
    try:
        if variant.gates_off:
            vit.gates = nn.ModuleDict()
        vit.fixed_keep_ratio = variant.fixed
        vit.dynamic = True
        yield
    finally:
        vit.fixed_keep_ratio, vit.dynamic = saved[0], saved[1]
        vit.gates = saved[2]


def _variants(args, vit, has_trained_gates: bool) -> List[Variant]:
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


# --------------------------------------------------------------------------- set-up
def _check_args(args) -> None:
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


def _prepare_config(args):
    """Config with the benchmark's changes; returns (cfg, converted_from_dense, input_size)."""
    from detectron2.modeling.backbone.vit import ViT
    from detectron2.utils.registry import locate

    from .modeling import PrunedViT, svit_schedule

    cfg = load_tool_config(args, need_data=False)
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
    from .modeling import find_pruned_vit

    torch.manual_seed(0)  # random weights: identical in every process
    try:
        model = build_eval_model(cfg, device)
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
        with vit.guided(guidance) if guidance is not None else contextlib.nullcontext():
            return vit(x)

    return {"backbone": backbone, "model": lambda: model(batched)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- measuring
def _time_all(variants, vit, runners, scopes, args) -> Tuple[dict, dict, dict, dict]:
    from tqdm import tqdm

    times = {(v.key, s): [] for v in variants for s in scopes}
    cpu_times = {(v.key, s): [] for v in variants for s in scopes}
    masks, ratios = {}, {}
    rounds = args.warmup + args.repeats
    with tqdm(total=rounds * len(variants) * len(scopes), desc=PROG, unit="run",
              file=sys.stderr, dynamic_ncols=True) as bar, torch.no_grad():
        for r in range(rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                with _applied(vit, v):
                    for s in scopes:
                        bar.set_postfix_str(f"{v.name} / {s}", refresh=False)
                        _sync(args.device)
                        c0, t0 = time.process_time(), time.perf_counter()
                        runners[s]()
                        _sync(args.device)
                        dt = time.perf_counter() - t0
                        dc = time.process_time() - c0
                        if r >= args.warmup:
                            times[(v.key, s)].append(dt)
                            cpu_times[(v.key, s)].append(dc)
                        if s == "backbone" and v.key not in masks:
                            masks[v.key] = {i: m.detach().cpu()
                                            for i, m in vit.last_keep_masks.items()}
                            ratios[v.key] = {i: float(t.float().mean())
                                             for i, t in vit.last_keep_ratios.items()}
                        bar.update()
    return times, cpu_times, masks, ratios


def _tensor_peak(fn: Callable[[], object], device: str) -> float:
    """Peak live tensor memory (MiB) during ``fn()`` above the live memory before it."""
    if device.startswith("cuda"):
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / _MIB
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak / _MIB


def _tensor_peaks(variants, vit, runners, scopes, device) -> Dict[str, Dict[str, float]]:
    out = {}
    with torch.no_grad():
        for v in variants:
            with _applied(vit, v):
                out[v.key] = {s: _tensor_peak(runners[s], device) for s in scopes}
    return out


def _proc_status() -> Dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory_probe(args) -> None:
    """Child process: one variant's peak memory, printed as one tagged JSON line."""
    cfg, converted, size = _prepare_config(args)
    model, vit = _build(cfg, args.device)
    variants = _variants(args, vit, args.weights == "checkpoint" and not converted)
    (variant,) = [v for v in variants if v.key == args.memory_probe]
    batched, x, guidance = _inputs(model, size, args.batch_size, args.prompt, args.task_id)
    runners = _runners(model, vit, x, batched, guidance)
    scopes = ["backbone"] if args.backbone_only else ["backbone", "model"]
    result = {}
    gc.collect()
    with torch.no_grad(), _applied(vit, variant):
        if _reset_hwm():
            method = "VmHWM"
            base = _proc_status()["VmRSS"]
            for s in scopes:
                _reset_hwm()
                runners[s]()
                result[s] = (_proc_status()["VmHWM"] - base) / _MIB
        else:  # no /proc/self/clear_refs: lifetime maximum, correct only if it grows
            import resource

            method = "ru_maxrss"
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            for s in scopes:
                runners[s]()
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                result[s] = max(0, peak - base) / _MIB
    print(_PROBE_TAG + json.dumps({"method": method, "peaks": result}), flush=True)


def _cpu_peaks(args, variants) -> Tuple[Dict[str, Dict[str, float]], str]:
    import tokenprune

    out, method = {}, ""
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(tokenprune.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    for v in variants:
        cmd = [sys.executable, "-m", "tokenprune.benchmark", "--config-file", args.config_file,
               "--threads", str(torch.get_num_threads()),
               "--device", args.device, "--batch-size", str(args.batch_size),
               "--input-size", str(args.input_size), "--weights", args.weights,
               "--memory", "rss", "--memory-probe", v.key]
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
        cmd += ["--", *args.opts]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_PROBE_TAG)]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory probe for {v.name} failed (exit {proc.returncode}):\n"
                               + proc.stderr[-3000:])
        res = json.loads(lines[-1][len(_PROBE_TAG):])
        out[v.key], method = res["peaks"], res["method"]
    return out, method


# --------------------------------------------------------------------------- profiling
@contextlib.contextmanager
def _profiling_labels(vit) -> Iterator[None]:
    """Label the pruning machinery's pieces as ``tp::...`` ranges for torch.profiler."""
    from torch.profiler import record_function

    from .modeling import pruned_vit, sparse_block

    def labelled(name, fn):
        def wrapper(*a, **k):
            with record_function(name):
                return fn(*a, **k)
        return wrapper

    patches = [
        (sparse_block, "add_rel_pos_bias_", "tp::rel_pos_bias"),
        (sparse_block, "group_kept_tokens", "tp::group_kept_tokens"),
        (sparse_block.TokenGroups, "pack", "tp::pack"),
        (sparse_block.TokenGroups, "unpack", "tp::unpack"),
        (pruned_vit, "run_block_gathered", "tp::gathered_block"),
    ]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    instance = []
    try:
        for obj, attr, label in patches:
            setattr(obj, attr, labelled(label, getattr(obj, attr)))
        for blk in vit.blocks:
            instance.append(blk)
            blk.forward = labelled("tp::dense_block", blk.forward)
        for g in vit.gates.values():
            instance.append(g)
            g.forward = labelled("tp::gate", g.forward)
        yield
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)
        for m in instance:
            del m.forward


def _profile(variants, vit, runners) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    labels = ["tp::gate", "tp::group_kept_tokens", "tp::pack", "tp::unpack",
              "tp::rel_pos_bias", "tp::gathered_block", "tp::dense_block"]
    parts = ["# Profile of one backbone forward per variant\n",
             "Inclusive CPU time inside the labelled pieces (ms), then the operators with "
             "the most self CPU time.\n"]
    with torch.no_grad(), _profiling_labels(vit):
        for v in variants:
            with _applied(vit, v):
                runners["backbone"]()  # warm
                with profile(activities=activities) as prof:
                    t0 = time.perf_counter()
                    runners["backbone"]()
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


# --------------------------------------------------------------------------- reporting
def _ratio_summary(ratios: Dict[int, float]) -> str:
    """{3: 0.7, 4: 0.7, 5: 0.49} -> '3-4: 0.7, 5: 0.49'."""
    if not ratios:
        return "all 1"
    runs: List[List] = []
    for i in sorted(ratios):
        r = round(ratios[i], 3)
        if runs and runs[-1][2] == r and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i, r])
    return ", ".join(f"{a}{'' if a == b else f'-{b}'}: {r:g}" for a, b, r in runs)


def _fmt(x, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def _markdown(res: dict) -> str:
    lines = [
        "# TokenPrune benchmark\n",
        f"- config: `{res['config_file']}` {' '.join(res['overrides'])}",
        f"- device: {res['device']} ({res['device_name']}), torch threads {res['torch_threads']}",
        f"- input: {res['batch_size']} x {res['input_size']}x{res['input_size']} "
        f"(backbone input {res['backbone_input_hw'][0]}x{res['backbone_input_hw'][1]}, "
        f"token grid {res['token_grid'][0]}x{res['token_grid'][1]})",
        f"- weights: {res['weights']}; warm-up rounds {res['warmup']}, timed rounds "
        f"{res['repeats']} (medians, variants interleaved)",
        f"- peak memory: {res['memory_method']}",
        "- speedups: medians of wall-clock time; on a CPU also of this process's CPU time "
        "(all threads), which is less sensitive to other processes on a shared machine",
    ]
    lines += [f"- note: {n}" for n in res["notes"]]
    lines += [
        "",
        "| variant | keep ratios (block: kept fraction) | mean keep | backbone ms | "
        "backbone speedup | predicted speedup | measured / predicted | whole-model ms | "
        "whole-model speedup | peak memory MiB (backbone / whole) | "
        "CPU-time speedup (backbone / whole) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in res["variants"]:
        b, m, mem = v["backbone"], v.get("model"), v.get("peak_memory_mib")
        mem_s = "n/a" if not mem else " / ".join(_fmt(mem.get(s), ".0f")
                                                  for s in ("backbone", "model") if s in mem)
        lines.append(
            f"| {v['name']} | {_ratio_summary(v['keep_ratios'])} | {v['mean_keep_ratio']:.3f} "
            f"| {b['median_ms']:.1f} | {b['speedup']:.2f}x | {b['predicted_speedup']:.2f}x "
            f"| {b['measured_over_predicted']:.2f} "
            f"| {_fmt(m and m['median_ms'])} | {_fmt(m and m['speedup'], '.2f', 'x')} "
            f"| {mem_s} | {_fmt(b['cpu_time_speedup'], '.2f', 'x')} / "
            f"{_fmt(m and m['cpu_time_speedup'], '.2f', 'x')} |")
    return "\n".join(lines) + "\n"


def _plot(res: dict, curve: Tuple[List[float], List[float]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    xs, ys = curve
    ax.plot(xs, ys, "-", color="0.6", label="FLOP-predicted, uniform keep ratio")
    vs = res["variants"]
    ax.plot([v["mean_keep_ratio"] for v in vs],
            [v["backbone"]["predicted_speedup"] for v in vs], "x", color="0.3", ms=8,
            label="FLOP-predicted, measured variants")
    ax.plot([v["mean_keep_ratio"] for v in vs], [v["backbone"]["speedup"] for v in vs], "o",
            color="tab:blue", label="backbone, measured")
    if all(v.get("model") for v in vs):
        ax.plot([v["mean_keep_ratio"] for v in vs], [v["model"]["speedup"] for v in vs], "s",
                color="tab:orange", label="whole model, measured")
    for v in vs:
        ax.annotate(v["name"], (v["mean_keep_ratio"], v["backbone"]["speedup"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(1.0, color="0.85", lw=0.8)
    ax.set_xlabel("mean keep ratio of the pruned blocks")
    ax.set_ylabel("speedup over dense")
    ax.set_title(f"{os.path.basename(res['config_file'])}: {res['device']}, "
                 f"{res['batch_size']}x{res['input_size']}px", fontsize=9)
    ax.set_xlim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__.split("\n\n")[0])
    parser.add_argument("--keep-ratios", type=float, nargs="+", metavar="R",
                        help="forced keep ratios, one variant each, in (0, 1]")
    parser.add_argument("--schedule", choices=["svit"], default=None,
                        help="also force the config's per-block target keep ratios")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--input-size", type=int, default=None, metavar="S",
                        help="square input side in pixels (default: the model's square_pad)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch.set_num_threads(N) (default: PyTorch's choice)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--weights", choices=["random", "checkpoint"], default="random",
                        help="random (seeded) weights or train.init_checkpoint")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="default: <train.output_dir>/benchmark")
    parser.add_argument("--backbone-only", action="store_true",
                        help="time the ViT backbone only, not the whole model")
    parser.add_argument("--memory", choices=["tensors", "rss", "off"], default="tensors",
                        help="peak memory: live tensors (default), resident set in a fresh "
                             "process per variant (CPU), or off")
    parser.add_argument("--profile", action="store_true",
                        help="also write profile.md (torch.profiler, one forward per variant)")
    parser.add_argument("--prompt", default=None, help="input 'prompt' (task-guided models)")
    parser.add_argument("--task-id", type=int, default=None, help="input 'task_id'")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    return parser


def main(args: argparse.Namespace) -> dict:
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quiet torch.profiler's C++ logging
    _check_args(args)
    if args.keep_ratios is None and args.schedule is None:
        args.schedule = "svit"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        return _memory_probe(args)
    cfg, converted, size = _prepare_config(args)
    args.input_size = size
    out_dir = make_output_dir(args.output or os.path.join(cfg.train.output_dir, "benchmark"))
    model, vit = _build(cfg, args.device)
    variants = _variants(args, vit, args.weights == "checkpoint" and not converted)
    batched, x, guidance = _inputs(model, size, args.batch_size, args.prompt, args.task_id)
    runners = _runners(model, vit, x, batched, guidance)
    scopes = ["backbone"] if args.backbone_only else ["backbone", "model"]

    times, cpu_times, masks, ratios = _time_all(variants, vit, runners, scopes, args)
    grid = (x.shape[-2] // vit.patch_embed.proj.stride[0],
            x.shape[-1] // vit.patch_embed.proj.stride[1])
    spec = BackboneSpec.from_vit(vit, grid, guidance)
    dense_macs = backbone_macs(spec, gates=False)

    notes = []
    if converted:
        notes.append("dense config: backbone converted in memory to a PrunedViT with SViT's "
                     "schedule (random gates; forced keep ratios only)")
    if args.weights == "random":
        notes.append("random weights (seeded): forced-rate timings do not depend on weights; "
                     "learned-gate variant needs --weights checkpoint")
    notes.append("box predictors' score threshold set to 0: the heads process "
                 "test_topk_per_image detections per image in every variant")
    if args.memory == "off":
        mem, method = {}, "not measured (--memory off)"
    elif args.memory == "tensors" and args.device.startswith("cuda"):
        mem = _tensor_peaks(variants, vit, runners, scopes, args.device)
        method = ("CUDA tensors: torch.cuda.max_memory_allocated() during one forward minus "
                  "memory_allocated() before it")
    elif args.memory == "tensors":
        mem = _tensor_peaks(variants, vit, runners, scopes, args.device)
        method = ("CPU tensors: peak of live tensor memory during one forward (torch.profiler "
                  "allocation records) minus the live memory before it")
    else:
        mem, how = _cpu_peaks(args, variants)
        method = ("CPU: resident-set high-water mark during the first forward in a fresh "
                  "process per variant, minus the resident set before it"
                  + (" (VmHWM reset via /proc/self/clear_refs)" if how == "VmHWM"
                     else " (ru_maxrss delta: a lower bound)"))

    ms = {k: 1e3 * statistics.median(t) for k, t in times.items()}
    cpu_ms = {k: 1e3 * statistics.median(t) for k, t in cpu_times.items()}
    on_cpu = args.device == "cpu"
    rows = []
    for v in variants:
        per_image = [backbone_macs(spec, {i: m[b] for i, m in masks[v.key].items()},
                                   gates=not v.gates_off) for b in range(args.batch_size)]
        predicted = dense_macs * args.batch_size / sum(per_image)
        kr = ratios[v.key]
        b_ms = ms[(v.key, "backbone")]
        measured = ms[("dense", "backbone")] / b_ms
        row = {
            "key": v.key, "name": v.name,
            "forced_keep_ratios": None if v.fixed is None else {str(i): r for i, r in
                                                                v.fixed.items()},
            "keep_ratios": {str(i): r for i, r in kr.items()},
            "mean_keep_ratio": statistics.fmean(kr.values()) if kr else 1.0,
            "backbone": {
                "median_ms": b_ms,
                "times_ms": [1e3 * t for t in times[(v.key, "backbone")]],
                "throughput_img_s": args.batch_size / (b_ms / 1e3),
                "speedup": measured,
                "cpu_time_median_ms": cpu_ms[(v.key, "backbone")] if on_cpu else None,
                "cpu_time_speedup": (cpu_ms[("dense", "backbone")] / cpu_ms[(v.key, "backbone")]
                                     if on_cpu else None),
                "predicted_gmacs_per_image": statistics.fmean(per_image) / 1e9,
                "predicted_speedup": predicted,
                "measured_over_predicted": measured / predicted,
            },
            "model": None,
            "peak_memory_mib": mem.get(v.key),
        }
        if "model" in scopes:
            m_ms = ms[(v.key, "model")]
            row["model"] = {
                "median_ms": m_ms, "times_ms": [1e3 * t for t in times[(v.key, "model")]],
                "throughput_img_s": args.batch_size / (m_ms / 1e3),
                "speedup": ms[("dense", "model")] / m_ms,
                "cpu_time_median_ms": cpu_ms[(v.key, "model")] if on_cpu else None,
                "cpu_time_speedup": (cpu_ms[("dense", "model")] / cpu_ms[(v.key, "model")]
                                     if on_cpu else None),
            }
        rows.append(row)
    for r in rows:  # keep_ratios keys are block indices as strings (JSON); md wants ints
        r["keep_ratios"] = {int(k): v for k, v in r["keep_ratios"].items()}

    res = {
        "tool": PROG, "config_file": args.config_file, "overrides": list(args.opts),
        "device": args.device,
        "device_name": (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                        else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "input_size": size, "backbone_input_hw": list(x.shape[-2:]), "token_grid": list(grid),
        "batch_size": args.batch_size, "repeats": args.repeats, "warmup": args.warmup,
        "weights": "random (seed 0)" if args.weights == "random" else cfg.train.init_checkpoint,
        "converted_from_dense": converted,
        "pruned_blocks": list(vit.pruned_blocks),
        "window_blocks": [i for i, ws in enumerate(spec.window_sizes) if ws],
        "dense_backbone_gmacs_per_image": dense_macs / 1e9,
        "memory_method": method, "notes": notes, "variants": rows,
    }
    curve_x = [i / 20 for i in range(2, 21)]
    curve = (curve_x, _uniform_curve(spec, vit.pruned_blocks, curve_x))
    png = _plot(res, curve)
    md = _markdown(res)
    profile_md = _profile(variants, vit, runners) if args.profile else None
    for r in rows:
        r["keep_ratios"] = {str(k): v for k, v in r["keep_ratios"].items()}

    # every output is complete before it appears; results.json last (it marks completion)
    if profile_md is not None:
        atomic_write_text(os.path.join(out_dir, "profile.md"), profile_md)
    atomic_write_bytes(os.path.join(out_dir, "speedup.png"), png)
    atomic_write_text(os.path.join(out_dir, "results.md"), md)
    atomic_write_json(os.path.join(out_dir, "results.json"), res)
    print(md)
    print(f"{PROG}: wrote {out_dir}/results.json, results.md, speedup.png"
          + (", profile.md" if profile_md else ""), flush=True)
    return res


if __name__ == "__main__":
    run_tool(PROG, main, build_parser())
