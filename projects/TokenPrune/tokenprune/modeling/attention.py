"""ViTDet's attention on groups of tokens, in three kernels chosen once by name.

Every kernel computes Detectron2's attention: ``softmax(q k^T * scale + B) v`` with the
decomposed relative-position bias ``B[i, j] = q_i . Rh[row_i - row_j] + q_i . Rw[col_i -
col_j]`` (unscaled ``q``, as ViTDet adds it), taken from each token's (row, col) in its
attention frame, so it is exact on any subset of the frame. :func:`attention_kernel` turns
a configured name into one of these objects (:class:`PrunedViT` does it once, in
``__init__`` and ``pruning()``); the code below it calls the object's methods:

* ``"eager"`` (:class:`EagerKernel`): logits, bias added in place, softmax, product
  (Detectron2's arithmetic); a dense block runs Detectron2's own ``Block.forward``.
* ``"sdpa"`` (:class:`SDPAKernel`, the default): ``F.scaled_dot_product_attention`` with
  the bias as an additive float mask in the query's dtype (padding keys at ``-inf``): the
  fused kernel of the platform (flash / memory-efficient on CUDA, fused on a CPU).
* ``"flex"`` (:class:`FlexKernel`): a gathered block's kept tokens (all images, all
  windows) in one packed sequence under FlexAttention, no padding at all. Groups of equal
  length (a dense block's images or windows) need no packing: they run SDPA's fused kernel.

Each kernel has two entry points: :meth:`~AttentionKernel.attend` on G equal-length groups
(a dense block, one bucket of a gathered block) and :meth:`~AttentionKernel.gathered` on the
M kept tokens of a gathered block (in buckets, or packed). Training's masked path uses
:func:`policy_attention` (DynamicViT's softmax with policy, differentiable in the key
weights), whatever the kernel.
"""
from __future__ import annotations

import functools
import warnings
from contextlib import nullcontext
from typing import Callable, ContextManager, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

__all__ = ["AttentionKernel", "EagerKernel", "SDPAKernel", "FlexKernel", "ATTENTION_KERNELS",
           "DEFAULT_ATTENTION", "attention_kernel", "SEQUENCE_QUANTUM", "profiler_range",
           "profiled", "resize_rel_pos", "rel_pos_table", "rel_pos_lines", "add_rel_pos_bias_",
           "rel_pos_bias", "attention_logits", "policy_attention", "PolicyAttention"]

DEFAULT_ATTENTION = "sdpa"
SEQUENCE_QUANTUM = 128  # FlexAttention's default tile: packed sequences are padded to it


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


