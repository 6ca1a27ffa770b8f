"""FlexAttention for the gathered blocks: every kept token in one packed sequence.

The M kept tokens of a block (all images, all windows) form one sequence; a token attends
to the tokens of its own group only (a block-diagonal ``mask_mod``, so FlexAttention skips
every (query block, key block) tile outside the groups: no padding at all), and the
decomposed relative positions are a ``score_mod`` that adds each query's precomputed
per-row and per-column terms (:func:`.attention.rel_pos_lines`) for the key's row and
column. The sequence is padded to a multiple of :data:`SEQUENCE_QUANTUM` (the padding is
a group of its own, dropped after), so the compiled kernel sees few distinct shapes.
On CUDA the kernel is compiled (``torch.compile(flex_attention)``, once per process);
elsewhere FlexAttention runs its unfused reference, which materialises the
(M, M) scores: correct, for tests, not fast.
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Callable, Tuple

import torch
from torch import Tensor

from .attention import rel_pos_lines

__all__ = ["flex_attention_packed", "SEQUENCE_QUANTUM"]

SEQUENCE_QUANTUM = 128  # FlexAttention's default tile


@lru_cache(maxsize=None)
def _kernel(device_type: str) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    if device_type == "cuda":
        return torch.compile(flex_attention, dynamic=True)
    return flex_attention


def flex_attention_packed(attn_module: torch.nn.Module, qkv: Tensor, group: Tensor,
                          coords: Tensor, frame: Tuple[int, int]) -> Tensor:
    """(M, 3C) q/k/v of M packed tokens -> (M, C) attention output before the projection,
    each token attending to the tokens of its ``group`` (M,) only; ``coords`` (M, 2) long:
    each token's (row, col) in its attention frame of size ``frame``."""
    from torch.nn.attention.flex_attention import create_block_mask

    M, C3 = qkv.shape
    pad = -M % SEQUENCE_QUANTUM
    if pad:
        qkv = torch.cat([qkv, qkv.new_zeros(pad, C3)])
        group = torch.cat([group, group.new_full((pad,), -1)])
        coords = torch.cat([coords, coords.new_zeros(pad, 2)])
    S = M + pad
    nh = attn_module.num_heads
    q, k, v = qkv.reshape(1, S, 3, nh, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (1, nh, S, hd)

    def same_group(b, h, q_idx, kv_idx):
        return group[q_idx] == group[kv_idx]

    block_mask = create_block_mask(same_group, None, None, S, S, device=qkv.device)
    score_mod = None
    if attn_module.use_rel_pos:
        (lh, ph), (lw, pw) = rel_pos_lines(q, attn_module.rel_pos_h, attn_module.rel_pos_w,
                                           coords, frame)
        lh, lw, ph, pw = lh[0], lw[0], ph[0], pw[0]  # (nh, M, h), (nh, M, w), (M,), (M,)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + lh[h, q_idx, ph[kv_idx]] + lw[h, q_idx, pw[kv_idx]]

    with warnings.catch_warnings():  # the unfused reference off CUDA warns once
        warnings.filterwarnings("ignore", message="flex_attention called without")
        out = _kernel(qkv.device.type)(q, k, v, score_mod=score_mod, block_mask=block_mask,
                                       scale=attn_module.scale)
    return out.transpose(1, 2).reshape(S, C3 // 3)[:M]
