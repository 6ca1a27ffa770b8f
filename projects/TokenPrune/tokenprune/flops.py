"""FLOPs of a Detectron2 model (dense or token-pruned) counted with fvcore.

    python -m tokenprune.flops --config-file CFG [--num-inputs N] [--depth D]
                               [--output FILE.json] [key=value ...]

Counting convention (fvcore's): **one fused multiply-add is one flop**, so a linear layer
``(n, c_in) -> (n, c_out)`` costs ``n * c_in * c_out`` flops. Figures are the mean over
the analysed inputs; every input is traced on its own because dynamic pruning keeps a
different number of tokens per image, and a trace records that input's actual shapes.

Three separate figures, so that the headline stays comparable with Detectron2:

* **flops** (the headline: ``total``, ``backbone``, ``neck``, ``heads``): fvcore's default
  operator handles (conv, linear, matmul, bmm, einsum, layer/group/batch norm, upsampling,
  ...) with Detectron2's list of ignored operators -- exactly what
  :class:`detectron2.utils.analysis.FlopCountAnalysis` counts, so a dense model's total
  equals Detectron2's. fvcore already counts ``matmul`` / ``bmm`` (also on the packed sets
  of kept tokens), ``layer_norm`` (5 per element), ``upsample_bilinear2d`` (4 per output
  element) and transposed convolutions (``aten::_convolution``).
* **extra**: element-wise arithmetic that fvcore and Detectron2 leave out, counted by this
  module's own handles on floating-point tensors only (integer index bookkeeping costs
  nothing here): softmax / log-softmax 3 per element (exp, sum, normalise); GELU, SiLU,
  sigmoid, tanh, exp, log, sqrt, rsqrt, erf 1 per element; add, sub, mul, div, neg, pow,
  reciprocal 1 per output element; mean and sum 1 per input element; linear
  interpolation (``upsample_linear1d``, used to resize relative-position tables) 2 per
  output element.
* **moves**: data movement is not arithmetic and counts as 0 flops; the elements moved by
  gather, scatter, index_select, index_copy, index_put and advanced indexing are reported
  separately as "element moves" (the cost of SViT's gather / scatter of kept tokens).

Operators that none of these handles counts (e.g. ``topk``, ``torchvision::roi_align``,
calls of scripted functions) are listed as uncounted.

Per-module attribution: the gathered execution of a pruned block
(:func:`tokenprune.modeling.sparse_block.run_block_gathered`) does not call the block
module, so fvcore would put its attention products under the ViT itself; during counting
those calls are scoped to their block, which makes the per-block rows complete.

For a config whose backbone is a PrunedViT the tool prints two columns: the model as
configured (gates included, also a gate that keeps every token) and ``keep all``
(``fixed_keep_ratio`` = 1.0 in every pruned block, gates not counted: the dense ViT's
cost); ``backbone_ratio`` in the JSON report is the first over the second.
"""
from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import warnings
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .errors import InputError

__all__ = ["FlopCounts", "count_model_flops", "flop_analysis", "block_flops", "flops_table",
           "split_operators", "EXTRA_HANDLES", "main"]

PROG = "python -m tokenprune.flops"
EXTRA_PREFIX = "extra:"
MOVES_PREFIX = "moves:"
_ADAPTER_ROOT = "model"  # Detectron2's TracingAdapter holds the analysed model as ``.model``


# --------------------------------------------------------------------------- op handles

def _shape(value) -> Optional[List[int]]:
    """Shape of a traced value, None when it is not a tensor of known shape."""
    try:
        if value.isCompleteTensor():
            return list(value.type().sizes())
    except RuntimeError:
        pass
    return None


def _numel(value) -> int:
    shape = _shape(value)
    return int(math.prod(shape)) if shape is not None else 0


def _is_floating(value) -> bool:
    try:
        scalar = value.type().scalarType()
    except (RuntimeError, AttributeError):
        return False
    return scalar in ("Float", "Double", "Half", "BFloat16")


