"""The attention core of ViTDet's ``Attention`` on groups of tokens, in three kernels.

Every kernel computes Detectron2's attention: ``softmax(q k^T * scale + B) v`` with the
decomposed relative-position bias ``B[i, j] = q_i . Rh[row_i - row_j] + q_i . Rw[col_i -
col_j]`` (unscaled ``q``, as ViTDet adds it), taken from each token's (row, col) in its
attention frame, so it is exact on any subset of the frame:

* ``"eager"``: logits, bias added in place, softmax, product (Detectron2's arithmetic);
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` with the bias as an
  additive float mask in the query's dtype (padding keys at ``-inf``): the fused kernel of
  the platform (flash / memory-efficient on CUDA, the fused CPU kernel on a CPU);
* ``"flex"``: :mod:`tokenprune.modeling.flex` (FlexAttention on one packed sequence, no
  padding at all); :func:`attention_core` runs it for the gathered blocks only.

Training's masked path uses :class:`PolicyAttention` (DynamicViT's softmax with policy,
differentiable in the key weights), whatever the kernel.
"""
from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Callable, ContextManager, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

__all__ = ["ATTENTION_KERNELS", "check_kernel", "profiler_range", "profiled", "resize_rel_pos",
           "rel_pos_table", "rel_pos_lines", "add_rel_pos_bias_", "rel_pos_bias",
           "attention_logits", "attention_core", "attention_on_groups", "PolicyAttention"]

ATTENTION_KERNELS = ("eager", "sdpa", "flex")


def check_kernel(kernel: str) -> str:
    """``kernel`` itself if it is one of :data:`ATTENTION_KERNELS`, else ValueError."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_KERNELS)}, "
                         f"got {kernel!r}")
    return kernel


def profiler_range(name: str) -> ContextManager:
    """A ``torch.profiler`` range named ``name`` while a profiler runs, else nothing (so the
    pieces are labelled in profiles and cost nothing, nor appear in traces, otherwise)."""
    if torch.autograd.profiler._is_profiler_enabled:
        return record_function(name)
    return nullcontext()


def profiled(name: str) -> Callable[[Callable], Callable]:
    """Decorator: every call of the function is a :func:`profiler_range` ``name``."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def labelled(*args, **kwargs):
            with profiler_range(name):
                return fn(*args, **kwargs)

        return labelled

    return decorate


def resize_rel_pos(table: Tensor, length: int) -> Tensor:
    """(L, C) -> (length, C) by linear interpolation along L (``table`` itself if L fits)."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t()[None], size=length, mode="linear")[0].t()


def rel_pos_table(rel_pos: Tensor, size: int) -> Tensor:
    """(L, C) learned relative embeddings -> (2 * size - 1, C), linearly resized if needed."""
    return resize_rel_pos(rel_pos, 2 * size - 1)


def rel_pos_lines(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, coords: Optional[Tensor],
                  frame: Tuple[int, int]) -> List[Tuple[Tensor, Tensor]]:
    """Per axis (rows, then columns): ``(lines, pos)``, where ``lines[..., i, r]`` (G, nh, L,
    size) is query i's bias towards a key on row (column) r of the frame, and ``pos`` (G', L)
    long is each token's row (column). The (query, key) term is ``lines[..., i, pos[j]]``.

    q: (G, nh, L, hd); coords: (G, L, 2) or (L, 2), or None for the whole frame in raster
    order (then computed as Detectron2 does: one (size, size, hd) table of the offsets
    between rows, contracted per row; same arithmetic and cost); frame: (h, w).
    """
    G, nh, L, hd = q.shape
    fh, fw = frame
    out = []
    for axis, (table, size) in enumerate(((rel_pos_h, fh), (rel_pos_w, fw))):
        table = rel_pos_table(table, size).to(q.dtype)
        span = torch.arange(size, device=q.device)
        if coords is None:
            per_line = table[span[:, None] - span[None, :] + size - 1]  # (size, size, hd)
            q4 = q.reshape(G, nh, fh, fw, hd)
            eq = "gnyxc,ykc->gnyxk" if axis == 0 else "gnyxc,xkc->gnyxk"
            lines = torch.einsum(eq, q4, per_line).reshape(G, nh, L, size)
            grid = torch.stack(torch.meshgrid(torch.arange(fh, device=q.device),
                                              torch.arange(fw, device=q.device),
                                              indexing="ij"), dim=-1).view(1, L, 2)
            out.append((lines, grid[..., axis]))
            continue
        pos = (coords[None] if coords.dim() == 2 else coords)[..., axis]
        proj = q @ table.t()  # (G, nh, L, 2 * size - 1): one GEMM over every offset
        offsets = pos[:, :, None] - span + size - 1
        out.append((proj.gather(-1, offsets[:, None].expand(G, nh, L, size)), pos))
    return out


@profiled("tp::rel_pos_bias")
def add_rel_pos_bias_(attn: Tensor, q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor,
                      coords: Optional[Tensor], frame: Tuple[int, int]) -> Tensor:
    """Add the decomposed relative position bias to ``attn`` (G, nh, L, L) in place; the
    key's term is picked with a broadcast (stride-0) index: no L x L index tensor."""
    G, nh, L, _ = attn.shape
    for lines, pos in rel_pos_lines(q, rel_pos_h, rel_pos_w, coords, frame):
        attn.add_(lines.gather(-1, pos[:, None, None, :].expand(G, nh, L, L)))
    return attn


