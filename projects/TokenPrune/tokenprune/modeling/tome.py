"""Token merging (ToMe-style bipartite soft matching) as a token *reducer* for PrunedViT.

A reducer is a different kind of token reduction than a keep / drop gate: instead of
choosing tokens, it merges similar ones. :class:`PrunedViT` (``reducer="tome"``) runs each
pruned block in three steps::

    tokens, state = reducer.reduce(x, n)        # (B, H, W, C) -> (B, n, C) merged tokens
    tokens = reducer.run_block(block, tokens, state, kernel, quantum)
    x = reducer.restore(tokens, state)          # -> (B, H, W, C): the full map again

* **reduce** (:func:`bipartite_merge`): the tokens of an image are split alternately into
  two sets A and B (even / odd positions of the raster-ordered list); every A token finds
  its most similar B token (cosine similarity of the block's input features); the ``r``
  A tokens with the most similar partners are merged into them (size-weighted means).
  One round removes at most half the tokens, so larger reductions run several rounds on
  the merged set until ``n`` tokens remain. Each merged token sits at the grid position of
  its surviving B token, which gives it coordinates for the relative positions and a window.
* **run_block**: the block runs on the merged tokens only (the gathered execution of
  :func:`.sparse_block.run_block_gathered`, with the model's attention kernel and bucket
  quantum), with ToMe's proportional attention (``log(size)`` of every key added to the
  attention logits, so a merged token counts as the tokens it stands for). In a windowed
  block a merged token belongs to its position's window.
* **restore** (:func:`unmerge`): every original position receives the output of the
  merged token it went into, so the neck sees a full map in which merged positions share
  their merged feature.

Each pruned block merges afresh from the full map (ToMe for dense prediction, as in ToMe
for Stable Diffusion); positions that shared a feature are identical at the next block
and are merged again first. Training-free: no parameters.

Differences from ToMe (documented choices): the similarity uses the block's input
features, not its attention keys (which would cost a C x C projection per token); matching
is per image also in windowed blocks; the merge target per block is the PrunedViT's keep
ratio ``ceil(r * N)`` tokens (ToMe's fixed ``r`` per block).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from detectron2.utils.registry import Registry

from .attention import AttentionKernel
from .gates import registry_name
from .sparse_block import DEFAULT_QUANTUM, run_block_gathered

__all__ = ["REDUCER_REGISTRY", "build_reducer", "MergeState", "bipartite_merge", "unmerge",
           "ToMeReducer", "run_block_on_merged"]

REDUCER_REGISTRY = Registry("TOKEN_REDUCER")
REDUCER_REGISTRY.__doc__ = ("Token reducers for PrunedViT: reduce(x, n) -> (tokens, state), "
                            "run_block(block, tokens, state, kernel, quantum), "
                            "restore(tokens, state).")


def build_reducer(kind: str, **kwargs):
    """The reducer called ``kind`` ("tome"; see :func:`.gates.registry_name`), built with
    ``kwargs``."""
    return REDUCER_REGISTRY.get(registry_name(REDUCER_REGISTRY, kind, "reducer"))(**kwargs)


@dataclass
class MergeState:
    """How N original tokens per image were merged into n tokens.

    Attributes:
        assign: (B, N) long, the merged token (index in 0..n-1) of every original position.
        size: (B, n) float, how many original tokens each merged token stands for.
        pos: (B, n) long, the grid position (raster index) of each merged token, ascending.
        hw: the grid (H, W).
    """

    assign: Tensor
    size: Tensor
    pos: Tensor
    hw: Tuple[int, int]


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x: (B, n, C), index: (B, m) -> (B, m, C)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _merge_round(tokens: Tensor, size: Tensor, pos: Tensor, r: int):
    """One round of bipartite soft matching: merge ``r`` A tokens into their best B tokens.

    Returns the new (tokens, size, pos), sorted by grid position, and (B, n_old) the new
    index of every old token.
    """
    B, n, C = tokens.shape
    a, b = tokens[:, ::2], tokens[:, 1::2]
    a_size, b_size = size[:, ::2], size[:, 1::2]
    a_pos, b_pos = pos[:, ::2], pos[:, 1::2]
    na, nb = a.shape[1], b.shape[1]
    metric = F.normalize(tokens, dim=-1)
    sim = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (B, na, nb)
    best, best_b = sim.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    src = order[:, :r]  # merged A tokens
    unmerged = order[:, r:].sort(dim=-1).values  # surviving A tokens, in raster order
    dst = best_b.gather(1, src)
    src_size = a_size.gather(1, src)
    b_sum = (b * b_size[..., None]).scatter_add(
        1, dst[..., None].expand(-1, -1, C), _gather_rows(a, src) * src_size[..., None])
    b_size = b_size.scatter_add(1, dst, src_size)
    b = b_sum / b_size[..., None]
    n_unm = na - r
    new_tokens = torch.cat([_gather_rows(a, unmerged), b], dim=1)
    new_size = torch.cat([a_size.gather(1, unmerged), b_size], dim=1)
    new_pos = torch.cat([a_pos.gather(1, unmerged), b_pos], dim=1)
    perm = new_pos.argsort(dim=-1)
    rank = perm.argsort(dim=-1)  # concatenated index -> index in the sorted list
    new_tokens, new_size, new_pos = (_gather_rows(new_tokens, perm), new_size.gather(1, perm),
                                     new_pos.gather(1, perm))
    old_to_new = torch.zeros(B, n, dtype=torch.long, device=tokens.device)
    b_old = (2 * torch.arange(nb, device=tokens.device) + 1).expand(B, nb)
    old_to_new = old_to_new.scatter(1, 2 * unmerged, rank[:, :n_unm])
    old_to_new = old_to_new.scatter(1, b_old, rank[:, n_unm:])
    old_to_new = old_to_new.scatter(1, 2 * src, rank[:, n_unm:].gather(1, dst))
    return new_tokens, new_size, new_pos, old_to_new


def bipartite_merge(x: Tensor, n: int,
                    hw: Optional[Tuple[int, int]] = None) -> Tuple[Tensor, MergeState]:
    """Merge the N tokens of each image into ``n`` by rounds of bipartite soft matching.

    Args:
        x: (B, N, C) tokens in raster order.
        n: tokens to keep per image, 1 <= n <= N.
        hw: the grid (H, W) (defaults to (1, N)).
    Returns:
        (B, n, C) merged tokens (the size-weighted mean of the tokens merged into each) and
        the :class:`MergeState` to restore the full map with :func:`unmerge`.
    """
    B, N, C = x.shape
    if not 1 <= n <= N:
        raise ValueError(f"cannot merge {N} tokens into {n}")
    hw = hw or (1, N)
    device = x.device
    tokens = x
    size = x.new_ones(B, N)
    pos = torch.arange(N, device=device).expand(B, N)
    assign = pos
    while tokens.shape[1] > n:
        cur = tokens.shape[1]
        r = min(cur - n, (cur + 1) // 2)
        tokens, size, pos, old_to_new = _merge_round(tokens, size, pos, r)
        assign = old_to_new.gather(1, assign)
    return tokens, MergeState(assign=assign, size=size, pos=pos, hw=hw)


def unmerge(tokens: Tensor, state: MergeState) -> Tensor:
    """(B, n, C) merged tokens -> (B, N, C): every position gets its merged token's feature."""
    return _gather_rows(tokens, state.assign)