def _elementwise(name: str, per_element: float, use_input: bool = False) -> Callable:
    """Handle: ``per_element`` flops per output (or input) element of a float op."""

    def handle(inputs, outputs) -> Counter:
        value = inputs[0] if use_input else outputs[0]
        if not _is_floating(outputs[0]):
            return Counter()
        return Counter({EXTRA_PREFIX + name: per_element * _numel(value)})

    return handle


def _moves_read(name: str) -> Callable:
    """Handle for gathers (gather, index_select, advanced indexing): output elements."""

    def handle(inputs, outputs) -> Counter:
        return Counter({MOVES_PREFIX + name: _numel(outputs[0])})

    return handle


def _moves_write(name: str, source_arg: int) -> Callable:
    """Handle for scatters (scatter, index_copy): elements of the source (or index)."""

    def handle(inputs, outputs) -> Counter:
        moved = _numel(inputs[source_arg]) if len(inputs) > source_arg else 0
        if moved <= 1 and len(inputs) > 2:  # a scalar value: one element per index
            moved = _numel(inputs[2])
        return Counter({MOVES_PREFIX + name: moved})

    return handle


def _index_put(inputs, outputs) -> Counter:
    """``x[idx] = v``: the elements of ``v``, or of the (first) index for a scalar ``v``."""
    moved = _numel(inputs[2]) if len(inputs) > 2 else 0
    if moved <= 1:
        try:
            index_values = list(inputs[1].node().inputs())
        except RuntimeError:
            index_values = []
        moved = max([_numel(v) for v in index_values] + [moved])
    return Counter({MOVES_PREFIX + "index_put": moved})


def _build_extra_handles() -> Dict[str, Callable]:
    handles: Dict[str, Callable] = {}
    for op in ("softmax", "log_softmax", "_softmax", "_log_softmax"):
        handles[f"aten::{op}"] = _elementwise(op.lstrip("_"), 3, use_input=True)
    for op in ("gelu", "silu", "sigmoid", "sigmoid_", "tanh", "exp", "log", "sqrt", "rsqrt",
               "erf"):
        handles[f"aten::{op}"] = _elementwise(op.rstrip("_"), 1)
    for op in ("add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg",
               "pow", "reciprocal"):
        handles[f"aten::{op}"] = _elementwise(op.rstrip("_"), 1)
    for op in ("mean", "sum"):
        handles[f"aten::{op}"] = _elementwise(op, 1, use_input=True)
    handles["aten::upsample_linear1d"] = _elementwise("upsample_linear1d", 2)
    for op in ("gather", "index_select", "index", "masked_select", "take"):
        handles[f"aten::{op}"] = _moves_read(op)
    for op in ("scatter", "scatter_"):
        handles[f"aten::{op}"] = _moves_write("scatter", 3)
    for op in ("index_copy", "index_copy_"):
        handles[f"aten::{op}"] = _moves_write("index_copy", 3)
    handles["aten::index_put_"] = _index_put
    handles["aten::index_put"] = _index_put
    return handles


#: Operator handles added to Detectron2's FlopCountAnalysis; what they count is reported
#: apart from the headline flops (see the module docstring).
EXTRA_HANDLES: Dict[str, Callable] = _build_extra_handles()


def split_operators(counts: Dict[str, float]) -> Tuple[Counter, Counter, Counter]:
    """An fvcore per-operator counter -> (headline flops, extra flops, element moves)."""
    flops, extra, moves = Counter(), Counter(), Counter()
    for name, value in counts.items():
        if name.startswith(EXTRA_PREFIX):
            extra[name[len(EXTRA_PREFIX):]] += value
        elif name.startswith(MOVES_PREFIX):
            moves[name[len(MOVES_PREFIX):]] += value
        else:
            flops[name] += value
    return flops, extra, moves


# --------------------------------------------------------------------------- tracing

