"""Keep counts and SViT's keep-ratio schedule."""
from __future__ import annotations

import math

__all__ = ["keep_count", "svit_schedule"]


def keep_count(ratio: float, num_tokens: int) -> int:
    """Tokens a top-k rate ``ratio`` keeps of ``num_tokens``: ceil(ratio * N), in [1, N]."""
    return min(max(1, math.ceil(ratio * num_tokens - 1e-6)), num_tokens)


def svit_schedule(depth: int, dense_fraction: float = 0.25, base: float = 0.7) -> dict:
    """SViT's schedule for a ViT of ``depth`` blocks: the first quarter dense, the rest in
    three equal stages keeping ``base``, ``base**2``, ``base**3`` (0.7 / 0.49 / 0.343).

    Returns ``dict(pruned_blocks=[...], keep_ratios=[...])`` for :class:`PrunedViT`.
    """
    first = int(round(depth * dense_fraction))
    blocks = list(range(first, depth))
    ratios = [round(base ** (1 + min(2, 3 * k // len(blocks))), 4) for k in range(len(blocks))]
    return dict(pruned_blocks=blocks, keep_ratios=ratios)
