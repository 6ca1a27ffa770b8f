"""Running a Detectron2 ViTDet ``Block`` on a subset of its tokens.

Two executions share one attention core (:func:`attention_on_groups`):

* **gather** (inference): the kept tokens are gathered into groups (one per image for a
  global block, one per image-window for a windowed block), padded to the longest group
  with a key mask, attended, and scattered back. Only kept tokens are computed.
* **masked** (training, and a reference): every token is computed; a soft key weight
  (the straight-through keep decision) removes pruned tokens as attention keys.

Relative position terms are computed from each token's grid (or in-window) coordinates,
never from its position in the packed sequence, so they are exact on any subset.
Padding positions that ViTDet adds to fill the last window are not keys here; with every
token kept, :class:`PrunedViT` runs the block densely, exactly like ViTDet.
"""
from __future__ import annotations

import functools
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from detectron2.modeling.backbone.utils import window_partition, window_unpartition

__all__ = ["TokenGroups", "group_kept_tokens", "attention_logits", "attention_on_groups",
           "add_rel_pos_bias_", "run_block_gathered",
           "run_block_masked", "rel_pos_table", "resize_rel_pos", "profiler_range",
           "PolicyAttention"]


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


@dataclass
class TokenGroups:
    """Kept tokens of a (B, H, W) grid packed into G padded groups of length L.

    Attributes:
        flat_index: (M,) indices of the kept tokens into the flattened (B * H * W) grid,
            ordered group by group.
        group: (M,) group of each kept token; slot: (M,) its position inside the group.
        num_groups, length: G and L.
        coords: (G, L, 2) long, the (row, col) of each slot in its attention frame
            (the image grid for global blocks, the window for windowed blocks).
        key_valid: (G, L) bool, False on padding slots; None when no group is padded.
        frame: (h, w) size of the attention frame (for relative positions).
    """

    flat_index: Tensor
    group: Tensor
    slot: Tensor
    num_groups: int
    length: int
    coords: Tensor
    key_valid: Optional[Tensor]
    frame: Tuple[int, int]

    @profiled("tp::pack")
    def pack(self, tokens: Tensor) -> Tensor:
        """(M, C) kept tokens in ``flat_index`` order -> (G, L, C), zeros on padding."""
        if self.key_valid is None:
            return tokens.view(self.num_groups, self.length, tokens.shape[-1])
        out = tokens.new_zeros(self.num_groups, self.length, tokens.shape[-1])
        out[self.group, self.slot] = tokens
        return out

    @profiled("tp::unpack")
    def unpack(self, packed: Tensor) -> Tensor:
        """(G, L, C) -> (M, C), dropping padding slots."""
        if self.key_valid is None:
            return packed.reshape(-1, packed.shape[-1])
        return packed[self.group, self.slot]