@contextmanager
def _tracer_paused() -> Iterator[None]:
    """Within the context, operators are not recorded by an active jit trace."""
    state = torch._C._get_tracing_state()
    if state is None:
        yield
        return
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def _floating(args: Sequence[Any]) -> List[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel()]


def _tie_to_inputs(keep: torch.Tensor, args: Sequence[Any]) -> torch.Tensor:
    """``keep`` with a traced data dependence on the floating-point tensors in ``args``.

    A result computed with the tracer paused is a constant of the trace, and the trace's
    dead-code elimination would then drop the gate that produced the scores. ``keep & True``
    through operators fvcore ignores (select, slice, full_like, and) keeps them alive.
    """
    if torch._C._get_tracing_state() is None or keep.dtype != torch.bool:
        return keep
    for a in _floating(args):
        keep = keep & torch.full_like(a.flatten()[:1], 1, dtype=torch.bool)
    return keep


def _tie_tensor(x: torch.Tensor, others: Sequence[torch.Tensor]) -> torch.Tensor:
    """``x`` unchanged, with a traced data dependence on ``others`` (ignored operators only:
    flatten, slice, to, cat, view)."""
    empty = [o.flatten()[:0].to(x.dtype) for o in others]
    return torch.cat([x.flatten(), *empty]).view(x.shape)


def _scoped_to_block(fn: Callable, names: Dict[int, str]) -> Callable:
    """Wrap ``fn(block, ...)`` so that its traced operators belong to ``block``'s scope."""

    @functools.wraps(fn)
    def wrapper(block, *args, **kwargs):
        state = torch._C._get_tracing_state()
        name = names.get(id(block))
        if state is None or name is None:
            return fn(block, *args, **kwargs)
        state.push_scope(name)
        try:
            return fn(block, *args, **kwargs)
        finally:
            state.pop_scope()

    return wrapper


@contextmanager
def _counting_mode(model: nn.Module, scope_prefix: str, idle_gates: bool = True) -> Iterator[None]:
    """Make every PrunedViT in ``model`` traceable and its pruned blocks attributable.

    * The keep decision (top-k / threshold on the gate scores) runs with the tracer
      paused: the trace takes the decision as a constant, which is what a per-input trace
      means. (Tracing ``Tensor.scatter_(dim, index, True)`` with a Python bool fails in
      PyTorch's alias analysis.) The gates themselves are traced and counted
      (:func:`_tie_to_inputs`).
    * A gate whose decision keeps every token does not change the result (the block runs
      densely), so the trace would drop it; with ``idle_gates`` its scores are tied to the
      block's input so that it is counted, as it runs. Without, it is left out (the
      keep-all reference: the dense ViT's cost).
    * ``run_block_gathered`` / ``run_block_masked`` calls are scoped to their block.
    """
    from .modeling import pruned_vit as pv_module
    from .modeling.pruned_vit import PrunedViT

    vits = [m for m in model.modules() if isinstance(m, PrunedViT)]
    if not vits:
        yield
        return
    names = {id(m): f"{scope_prefix}.{n}" if n else scope_prefix
             for n, m in model.named_modules()}
    with ExitStack() as stack:
        for fn_name in ("run_block_gathered", "run_block_masked"):
            original = getattr(pv_module, fn_name, None)
            if original is None:
                continue
            setattr(pv_module, fn_name, _scoped_to_block(original, names))
            stack.callback(setattr, pv_module, fn_name, original)
        for vit in vits:
            decide = getattr(vit, "_inference_decision", None)
            if decide is None:
                continue
            pending: Dict[str, List[torch.Tensor]] = {}

            def paused(*args, _decide=decide, _pending=pending, **kwargs):
                with _tracer_paused():
                    keep = _decide(*args, **kwargs)
                    all_kept = keep.dtype == torch.bool and bool(keep.all())
                if idle_gates and all_kept and torch._C._get_tracing_state() is not None:
                    _pending["scores"] = _floating(args)
                return _tie_to_inputs(keep, args)

            def tie_idle_gate(module, inputs, _pending=pending):
                scores = _pending.pop("scores", None)
                if not scores or torch._C._get_tracing_state() is None or not inputs:
                    return None
                return (_tie_tensor(inputs[0], scores), *inputs[1:])

            vit.__dict__["_inference_decision"] = paused
            stack.callback(vit.__dict__.pop, "_inference_decision", None)
            for i in getattr(vit, "pruned_blocks", ()):
                handle = vit.blocks[i].register_forward_pre_hook(tie_idle_gate)
                stack.callback(handle.remove)
        yield


