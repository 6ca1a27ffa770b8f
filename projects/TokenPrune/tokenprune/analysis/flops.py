"""FLOPs of a Detectron2 model (dense or token-pruned) counted with fvcore.

Figures are the mean over the analysed inputs; every input is traced on its own because
dynamic pruning keeps a different number of tokens per image, and a trace records that
input's actual shapes. The headline (``total``, ``backbone``, ``neck``, ``heads``) uses
fvcore's default operator handles with Detectron2's list of ignored operators -- exactly
what :class:`detectron2.utils.analysis.FlopCountAnalysis` counts, so a dense model's total
equals Detectron2's; element-wise "extra" flops and element moves are counted apart
(:mod:`.flop_handles`). Operators that no handle counts (e.g. ``topk``,
``torchvision::roi_align``) are listed as unsupported.

Pruned ViTs are counted through their public observer (:meth:`PrunedViT.observed`): the
keep decisions are traced as constants (what a per-input trace means) while the gates that
produced them are counted, and the gathered execution of a pruned block, which does not
call the block module, is scoped to its block, so the per-block rows are complete.
"""
from __future__ import annotations

from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..modeling.autocast import unwrap_model
from ..modeling.meta_arch import find_pruned_vit
from ..modeling.pruned_vit import PrunedViT, PruningObserver
from .flop_handles import EXTRA_HANDLES, split_operators

__all__ = ["FlopCounts", "count_model_flops", "flop_analysis", "flops_table", "REGIONS"]

_ADAPTER_ROOT = "model"  # Detectron2's TracingAdapter holds the analysed model as ``.model``


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


class _CountingObserver(PruningObserver):
    """Makes a PrunedViT's inference traceable and its pruned blocks attributable.

    * The keep decision (top-k / threshold on the gate scores) runs with the tracer
      paused: the trace takes it as a constant. (Tracing ``Tensor.scatter_(dim, index,
      True)`` with a Python bool fails in PyTorch's alias analysis.) The gate itself is
      traced and counted (:func:`_tie_to_inputs`).
    * A gate whose decision keeps every token does not change the result (the block runs
      densely), so the trace would drop it; with ``idle_gates`` its scores are tied to the
      block's input so that it is counted, as it runs. Without, it is left out (the
      keep-all reference: the dense ViT's cost).
    * The gathered (or masked) execution of a block is scoped to that block.
    """

    def __init__(self, scope_names: Dict[int, str], idle_gates: bool):
        self._names = scope_names  # block index -> traced scope name
        self._idle_gates = idle_gates
        self._pending: Dict[int, List[torch.Tensor]] = {}

    def decide(self, block: int, decide: Callable[[], torch.Tensor],
               log_probs: torch.Tensor) -> torch.Tensor:
        with _tracer_paused():
            keep = decide()
            all_kept = keep.dtype == torch.bool and bool(keep.all())
        if self._idle_gates and all_kept and torch._C._get_tracing_state() is not None:
            self._pending[block] = _floating([log_probs])
        return _tie_to_inputs(keep, [log_probs])

    def before_dense_block(self, block: int, x: torch.Tensor) -> torch.Tensor:
        scores = self._pending.pop(block, None)
        if not scores or torch._C._get_tracing_state() is None:
            return x
        return _tie_tensor(x, scores)

    @contextmanager
    def block_scope(self, block: int) -> Iterator[None]:
        state = torch._C._get_tracing_state()
        name = self._names.get(block)
        if state is None or name is None:
            yield
            return
        state.push_scope(name)
        try:
            yield
        finally:
            state.pop_scope()


def _pruned_vits(model: nn.Module) -> List[PrunedViT]:
    return [m for m in model.modules() if isinstance(m, PrunedViT)]


@contextmanager
def _counting_mode(model: nn.Module, scope_prefix: str, idle_gates: bool = True) -> Iterator[None]:
    """Every PrunedViT of ``model`` observed by a :class:`_CountingObserver`."""
    names = {id(m): f"{scope_prefix}.{n}" if n else scope_prefix
             for n, m in model.named_modules()}
    with ExitStack() as stack:
        for vit in _pruned_vits(model):
            blocks = {i: names[id(blk)] for i, blk in enumerate(vit.blocks)}
            stack.enter_context(vit.observed(_CountingObserver(blocks, idle_gates)))
        yield


@contextmanager
def _keep_every_token(model: nn.Module) -> Iterator[None]:
    """Every PrunedViT of ``model`` keeps every token (top-k at 1.0 in every pruned block)."""
    with ExitStack() as stack:
        for vit in _pruned_vits(model):
            stack.enter_context(vit.pruning(keep_ratio=1.0))
        yield


def flop_analysis(model: nn.Module, inputs: Any, idle_gates: bool = True):
    """Detectron2's FlopCountAnalysis of ``model(inputs)`` plus :data:`EXTRA_HANDLES`, traced.

    ``inputs`` is what the model is called with (``list[dict]`` for a Detectron2 model, a
    tensor for a plain module). Module names in the result carry the prefix ``model.``
    (Detectron2's TracingAdapter). The trace is run here, while PrunedViTs are in counting
    mode; split the per-operator counters with :func:`split_operators`. ``idle_gates``:
    count gates whose decision keeps every token (see :func:`_counting_mode`).
    """
    from detectron2.utils.analysis import FlopCountAnalysis

    model = unwrap_model(model)
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.no_grad(), _counting_mode(model, _ADAPTER_ROOT, idle_gates):
        analysis.total()  # runs (and caches) the trace
    return analysis


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
    figures are averaged. ``keep_all`` runs every PrunedViT under
    ``pruning(keep_ratio=1.0)`` (every token kept): the dense reference of the same
    model. Its gates still run, but they are not counted there (``gates`` = 0): the
    reference is the dense ViT's cost, and the configured count carries the gate overhead
    (also of a gate that happens to keep every token). Dense models (no PrunedViT) are
    counted as they are.
    """
    if not inputs:
        raise InputError("no inputs to count FLOPs on")
    model = unwrap_model(model)
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

    counts = _mean_counts(inputs, results)
    counts.keep_all = keep_all
    counts.table = flops_table(model, {"#flops": counts.by_module}, max_depth=table_depth)
    return counts


def _mean_counts(inputs: List[dict], results: List[Dict[str, Any]]) -> FlopCounts:
    """Per-input results of :func:`_analyse_one` -> their mean, by region, module, operator."""
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
        per_image=per_image, num_inputs=n,
        by_module_extra=dict(extra_mod),
    )
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

    model = unwrap_model(model)
    modules = {name for name, _ in model.named_modules()}
    params = {k: v for k, v in parameter_count(model).items() if k in modules}
    stats = {"#parameters": params}
    for title, values in columns.items():
        stats[title] = {k: v for k, v in values.items() if k in modules}
    grouped = _group_by_module(stats)
    grouped = _remove_zero_statistics(grouped, require_trivial_children=True)
    return _model_stats_table(_pretty_statistics(grouped), max_depth=max_depth,
                              stat_columns=list(stats))
