"""fvcore operator handles for what Detectron2's FLOP count leaves out.

Convention (fvcore's): **one fused multiply-add is one flop**. The headline flops are
fvcore's default handles with Detectron2's ignored operators. These handles add two
separate figures, prefixed in the per-operator counters so that :func:`split_operators`
can take them apart again:

* ``extra:`` element-wise arithmetic on floating-point tensors (integer index bookkeeping
  costs nothing here): softmax / log-softmax 3 per element (exp, sum, normalise); GELU,
  SiLU, sigmoid, tanh, exp, log, sqrt, rsqrt, erf 1 per element; add, sub, mul, div, neg,
  pow, reciprocal 1 per output element; mean and sum 1 per input element; linear
  interpolation (``upsample_linear1d``, used to resize relative-position tables) 2 per
  output element.
* ``scaled_dot_product_attention`` (headline, fvcore has no handle for it): its two
  products, ``q @ k^T`` and ``weights @ v``, counted as the matmuls they replace, so a
  model run through the fused kernel counts what Detectron2's eager attention counts; its
  softmax (3 per score) and mask addition (1 per score, when a mask is given) go to
  ``extra:``.
* ``moves:`` data movement is not arithmetic and counts as 0 flops; the elements moved by
  gather, scatter, index_select, index_copy, index_put and advanced indexing are reported
  as "element moves" (the cost of SViT's gather / scatter of kept tokens).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["EXTRA_HANDLES", "EXTRA_PREFIX", "MOVES_PREFIX", "split_operators"]

EXTRA_PREFIX = "extra:"


MOVES_PREFIX = "moves:"


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


def _sdpa(inputs, outputs) -> Counter:
    """q (..., L, E), k (..., S, E), v (..., S, Ev): L*S*(E + Ev) per leading index."""
    q, k, v = (_shape(x) for x in inputs[:3])
    if q is None or k is None or v is None:
        return Counter()
    lead = math.prod(q[:-2])
    scores = lead * q[-2] * k[-2]
    masked = len(inputs) > 3 and _shape(inputs[3]) is not None
    return Counter({"scaled_dot_product_attention": scores * (q[-1] + v[-1]),
                    EXTRA_PREFIX + "softmax": 3 * scores,
                    **({EXTRA_PREFIX + "add": scores} if masked else {})})


def _build_extra_handles() -> Dict[str, Callable]:
    handles: Dict[str, Callable] = {"aten::scaled_dot_product_attention": _sdpa}
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