@contextmanager
def _keep_every_token(model: nn.Module) -> Iterator[None]:
    """Temporarily set ``fixed_keep_ratio`` to 1.0 for every pruned block of every PrunedViT."""
    from .modeling.pruned_vit import PrunedViT

    saved = []
    for vit in (m for m in model.modules() if isinstance(m, PrunedViT)):
        saved.append((vit, vit.fixed_keep_ratio))
        vit.fixed_keep_ratio = {i: 1.0 for i in vit.pruned_blocks}
    try:
        yield
    finally:
        for vit, value in saved:
            vit.fixed_keep_ratio = value


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def flop_analysis(model: nn.Module, inputs: Any, idle_gates: bool = True):
    """Detectron2's FlopCountAnalysis of ``model(inputs)`` plus :data:`EXTRA_HANDLES`, traced.

    ``inputs`` is what the model is called with (``list[dict]`` for a Detectron2 model, a
    tensor for a plain module). Module names in the result carry the prefix ``model.``
    (Detectron2's TracingAdapter). The trace is run here, while PrunedViTs are in counting
    mode; split the per-operator counters with :func:`split_operators`. ``idle_gates``:
    count gates whose decision keeps every token (see :func:`_counting_mode`).
    """
    from detectron2.utils.analysis import FlopCountAnalysis

    model = _unwrap(model)
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.no_grad(), _counting_mode(model, _ADAPTER_ROOT, idle_gates):
        analysis.total()  # runs (and caches) the trace
    return analysis


# --------------------------------------------------------------------------- counting

@dataclass
class FlopCounts:
    """FLOPs of a model, the mean over the analysed inputs (fvcore: 1 multiply-add = 1 flop).

    ``total``, ``backbone`` (the ViT, ``model.backbone.net``), ``neck`` (the rest of
    ``model.backbone``: the SimpleFeaturePyramid), ``heads`` (proposal generator and ROI
    heads) and ``other`` (the rest: pre- and post-processing) are the headline flops with
    fvcore's / Detectron2's handles; ``gates`` is the part of ``backbone`` spent in
    pruning gates. ``extra`` and ``moves`` hold the same regions for the element-wise flops
    and the element moves that the headline leaves out (see the module docstring).
    ``by_module`` / ``by_operator`` are the headline flops per module (names relative to
    the model, "" = the model) and per operator (extra and moves operators prefixed
    "extra:" / "moves:"). ``per_image`` holds one dict of region figures per input.
    """

    total: float
    backbone: float
    neck: float
    heads: float
    other: float
    gates: float
    extra: Dict[str, float]
    moves: Dict[str, float]
    by_module: Dict[str, float]
    by_operator: Dict[str, float]
    unsupported_ops: Dict[str, float]
    keep_ratios: Dict[int, float]
    per_image: List[Dict[str, Any]]
    num_inputs: int
    keep_all: bool = False
    table: str = ""
    by_module_extra: Dict[str, float] = field(default_factory=dict, repr=False)

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["keep_ratios"] = {str(k): v for k, v in self.keep_ratios.items()}
        for row in out["per_image"]:
            row["keep_ratios"] = {str(k): v for k, v in row["keep_ratios"].items()}
        return out


REGIONS = ("total", "backbone", "neck", "heads", "other", "gates")