@profiled("tp::rel_pos_bias")
def rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, coords: Optional[Tensor],
                 frame: Tuple[int, int]) -> Tensor:
    """The decomposed relative position bias (G, nh, L, L) in ``q``'s dtype."""
    G, nh, L, _ = q.shape
    (lh, ph), (lw, pw) = rel_pos_lines(q, rel_pos_h, rel_pos_w, coords, frame)
    bias = lh.gather(-1, ph[:, None, None, :].expand(G, nh, L, L))
    return bias.add_(lw.gather(-1, pw[:, None, None, :].expand(G, nh, L, L)))


def attention_logits(attn_module: torch.nn.Module, q: Tensor, k: Tensor,
                     coords: Optional[Tensor],
                     frame: Tuple[int, int], key_valid: Optional[Tensor] = None,
                     key_bias: Optional[Tensor] = None) -> Tensor:
    """Pre-softmax attention (G, nh, L, L) of ViTDet's ``Attention`` on token groups.

    Args:
        q, k: (G, nh, L, hd) queries and keys.
        coords: (G, L, 2) or (L, 2) long (row, col) of each token in its attention frame;
            None: the whole frame in raster order.
        frame: (h, w) of the attention frame (relative positions are exact on any subset).
        key_valid: (G, L) bool; False keys (padding) get -inf.
        key_bias: (G, L) float added to every query's logit of that key (e.g. ToMe's
            log token size for proportional attention).
    """
    logits = (q * attn_module.scale) @ k.transpose(-2, -1)
    if attn_module.use_rel_pos:
        add_rel_pos_bias_(logits, q, attn_module.rel_pos_h, attn_module.rel_pos_w, coords, frame)
    if key_bias is not None:
        logits = logits + key_bias[:, None, None, :]
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    return logits


def _sdpa(attn_module: torch.nn.Module, q: Tensor, k: Tensor, v: Tensor,
          coords: Optional[Tensor],
          frame: Tuple[int, int], key_valid: Optional[Tensor],
          key_bias: Optional[Tensor]) -> Tensor:
    """(G, nh, L, hd) output of the fused kernel; bias and padding as one additive mask."""
    mask = None
    if attn_module.use_rel_pos:
        mask = rel_pos_bias(q, attn_module.rel_pos_h, attn_module.rel_pos_w, coords, frame)
    if key_bias is not None:
        kb = key_bias[:, None, None, :].to(q.dtype)
        mask = kb if mask is None else mask.add_(kb)
    if key_valid is not None:
        valid = key_valid[:, None, None, :]
        mask = valid if mask is None else mask.masked_fill_(~valid, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn_module.scale)