@profiled("tp::group_kept_tokens")
def group_kept_tokens(keep: Tensor, hw: Tuple[int, int], window_size: int = 0) -> TokenGroups:
    """Pack the kept tokens of each image (or image-window) into groups.

    Args:
        keep: (B, H * W) bool, at least one True per image.
        hw: grid size (H, W).
        window_size: 0 for global attention, else the attention window size.
    """
    B, N = keep.shape
    H, W = hw
    device = keep.device
    rows = torch.arange(H, device=device).repeat_interleave(W)
    cols = torch.arange(W, device=device).repeat(H)
    if window_size > 0:
        win_w = (W + window_size - 1) // window_size
        win_id = (rows // window_size) * win_w + cols // window_size
        num_win = ((H + window_size - 1) // window_size) * win_w
        local = torch.stack([rows % window_size, cols % window_size], dim=-1)
        frame = (window_size, window_size)
        # sort kept tokens by (image, window), raster order inside a window
        key = (torch.arange(B, device=device)[:, None] * num_win + win_id) * N + torch.arange(
            N, device=device
        )
        kept_keys = key[keep]
        kept_keys, _ = kept_keys.sort()
        flat_index = (kept_keys // N // num_win) * N + kept_keys % N
        raw_group = kept_keys // N
    else:
        local = torch.stack([rows, cols], dim=-1)
        frame = (H, W)
        flat_index = keep.reshape(-1).nonzero().squeeze(1)
        raw_group = flat_index // N
    # renumber non-empty groups 0..G-1; raw_group is sorted
    counts_all = torch.bincount(raw_group)
    nonempty = counts_all > 0
    group = (torch.cumsum(nonempty.long(), 0) - 1)[raw_group]
    counts = counts_all[nonempty]
    G = counts.numel()
    L = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(flat_index.numel(), device=device) - starts[group]
    pos = flat_index % N
    coords = torch.zeros(G, L, 2, dtype=torch.long, device=device)
    coords[group, slot] = local[pos]
    key_valid = None
    if bool((counts != L).any()):
        key_valid = torch.zeros(G, L, dtype=torch.bool, device=device)
        key_valid[group, slot] = True
    return TokenGroups(flat_index, group, slot, G, L, coords, key_valid, frame)


def attention_logits(attn_module: torch.nn.Module, q: Tensor, k: Tensor, coords: Tensor,
                     frame: Tuple[int, int], key_valid: Optional[Tensor] = None,
                     key_bias: Optional[Tensor] = None) -> Tensor:
    """Pre-softmax attention (G, nh, L, L) of ViTDet's ``Attention`` on token groups.

    Args:
        q, k: (G, nh, L, hd) queries and keys.
        coords: (G, L, 2) or (L, 2) long (row, col) of each token in its attention frame.
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


def attention_on_groups(
    attn_module: torch.nn.Module,
    x: Tensor,
    coords: Tensor,
    frame: Tuple[int, int],
    key_valid: Optional[Tensor] = None,
    key_weight: Optional[Tensor] = None,
    key_bias: Optional[Tensor] = None,
) -> Tensor:
    """Detectron2 ViTDet ``Attention`` over token groups with exact relative positions.

    Args:
        attn_module: a ``detectron2.modeling.backbone.vit.Attention`` (its weights are used).
        x: (G, L, C) normalised tokens.
        coords, frame, key_valid, key_bias: see :func:`attention_logits`.
        key_weight: (G, L) float in [0, 1]; keys are weighted inside the softmax
            (DynamicViT's softmax with policy); a query always sees itself.
    Returns:
        (G, L, C) attention output (after the output projection).
    """
    G, L, C = x.shape
    nh = attn_module.num_heads
    qkv = attn_module.qkv(x).reshape(G, L, 3, nh, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (G, nh, L, hd)
    attn = attention_logits(attn_module, q, k, coords, frame, key_valid, key_bias)
    if key_weight is None:
        out = attn.softmax(dim=-1) @ v
    else:
        out = PolicyAttention.apply(attn, v, key_weight.to(v.dtype))
        del attn
    out = out.transpose(1, 2).reshape(G, L, C)
    return attn_module.proj(out)


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


@profiled("tp::rel_pos_bias")
def add_rel_pos_bias_(attn: Tensor, q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor,
                       coords: Tensor, frame: Tuple[int, int]) -> Tensor:
    """Add the decomposed relative position bias to ``attn`` (G, nh, L, L) in place.

    bias[i, j] = q_i . Rh[row_i - row_j] + q_i . Rw[col_i - col_j]. Each query is projected
    on all 2h-1 (2w-1) offsets once, narrowed to the h (w) rows (columns) of the frame, and
    the (query, key) term is then picked by the key's row (column): no L x L index tensor.
    """
    fh, fw = frame
    if coords.dim() == 2:
        coords = coords[None]
    G, nh, L, _ = attn.shape
    for axis, (table, size) in enumerate(((rel_pos_h, fh), (rel_pos_w, fw))):
        proj = q @ rel_pos_table(table, size).t()  # (G, nh, L, 2 * size - 1)
        pos = coords[..., axis]  # (G', L)
        offsets = pos[:, :, None] - torch.arange(size, device=pos.device) + size - 1
        per_line = proj.gather(-1, offsets[:, None].expand(G, nh, L, size))  # (G, nh, L, size)
        # gather with a broadcast (stride-0) index: far faster on CPUs than index_select
        attn.add_(per_line.gather(-1, pos[:, None, None, :].expand(G, nh, L, L)))
    return attn


def run_block_gathered(block: torch.nn.Module, x: Tensor, keep: Tensor) -> Tensor:
    """Run ``block`` on the kept tokens only; pruned tokens keep their input features.

    Args:
        block: a Detectron2 ViTDet ``Block`` (eval mode; no residual conv block).
        x: (B, H, W, C) token map.
        keep: (B, H * W) bool, at least one True per image.
    Returns:
        (B, H, W, C): updated kept tokens, unchanged pruned tokens.
    """
    B, H, W, C = x.shape
    groups = group_kept_tokens(keep, (H, W), block.window_size)
    flat = x.reshape(B * H * W, C)
    tokens = flat.index_select(0, groups.flat_index)  # (M, C)
    attended = attention_on_groups(
        block.attn, groups.pack(block.norm1(tokens)), groups.coords, groups.frame,
        key_valid=groups.key_valid,
    )
    tokens = tokens + block.drop_path(groups.unpack(attended))
    tokens = tokens + block.drop_path(block.mlp(block.norm2(tokens)))
    return flat.index_copy(0, groups.flat_index, tokens).view(B, H, W, C)


def run_block_masked(block: torch.nn.Module, x: Tensor, keep: Tensor) -> Tensor:
    """Run ``block`` on every token with pruned tokens removed as attention keys.

    Returns ``keep * block(x) + (1 - keep) * x``, differentiable in ``keep`` (the
    straight-through path of SViT's training form).

    Args:
        x: (B, H, W, C) token map.
        keep: (B, H * W) float in [0, 1] (hard 0/1 decisions in practice).
    """
    B, H, W, C = x.shape
    weight = keep.view(B, H, W, 1).to(x.dtype)
    h = block.norm1(x)
    ws = block.window_size
    if ws > 0:
        h, pad_hw = window_partition(h, ws)
        weight_w, _ = window_partition(weight, ws)  # padding gets weight 0: not a key
        frame = (ws, ws)
    else:
        weight_w, frame = weight, (H, W)
    n_groups = h.shape[0]
    fh, fw = frame
    coords = torch.stack(
        torch.meshgrid(torch.arange(fh, device=x.device), torch.arange(fw, device=x.device),
                       indexing="ij"), dim=-1).view(-1, 2)
    attended = attention_on_groups(
        block.attn, h.reshape(n_groups, fh * fw, C), coords, frame,
        key_weight=weight_w.reshape(n_groups, fh * fw),
    ).view(n_groups, fh, fw, C)
    if ws > 0:
        attended = window_unpartition(attended, ws, pad_hw, (H, W))
    out = x + block.drop_path(attended)
    out = out + block.drop_path(block.mlp(block.norm2(out)))
    return weight * out + (1 - weight) * x