def _region_modules(names: Sequence[str]) -> Dict[str, List[str]]:
    """Model-relative module names of each region ('' = the whole model)."""
    present = set(names)
    if "backbone.net" in present:
        vit = ["backbone.net"]
    elif "backbone.bottom_up" in present:
        vit = ["backbone.bottom_up"]
    elif "backbone" in present:
        vit = ["backbone"]
    else:
        vit = []
    neck = ["backbone"] if "backbone" in present and vit != ["backbone"] else []
    heads = [n for n in ("proposal_generator", "roi_heads", "sem_seg_head") if n in present]
    gates = [n + ".gates" for n in vit if n + ".gates" in present]
    return dict(total=[""], backbone=vit, neck=neck, heads=heads, gates=gates)


def _region_sums(per_module: Dict[str, Counter], names: Dict[str, List[str]]) -> Dict[str, Counter]:
    sums = {r: sum((per_module.get(n, Counter()) for n in mods), Counter())
            for r, mods in names.items()}
    sums["neck"] = sums["neck"] - sums["backbone"]  # Counter subtraction keeps positives
    sums["other"] = sums["total"] - sums["backbone"] - sums["neck"] - sums["heads"]
    return sums


def _relative_name(name: str) -> Optional[str]:
    """A TracingAdapter module name -> the model-relative name (None for the adapter)."""
    if name == _ADAPTER_ROOT:
        return ""
    if name.startswith(_ADAPTER_ROOT + "."):
        return name[len(_ADAPTER_ROOT) + 1:]
    return None


def _analyse_one(model: nn.Module, inputs: List[dict], idle_gates: bool) -> Dict[str, Any]:
    """Trace one input; return its per-module split counters and keep ratios."""
    from .modeling.meta_arch import find_pruned_vit

    analysis = flop_analysis(model, inputs, idle_gates)
    per_module: Dict[str, Counter] = {}
    for name, counter in analysis.by_module_and_operator().items():
        rel = _relative_name(name)
        if rel is not None:
            per_module[rel] = Counter(counter)
    per_module[""] = Counter(analysis.by_operator())  # the adapter: everything traced
    vit = find_pruned_vit(model)
    ratios = {}
    if vit is not None:
        ratios = {int(i): float(r.float().mean()) for i, r in vit.last_keep_ratios.items()}
    return dict(per_module=per_module, unsupported=Counter(analysis.unsupported_ops()),
                keep_ratios=ratios)