def attention_core(
    attn_module: torch.nn.Module,
    qkv: Tensor,
    coords: Optional[Tensor],
    frame: Tuple[int, int],
    key_valid: Optional[Tensor] = None,
    key_weight: Optional[Tensor] = None,
    key_bias: Optional[Tensor] = None,
    kernel: str = "eager",
) -> Tensor:
    """Attention of packed token groups, before the output projection.

    Args:
        attn_module: a ``detectron2.modeling.backbone.vit.Attention`` (heads, scale, rel-pos).
        qkv: (G, L, 3C) the ``qkv`` projection of the tokens (padding slots arbitrary).
        coords, frame, key_valid, key_bias: see :func:`attention_logits`.
        key_weight: (G, L) float in [0, 1]; keys are weighted inside the softmax
            (:class:`PolicyAttention`, the training path; ``kernel`` is then ignored).
        kernel: "eager" or "sdpa" (see the module docstring; "flex" packs differently).
    Returns:
        (G, L, C).
    """
    G, L, C3 = qkv.shape
    nh = attn_module.num_heads
    q, k, v = qkv.reshape(G, L, 3, nh, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (G, nh, L, hd)
    if key_weight is not None:
        logits = attention_logits(attn_module, q, k, coords, frame, key_valid, key_bias)
        out = PolicyAttention.apply(logits, v, key_weight.to(v.dtype))
    elif kernel == "sdpa":
        out = _sdpa(attn_module, q, k, v, coords, frame, key_valid, key_bias)
    else:
        logits = attention_logits(attn_module, q, k, coords, frame, key_valid, key_bias)
        out = logits.softmax(dim=-1).to(v.dtype) @ v
    return out.transpose(1, 2).reshape(G, L, C3 // 3)


def attention_on_groups(attn_module: torch.nn.Module, x: Tensor, coords: Optional[Tensor],
                        frame: Tuple[int, int], **options) -> Tensor:
    """Detectron2 ViTDet ``Attention`` over token groups with exact relative positions.

    x: (G, L, C) normalised tokens -> (G, L, C) after the output projection; ``options``
    (``key_valid``, ``key_weight``, ``key_bias``, ``kernel``): see :func:`attention_core`.
    """
    return attn_module.proj(attention_core(attn_module, attn_module.qkv(x), coords, frame,
                                           **options))


class PolicyAttention(torch.autograd.Function):
    """DynamicViT's softmax with policy, fused with the product by the values.

    ``out_i = sum_j a_ij v_j`` with ``a_ij = exp(l_ij) w'_ij / sum_k exp(l_ik) w'_ik``, where
    ``w'_ij = w_j`` for j != i and 1 on the diagonal (a query always sees itself), and
    gradients flow to the logits, the values and the key weights ``w`` (also to pruned keys,
    w_j = 0, so a gate can learn to keep them).

    Memory: only ``r = exp(l) / S`` (one (G, nh, L, L) tensor, like the softmax output a
    dense attention keeps for its backward pass) is saved, with ``v``, ``w`` and the output;
    the (query, key) weights are never materialised (``a = r * w'`` is applied as
    ``r @ (w * v)`` plus a diagonal term).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, v: Tensor, w: Tensor) -> Tensor:
        """logits: (G, nh, L, L); v: (G, nh, L, hd); w: (G, L) key weights in [0, 1]."""
        wk = w[:, None, :, None]  # (G, 1, L, 1)
        r = (logits - logits.amax(dim=-1, keepdim=True)).exp_()
        diag = r.diagonal(dim1=-2, dim2=-1)  # (G, nh, L), a view of r
        total = (r @ wk).squeeze(-1) + diag * (1 - w[:, None, :])  # S_i
        r.div_(total[..., None])
        out = r @ (wk * v) + (diag * (1 - w[:, None, :]))[..., None] * v
        ctx.save_for_backward(r, v, w, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        r, v, w, out = ctx.saved_tensors
        wk = w[:, None, :, None]
        diag = r.diagonal(dim1=-2, dim2=-1)
        off = (1 - w[:, None, :]) * diag  # a_ii - r_ii w_i
        grad_v = wk * (r.transpose(-2, -1) @ grad_out) + off[..., None] * grad_out
        # t_ij = r_ij (g_i . v_j - g_i . out_i): the gradient before the key weights
        t = grad_out @ v.transpose(-2, -1)
        t.sub_((grad_out * out).sum(dim=-1, keepdim=True)).mul_(r)
        t_diag = t.diagonal(dim1=-2, dim2=-1).clone()
        grad_w = (t.sum(dim=-2) - t_diag).sum(dim=1)  # (G, L): over queries i != j, heads
        t.mul_(w[:, None, None, :])
        t.diagonal(dim1=-2, dim2=-1).copy_(t_diag)  # grad_logits_ij = a_ij (...)
        return t, grad_v, grad_w