def _split_heads(attn_module: torch.nn.Module, qkv: Tensor) -> Tuple[Tensor, ...]:
    """(G, L, 3C) -> q, k, v, each (G, nh, L, hd)."""
    G, L, _ = qkv.shape
    return qkv.reshape(G, L, 3, attn_module.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def _merge_heads(out: Tensor) -> Tensor:
    """(G, nh, L, hd) -> (G, L, nh * hd)."""
    G, nh, L, hd = out.shape
    return out.transpose(1, 2).reshape(G, L, nh * hd)


class AttentionKernel:
    """How a block's attention core is computed (before the output projection); one
    stateless instance per kernel (see the module docstring).

    Attributes:
        name: the kernel's configured name.
        block_forward: a dense block at inference runs Detectron2's own ``Block.forward``
            (the kernel is that arithmetic); False: it runs :meth:`attend` on its frames.
    """

    name: str
    block_forward: bool = False

    def attend(self, attn_module: torch.nn.Module, qkv: Tensor, coords: Optional[Tensor],
               frame: Tuple[int, int], key_valid: Optional[Tensor] = None,
               key_bias: Optional[Tensor] = None) -> Tensor:
        """(G, L, 3C) q/k/v of G groups of equal length -> (G, L, C).

        ``attn_module``: a ``detectron2.modeling.backbone.vit.Attention`` (heads, scale,
        rel-pos); ``coords``, ``frame``, ``key_valid``, ``key_bias``: see
        :func:`attention_logits`.
        """
        q, k, v = _split_heads(attn_module, qkv)
        return _merge_heads(self._attend_heads(attn_module, q, k, v, coords, frame, key_valid,
                                               key_bias))

    def _attend_heads(self, attn_module: torch.nn.Module, q: Tensor, k: Tensor, v: Tensor,
                      coords: Optional[Tensor], frame: Tuple[int, int],
                      key_valid: Optional[Tensor], key_bias: Optional[Tensor]) -> Tensor:
        """(G, nh, L, hd) q, k, v -> (G, nh, L, hd) output."""
        raise NotImplementedError

    def gathered(self, attn_module: torch.nn.Module, qkv: Tensor, groups, quantum: int,
                 key_bias: Optional[Tensor] = None) -> Tensor:
        """(M, 3C) q/k/v of the kept tokens of a block -> (M, C), each token attending to
        its own group.

        ``groups``: their :class:`~tokenprune.modeling.sparse_block.TokenGroups` (tokens in
        ``groups.flat_index`` order); ``quantum``: bucket size (see
        ``TokenGroups.bucket_lengths``); ``key_bias``: (M,) float added to every query's
        logit of that key, or None. One :meth:`attend` per bucket.
        """
        out = None
        for rows, bucket in groups.buckets(quantum):
            bias = None
            if key_bias is not None:
                part_bias = key_bias if rows is None else key_bias[rows]
                bias = bucket.pack(part_bias[:, None])[..., 0]
            part = bucket.unpack(self.attend(
                attn_module, bucket.pack(qkv if rows is None else qkv[rows]), bucket.coords,
                bucket.frame, bucket.key_valid, bias))
            if rows is None:
                return part
            if out is None:
                out = part.new_empty(qkv.shape[0], part.shape[-1])
            out[rows] = part
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EagerKernel(AttentionKernel):
    """Detectron2's arithmetic: logits, bias added in place, softmax, product by the values."""

    name = "eager"
    block_forward = True

    def _attend_heads(self, attn_module, q, k, v, coords, frame, key_valid, key_bias):
        logits = attention_logits(attn_module, q, k, coords, frame, key_valid, key_bias)
        return logits.softmax(dim=-1).to(v.dtype) @ v


class SDPAKernel(AttentionKernel):
    """The fused ``F.scaled_dot_product_attention``; the relative-position bias, the key bias
    and the padding (``-inf``) form one additive float mask in the query's dtype."""

    name = "sdpa"

    def _attend_heads(self, attn_module, q, k, v, coords, frame, key_valid, key_bias):
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


class FlexKernel(SDPAKernel):
    """FlexAttention for gathered blocks: the M kept tokens in one packed sequence, a
    block-diagonal ``mask_mod`` (a token attends to its own group only: FlexAttention skips
    every tile outside the groups, no padding at all) and the relative positions (and a key
    bias) as a ``score_mod`` that adds each query's precomputed per-row and per-column terms
    (:func:`rel_pos_lines`) for the key's row and column. The sequence is padded to a
    multiple of :data:`SEQUENCE_QUANTUM` (a group of its own, dropped after), so the
    compiled kernel sees few shapes. On CUDA the kernel is compiled
    (``torch.compile(flex_attention)``, once per process); elsewhere FlexAttention runs its
    unfused reference, which materialises the (M, M) scores: correct, for tests, not fast.

    :meth:`attend` (groups of equal length: dense blocks) is SDPA's: equal groups gain
    nothing from packing, so they run the fused kernel.
    """

    name = "flex"

    def gathered(self, attn_module, qkv, groups, quantum, key_bias=None):
        """One packed sequence for every group (no buckets: ``quantum`` is not used)."""
        return _flex_packed(attn_module, qkv, groups.group, groups.token_coords(), groups.frame,
                            key_bias)


@functools.lru_cache(maxsize=None)
def _flex_function(device_type: str) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    if device_type == "cuda":
        return torch.compile(flex_attention, dynamic=True)
    return flex_attention


def _flex_packed(attn_module: torch.nn.Module, qkv: Tensor, group: Tensor, coords: Tensor,
                 frame: Tuple[int, int], key_bias: Optional[Tensor]) -> Tensor:
    """(M, 3C) q/k/v of M packed tokens -> (M, C), each token attending to the tokens of its
    ``group`` (M,) only; ``coords`` (M, 2) long: (row, col) in a frame of size ``frame``;
    ``key_bias``: (M,) or None."""
    from torch.nn.attention.flex_attention import create_block_mask

    M, C3 = qkv.shape
    pad = -M % SEQUENCE_QUANTUM
    if pad:
        qkv = torch.cat([qkv, qkv.new_zeros(pad, C3)])
        group = torch.cat([group, group.new_full((pad,), -1)])
        coords = torch.cat([coords, coords.new_zeros(pad, 2)])
        if key_bias is not None:
            key_bias = torch.cat([key_bias, key_bias.new_zeros(pad)])
    S = M + pad
    q, k, v = _split_heads(attn_module, qkv[None])  # (1, nh, S, hd)

    def same_group(b, h, q_idx, kv_idx):
        return group[q_idx] == group[kv_idx]

    block_mask = create_block_mask(same_group, None, None, S, S, device=qkv.device)
    rel = None
    if attn_module.use_rel_pos:
        (lh, ph), (lw, pw) = rel_pos_lines(q, attn_module.rel_pos_h, attn_module.rel_pos_w,
                                           coords, frame)
        rel = lh[0], ph[0], lw[0], pw[0]  # (nh, S, h), (S,), (nh, S, w), (S,)
    bias = None if key_bias is None else key_bias.to(q.dtype)

    def score_mod(score, b, h, q_idx, kv_idx):
        if rel is not None:
            lh, ph, lw, pw = rel
            score = score + lh[h, q_idx, ph[kv_idx]] + lw[h, q_idx, pw[kv_idx]]
        if bias is not None:
            score = score + bias[kv_idx]
        return score

    with warnings.catch_warnings():  # the unfused reference off CUDA warns once
        warnings.filterwarnings("ignore", message="flex_attention called without")
        out = _flex_function(qkv.device.type)(
            q, k, v, score_mod=None if rel is None and bias is None else score_mod,
            block_mask=block_mask, scale=attn_module.scale)
    return _merge_heads(out)[0, :M]


_KERNELS: Dict[str, AttentionKernel] = {k.name: k for k in (EagerKernel(), SDPAKernel(),
                                                             FlexKernel())}
ATTENTION_KERNELS = tuple(_KERNELS)  # the names a config or command line may give


def attention_kernel(name: str) -> AttentionKernel:
    """The kernel called ``name`` (one of :data:`ATTENTION_KERNELS`), else ValueError."""
    if name not in _KERNELS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_KERNELS)}, "
                         f"got {name!r}")
    return _KERNELS[name]


def policy_attention(attn_module: torch.nn.Module, qkv: Tensor, coords: Optional[Tensor],
                     frame: Tuple[int, int], key_weight: Tensor) -> Tensor:
    """(G, L, 3C) -> (G, L, C): the attention core of training's masked path, keys weighted
    inside the softmax by ``key_weight`` (G, L) in [0, 1] (:class:`PolicyAttention`)."""
    q, k, v = _split_heads(attn_module, qkv)
    logits = attention_logits(attn_module, q, k, coords, frame)
    return _merge_heads(PolicyAttention.apply(logits, v, key_weight.to(v.dtype)))


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