def count_model_flops(model: nn.Module, inputs: List[dict], keep_all: bool = False,
                      table_depth: int = 4) -> FlopCounts:
    """FLOPs of a Detectron2 model on ``inputs`` (Detectron2's list[dict] format).

    Each input is traced on its own (batch 1) in eval mode without gradients, and the
    figures are averaged. ``keep_all`` temporarily sets every PrunedViT's
    ``fixed_keep_ratio`` to 1.0 for every pruned block: the dense reference of the same
    model. Its gates still run, but they are not counted there (``gates`` = 0): the
    reference is the dense ViT's cost, and the configured count carries the gate overhead
    (also of a gate that happens to keep every token). Dense models (no PrunedViT) are
    counted as they are.
    """
    if not inputs:
        raise InputError("no inputs to count FLOPs on")
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    results = []
    try:
        with ExitStack() as stack:
            if keep_all:
                stack.enter_context(_keep_every_token(model))
            for inp in inputs:
                results.append(_analyse_one(model, [inp], idle_gates=not keep_all))
    finally:
        model.train(was_training)

    n = len(results)
    module_names = sorted(set().union(*(r["per_module"] for r in results)))
    regions = _region_modules(module_names)
    per_image: List[Dict[str, Any]] = []
    flops_mod, extra_mod = Counter(), Counter()
    by_operator = Counter()
    unsupported = Counter()
    region_flops = {r: 0.0 for r in REGIONS}
    region_extra = {r: 0.0 for r in REGIONS}
    region_moves = {r: 0.0 for r in REGIONS}
    ratios_sum: Counter = Counter()
    for inp, res in zip(inputs, results):
        per_module = res["per_module"]
        sums = _region_sums(per_module, regions)
        row: Dict[str, Any] = {}
        for r in REGIONS:
            f, e, m = split_operators(sums[r])
            row[r] = float(sum(f.values()))
            row[f"extra_{r}"] = float(sum(e.values()))
            row[f"moves_{r}"] = float(sum(m.values()))
            region_flops[r] += row[r] / n
            region_extra[r] += row[f"extra_{r}"] / n
            region_moves[r] += row[f"moves_{r}"] / n
        image = inp.get("image")
        row["image_size"] = list(image.shape[-2:]) if image is not None else None
        row["keep_ratios"] = res["keep_ratios"]
        per_image.append(row)
        for name, counter in per_module.items():
            f, e, _ = split_operators(counter)
            flops_mod[name] += sum(f.values()) / n
            extra_mod[name] += sum(e.values()) / n
        for op, value in per_module[""].items():
            by_operator[op] += value / n
        for op, count in res["unsupported"].items():
            unsupported[op] += count / n
        ratios_sum.update(res["keep_ratios"])
    for name in module_names:  # modules without flops stay in the table's tree
        flops_mod.setdefault(name, 0.0)
    counts = FlopCounts(
        total=region_flops["total"], backbone=region_flops["backbone"],
        neck=region_flops["neck"], heads=region_flops["heads"], other=region_flops["other"],
        gates=region_flops["gates"],
        extra={r: region_extra[r] for r in REGIONS},
        moves={r: region_moves[r] for r in REGIONS},
        by_module=dict(flops_mod), by_operator=dict(by_operator),
        unsupported_ops=dict(unsupported),
        keep_ratios={i: ratios_sum[i] / n for i in sorted(ratios_sum)},
        per_image=per_image, num_inputs=n, keep_all=keep_all,
        by_module_extra=dict(extra_mod),
    )
    counts.table = flops_table(model, {"#flops": counts.by_module}, max_depth=table_depth)
    return counts


def flops_table(model: nn.Module, columns: Dict[str, Dict[str, float]], max_depth: int = 4) -> str:
    """fvcore's per-module table (as :func:`fvcore.nn.flop_count_table`) with one column
    of parameters and one column per entry of ``columns`` ({title: {module: flops}})."""
    from fvcore.nn import parameter_count
    from fvcore.nn.print_model_statistics import (
        _group_by_module,
        _model_stats_table,
        _pretty_statistics,
        _remove_zero_statistics,
    )

    model = _unwrap(model)
    modules = {name for name, _ in model.named_modules()}
    params = {k: v for k, v in parameter_count(model).items() if k in modules}
    stats = {"#parameters": params}
    for title, values in columns.items():
        stats[title] = {k: v for k, v in values.items() if k in modules}
    grouped = _group_by_module(stats)
    grouped = _remove_zero_statistics(grouped, require_trivial_children=True)
    return _model_stats_table(_pretty_statistics(grouped), max_depth=max_depth,
                              stat_columns=list(stats))


# --------------------------------------------------------------------------- analytic check