def run_block_on_merged(block: nn.Module, tokens: Tensor, state: MergeState,
                        kernel: AttentionKernel, quantum: int = DEFAULT_QUANTUM,
                        proportional: bool = True) -> Tensor:
    """Run a Detectron2 ViTDet ``Block`` on merged tokens (B, n, C) -> (B, n, C).

    Each merged token is placed at its grid position and the block runs on those positions
    only (:func:`.sparse_block.run_block_gathered` with ``kernel`` and ``quantum``); a
    windowed block attends within the windows of those positions. ``proportional``: ToMe's
    proportional attention (every key's ``log(size)`` added to its logits).
    """
    B, n, C = tokens.shape
    H, W = state.hw
    N = H * W
    flat_pos = (state.pos + (torch.arange(B, device=tokens.device) * N)[:, None]).reshape(-1)
    # a mask from a tensor copy: index_fill with a Python bool breaks jit tracing (FLOPs)
    ones = torch.ones(flat_pos.shape, device=tokens.device)
    keep = torch.zeros(B * N, device=tokens.device).index_copy(0, flat_pos, ones).view(B, N) > 0
    x = tokens.new_zeros(B * N, C).index_copy(0, flat_pos, tokens.reshape(B * n, C))
    log_size = None
    if proportional:
        log_size = tokens.new_zeros(B * N).index_copy(
            0, flat_pos, state.size.reshape(-1).clamp_min(1e-6).log()).view(B, N)
    out = run_block_gathered(block, x.view(B, H, W, C), keep, kernel, quantum, log_size)
    return out.reshape(B * N, C).index_select(0, flat_pos).view(B, n, C)


@REDUCER_REGISTRY.register()
class ToMeReducer:
    """ToMe for a PrunedViT block: merge to ``n`` tokens, run the block, unmerge.

    Args:
        proportional: add ``log(size)`` of each key to the attention logits (ToMe).
    """

    def __init__(self, proportional: bool = True):
        self.proportional = proportional

    def reduce(self, x: Tensor, n: int) -> Tuple[Tensor, MergeState]:
        """(B, H, W, C) token map -> (B, n, C) merged tokens and their state."""
        B, H, W, C = x.shape
        return bipartite_merge(x.reshape(B, H * W, C), n, (H, W))

    def run_block(self, block: nn.Module, tokens: Tensor, state: MergeState,
                  kernel: AttentionKernel, quantum: int = DEFAULT_QUANTUM) -> Tensor:
        """(B, n, C) merged tokens through ``block`` (see :func:`run_block_on_merged`)."""
        return run_block_on_merged(block, tokens, state, kernel, quantum, self.proportional)

    def restore(self, tokens: Tensor, state: MergeState) -> Tensor:
        """(B, n, C) -> (B, H, W, C) full map."""
        H, W = state.hw
        return unmerge(tokens, state).view(tokens.shape[0], H, W, tokens.shape[-1])

    def __repr__(self) -> str:
        return f"ToMeReducer(proportional={self.proportional})"
