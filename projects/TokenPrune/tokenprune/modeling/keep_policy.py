"""How many tokens a pruned block keeps: keep counts, SViT's keep-ratio schedule, and the
inference keep decision (:class:`KeepPolicy`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["keep_count", "svit_ratios", "svit_schedule", "per_block_ratios",
           "target_keep_ratios", "checked_pruned_blocks", "KeepPolicy"]

Ratios = Union[float, Sequence[float], Mapping[int, float]]


def keep_count(ratio: float, num_tokens: int) -> int:
    """Tokens a top-k rate ``ratio`` keeps of ``num_tokens``: ceil(ratio * N), in [1, N]."""
    return min(max(1, math.ceil(ratio * num_tokens - 1e-6)), num_tokens)


def svit_ratios(num_blocks: int, base: float = 0.7) -> list:
    """SViT's keep ratios for ``num_blocks`` pruned blocks: three equal stages keeping
    ``base``, ``base**2``, ``base**3`` (9 blocks at 0.7: 0.7 x3, 0.49 x3, 0.343 x3).
    ValueError unless ``base`` lies in (0, 1]."""
    if not 0.0 < base <= 1.0:
        raise ValueError(f"keep_base must lie in (0, 1], got {base:g}")
    return [round(base ** (1 + min(2, 3 * k // num_blocks)), 4) for k in range(num_blocks)]


def svit_schedule(depth: int, dense_fraction: float = 0.25, base: float = 0.7) -> dict:
    """SViT's schedule for a ViT of ``depth`` blocks: the first quarter dense, the rest
    pruned at :func:`svit_ratios` (0.7 / 0.49 / 0.343).

    Returns ``dict(pruned_blocks=[...], keep_ratios=[...])`` for :class:`PrunedViT`.
    """
    first = int(round(depth * dense_fraction))
    blocks = list(range(first, depth))
    return dict(pruned_blocks=blocks, keep_ratios=svit_ratios(len(blocks), base))


def per_block_ratios(value: Ratios, blocks: Sequence[int], name: str) -> Dict[int, float]:
    """{block: ratio} from one ratio for all ``blocks``, one per block (in order) or a
    {block: ratio} mapping; ValueError (naming ``name``) unless each lies in (0, 1] (checked
    first) and a list has one entry per block."""
    if isinstance(value, Mapping):
        value = [value[i] for i in blocks]
    one = isinstance(value, (int, float))
    values = [float(value)] if one else [float(v) for v in value]
    if any(not 0.0 < v <= 1.0 for v in values):
        raise ValueError(f"{name} must lie in (0, 1], got {values[0] if one else values}")
    if one:
        values = values * len(blocks)
    elif len(values) != len(blocks):
        raise ValueError(f"{name} has {len(values)} entries for {len(blocks)} pruned blocks "
                         f"{list(blocks)} (or give one number for all)")
    return dict(zip(blocks, values))


def target_keep_ratios(blocks: Sequence[int], keep_ratios: Union[None, float, Sequence[float]],
                       keep_base: Optional[float]) -> Dict[int, float]:
    """{block: target keep ratio} of the pruned ``blocks`` from ``keep_ratios`` (one for
    all, or one per block; None: 0.7) or SViT's schedule from ``keep_base``
    (:func:`svit_ratios`); ValueError if both are given or a ratio is out of range."""
    if keep_base is None:
        return per_block_ratios(0.7 if keep_ratios is None else keep_ratios, blocks,
                                "keep_ratios")
    if keep_ratios is not None:
        raise ValueError(f"give keep_ratios or keep_base, not both (keep_ratios="
                         f"{keep_ratios}, keep_base={keep_base})")
    return dict(zip(blocks, svit_ratios(len(blocks), keep_base)))


def checked_pruned_blocks(pruned_blocks: Sequence[int], vit_blocks: Sequence) -> List[int]:
    """Sorted distinct indices into ``vit_blocks`` (a ViT's ``blocks``), none with a
    residual conv block; ValueError if not."""
    depth = len(vit_blocks)
    blocks = sorted(int(i) for i in pruned_blocks)
    if len(set(blocks)) != len(blocks) or any(not 0 <= i < depth for i in blocks):
        raise ValueError(f"pruned_blocks must be distinct indices in [0, {depth}), "
                         f"got {list(pruned_blocks)}")
    for i in blocks:
        if vit_blocks[i].use_residual_block:
            raise ValueError(f"block {i} has a residual conv block and cannot be pruned")
    return blocks


@dataclass(frozen=True)
class KeepPolicy:
    """The inference keep decision of the gated blocks, from their gates' scores.

    Attributes:
        ratios: {block: r}, a fixed top-k rate: ``keep_count(r, N)`` tokens per image (the
            highest scores); None: dynamic, a token is kept iff its gate says keep (score
            > 0; the count varies per image).
        image_scales: only with ``ratios``: image b of the batch keeps the top
            ``keep_count(min(1, r * image_scales[b]), N)`` (unequal counts at a known mean).
        inherit: a token pruned at one block stays pruned at the next (SViT's reactivation
            off): only the tokens still active compete.
    """

    ratios: Optional[Dict[int, float]] = None
    image_scales: Optional[Tuple[float, ...]] = None
    inherit: bool = False

    def __post_init__(self):
        if self.image_scales is not None and (self.ratios is None or not self.image_scales
                                              or min(self.image_scales) <= 0):
            raise ValueError("image_scales needs a forced keep_ratio and positive factors")

    def decide(self, block: int, score: Tensor, active: Tensor) -> Tensor:
        """(B, N) keep-minus-drop scores of ``block``'s gate -> (B, N) bool keep mask, at
        least one token per image; ``active`` (B, N) bool: the tokens still in play.

        Raises FloatingPointError for a NaN score (NaN input or weights), which would
        otherwise drop every token but one.
        """
        nan = torch.isnan(score)
        if bool(nan.any()):
            raise FloatingPointError(f"the gate of block {block} gave NaN keep scores for "
                                     f"{int(nan.sum())} of {nan.numel()} tokens (NaN in the "
                                     f"input image or the weights?)")
        if self.inherit:
            score = score.masked_fill(~active, float("-inf"))
        if self.ratios is None:
            keep = score > 0
            empty = ~keep.any(dim=1)
            if bool(empty.any()):
                keep[empty, score[empty].argmax(dim=1)] = True
            return keep
        ratio = self.ratios[block]
        if self.image_scales is not None:
            return self._per_image_top_k(score, ratio, active)
        N = score.shape[1]
        k = keep_count(ratio, N)
        if self.inherit:
            k = min(k, int(active.sum(dim=1).min()))
        if k == N:
            return torch.ones_like(active)
        top = score.topk(k, dim=1).indices
        return torch.zeros_like(active).scatter_(1, top, 1)

    def _per_image_top_k(self, score: Tensor, ratio: float, active: Tensor) -> Tensor:
        """(B, N) scores -> (B, N) bool: image b keeps its top keep_count(ratio * scale_b)."""
        B, N = score.shape
        scales = self.image_scales
        if len(scales) != B:
            raise ValueError(f"image_scales has {len(scales)} factors for a batch of {B}")
        k = torch.tensor([keep_count(min(1.0, ratio * s), N) for s in scales],
                         device=score.device)
        if self.inherit:
            k = torch.minimum(k, active.sum(dim=1))
        order = score.argsort(dim=1, descending=True)
        ranked = torch.arange(N, device=score.device)[None] < k[:, None]
        return torch.zeros_like(active).scatter_(1, order, ranked)