def block_flops(num_tokens: int, dim: int, mlp_ratio: float, num_heads: int,
                group_len: Union[None, int, Sequence[int]] = None,
                padded: bool = False) -> Dict[str, float]:
    """Multiply-adds of a ViT block (fvcore's convention) on ``num_tokens`` tokens.

    Args:
        num_tokens: tokens the block computes (the kept tokens of one image).
        dim, mlp_ratio, num_heads: the block's width, MLP expansion and heads (the products
            do not depend on the number of heads; it must divide ``dim``).
        group_len: how the tokens attend: None = one global group of ``num_tokens``;
            an int = windows of that many tokens each (``num_tokens`` must be a multiple);
            a sequence = the token count of each attention group (summing to
            ``num_tokens``), e.g. the kept tokens per window.
        padded: compute attention (qkv, q@k, attn@v, proj) on every group padded to the
            longest one, as a padded batch of groups does (TokenPrune's gather path).
    Returns:
        {"qkv", "attn_qk", "attn_v", "proj", "fc1", "fc2", "attention", "mlp", "total"}.
        Relative-position terms, norms, softmax and residual adds are not included.
    """
    if num_tokens < 0 or dim <= 0 or num_heads <= 0 or dim % num_heads:
        raise ValueError(f"bad block: num_tokens={num_tokens}, dim={dim}, heads={num_heads}")
    if group_len is None:
        groups = [num_tokens] if num_tokens else []
    elif isinstance(group_len, int):
        if group_len <= 0 or num_tokens % group_len:
            raise ValueError(f"{num_tokens} tokens do not fill windows of {group_len}")
        groups = [group_len] * (num_tokens // group_len)
    else:
        groups = [int(g) for g in group_len]
        if sum(groups) != num_tokens or any(g < 0 for g in groups):
            raise ValueError(f"group lengths {groups} do not sum to {num_tokens} tokens")
        groups = [g for g in groups if g]
    if padded and groups:
        groups = [max(groups)] * len(groups)
    attn_tokens = sum(groups)
    hidden = int(dim * mlp_ratio)
    out = dict(
        qkv=float(attn_tokens * dim * 3 * dim),
        attn_qk=float(sum(g * g for g in groups) * dim),
        attn_v=float(sum(g * g for g in groups) * dim),
        proj=float(attn_tokens * dim * dim),
        fc1=float(num_tokens * dim * hidden),
        fc2=float(num_tokens * hidden * dim),
    )
    out["attention"] = out["qkv"] + out["attn_qk"] + out["attn_v"] + out["proj"]
    out["mlp"] = out["fc1"] + out["fc2"]
    out["total"] = out["attention"] + out["mlp"]
    return out


# --------------------------------------------------------------------------- tool

def _parser() -> argparse.ArgumentParser:
    from .cli import tool_parser

    parser = tool_parser(PROG, "Count the FLOPs of a model (fvcore: 1 multiply-add = 1 flop) "
                               "on the first images of its test set; for a pruned backbone "
                               "side by side with every token kept.")
    parser.add_argument("--num-inputs", type=int, default=4, metavar="N",
                        help="analyse the first N test images (default 4)")
    parser.add_argument("--depth", type=int, default=4, metavar="D",
                        help="module depth of the per-module table (default 4)")
    parser.add_argument("--output", default=None, metavar="FILE.json",
                        help="JSON report (default: OUTPUT_DIR/flops.json, "
                             "OUTPUT_DIR = train.output_dir)")
    return parser


def _resolve_output(cfg, path: Optional[str]) -> str:
    from .cli import make_output_dir

    path = path or os.path.join(cfg.train.output_dir, "flops.json")
    if os.path.isdir(path):
        raise InputError(f"output path {path} is a folder; give a file name such as flops.json")
    make_output_dir(os.path.dirname(os.path.abspath(path)))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"cannot write to output file {path}: permission denied")
    return path


def _g(x: float) -> str:
    return f"{x / 1e9:.4f}"


def _summary(columns: Dict[str, FlopCounts]) -> str:
    titles = list(columns)
    width = 38
    lines = [f"{'GFLOPs, mean per image':<{width}}" + "".join(f"{t:>15}" for t in titles)
             + (f"{'ratio':>8}" if len(titles) == 2 else "")]
    rows = [("backbone (ViT: backbone.net)", "flops", "backbone"),
            ("  of which gates", "flops", "gates"),
            ("neck (rest of backbone)", "flops", "neck"),
            ("heads (RPN + ROI heads)", "flops", "heads"),
            ("other (pre/post-processing)", "flops", "other"),
            ("total", "flops", "total"),
            ("extra element-wise, backbone *", "extra", "backbone"),
            ("extra element-wise, total *", "extra", "total"),
            ("element moves (G), backbone **", "moves", "backbone"),
            ("element moves (G), total **", "moves", "total")]
    for label, kind, key in rows:
        values = [getattr(c, key) if kind == "flops" else getattr(c, kind)[key]
                  for c in columns.values()]
        if key == "gates" and not any(values):
            continue
        line = f"{label:<{width}}" + "".join(f"{_g(v):>15}" for v in values)
        if len(values) == 2:
            line += f"{values[0] / values[1]:>8.3f}" if values[1] else f"{'-':>8}"
        lines.append(line)
    lines.append("*  softmax, GELU, add, mul, ... (tokenprune handles), not in the headline flops")
    lines.append("** elements moved by gather / scatter / index ops, not flops")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> Dict[str, Any]:
    from .cli import atomic_write_json, build_eval_model, first_test_inputs, load_tool_config
    from .modeling.meta_arch import find_pruned_vit

    warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
    if args.num_inputs <= 0:
        raise InputError(f"--num-inputs must be a positive number of images, got {args.num_inputs}")
    if args.depth < 0:
        raise InputError(f"--depth must be 0 or more, got {args.depth}")
    cfg = load_tool_config(args)
    output = _resolve_output(cfg, args.output)
    model = build_eval_model(cfg)
    inputs = first_test_inputs(cfg, args.num_inputs)

    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    columns: Dict[str, FlopCounts] = {"as configured": count_model_flops(model, inputs)}
    pruned = find_pruned_vit(model) is not None
    if pruned:
        columns["keep all"] = count_model_flops(model, inputs, keep_all=True)
    configured = columns["as configured"]

    table = flops_table(model, {f"#flops ({t})": c.by_module for t, c in columns.items()},
                        max_depth=args.depth)
    unsupported = Counter()
    for c in columns.values():
        for op, k in c.unsupported_ops.items():
            unsupported[op] = max(unsupported[op], k)

    print(f"FLOPs of {args.config_file} on the first {len(inputs)} test image(s), mean per "
          f"image (fvcore: one multiply-add = 1 flop; headline = fvcore/Detectron2 handles)")
    if len(inputs) < args.num_inputs:
        print(f"note: the test set has only {len(inputs)} image(s)")
    print(table)
    print(_summary(columns))
    if configured.keep_ratios:
        print("keep ratios (as configured): " + ", ".join(
            f"block {i}: {r:.3f}" for i, r in configured.keep_ratios.items()))
    if unsupported:
        print("uncounted operators (fvcore unsupported_ops, occurrences per image): " + ", ".join(
            f"{op} x{k:g}" for op, k in sorted(unsupported.items(), key=lambda kv: -kv[1])))

    report: Dict[str, Any] = {
        "config_file": args.config_file,
        "overrides": list(args.opts),
        "num_inputs": len(inputs),
        "convention": "fvcore: one fused multiply-add = 1 flop; mean over inputs, each traced "
                      "separately; headline flops use fvcore's default handles with "
                      "Detectron2's ignored operators (= detectron2.utils.analysis."
                      "FlopCountAnalysis); 'extra' = element-wise flops of tokenprune's own "
                      "handles (not in the headline); 'moves' = elements moved by gather/"
                      "scatter/index ops (not flops)",
        "columns": {("configured" if t == "as configured" else "keep_all"): c.to_json()
                    for t, c in columns.items()},
        "unsupported_ops": dict(unsupported),
        "table": table,
    }
    if pruned:
        dense = columns["keep all"]
        report["backbone_ratio"] = configured.backbone / dense.backbone if dense.backbone else None
        report["total_ratio"] = configured.total / dense.total if dense.total else None
    atomic_write_json(output, report)
    print(f"wrote {output}")
    return report


def cli(argv: Optional[Sequence[str]] = None) -> Any:
    from .cli import run_tool

    return run_tool(PROG, main, _parser(), argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
