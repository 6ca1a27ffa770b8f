"""Paired statistics over seeds and the verdict rule of the studies (SViT's findings, VLTP).

A finding compares two rows that share everything but one switch, seed by seed: the per-seed
differences ``a - b`` (AP points) are summarised by their mean, sample standard deviation, a
Student-t confidence interval and the exact two-sided sign-flip p-value (every one of the
``2**K`` sign patterns of the K differences is equally likely if the switch does nothing).

The verdict rule (committed before the reported run, docs/study.md):

* ``"holds"`` (a claim that one row beats the other, ``kind="above"``): the 95% interval
  excludes 0 in the claimed direction;
* ``"comparable"`` (``kind="comparable"``, e.g. "the MLP gate is enough", "SViT loses
  nothing"): the 90% interval lies within ``+-margin`` AP;
* ``"reversed"`` (an "above" claim): the 95% interval excludes 0 against the claim;
* otherwise ``"cannot tell"`` (also with fewer than 2 seeds).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence, Tuple

from scipy import stats

__all__ = ["Paired", "paired", "t_interval", "sign_flip_p", "verdict", "HOLDS", "COMPARABLE",
           "CANNOT_TELL", "REVERSED", "VERDICT_RULE"]

HOLDS, COMPARABLE, REVERSED, CANNOT_TELL = "holds", "comparable", "reversed", "cannot tell"
#: The rule in words, printed under every table that gives verdicts.
VERDICT_RULE = ("holds = the 95% t-interval of the paired differences excludes 0 in the "
                "claimed direction (reversed: against it); comparable = the 90% t-interval "
                "lies within +-{margin} AP; otherwise cannot tell")


@dataclass(frozen=True)
class Paired:
    """Summary of K paired differences (AP points).

    Attributes:
        diffs: the per-seed differences a - b, in seed order.
        mean, sd: their mean and sample standard deviation (nan below 2 seeds).
        ci95, ci90: two-sided Student-t intervals of the mean (nan below 2 seeds).
        p: the exact two-sided sign-flip p-value (1.0 without seeds).
    """

    diffs: Tuple[float, ...]
    mean: float
    sd: float
    ci95: Tuple[float, float]
    ci90: Tuple[float, float]
    p: float


def t_interval(values: Sequence[float], level: float) -> Tuple[float, float]:
    """Two-sided Student-t interval of the mean of ``values`` at ``level`` (e.g. 0.95);
    (nan, nan) below two values."""
    k = len(values)
    if k < 2:
        return math.nan, math.nan
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = float(stats.t.ppf(0.5 + level / 2, k - 1)) * sd / math.sqrt(k)
    return mean - half, mean + half


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided sign-flip (paired permutation) p-value of the mean of ``diffs``: the
    share of the ``2**K`` sign patterns whose |mean| reaches the observed one. With K = 5 the
    smallest possible value is 2/32 = 0.0625."""
    if not diffs:
        return 1.0
    observed = abs(sum(diffs)) - 1e-9 * max(1.0, sum(abs(d) for d in diffs))
    hits = sum(abs(sum(s * d for s, d in zip(signs, diffs))) >= observed
               for signs in itertools.product((1, -1), repeat=len(diffs)))
    return hits / 2 ** len(diffs)


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """The paired summary of ``a - b`` seed by seed (equal lengths)."""
    if len(a) != len(b):
        raise ValueError(f"paired rows need one value per seed each, got {len(a)} and {len(b)}")
    diffs = tuple(float(x) - float(y) for x, y in zip(a, b))
    k = len(diffs)
    mean = sum(diffs) / k if k else math.nan
    sd = (math.sqrt(sum((d - mean) ** 2 for d in diffs) / (k - 1)) if k > 1 else math.nan)
    return Paired(diffs, mean, sd, t_interval(diffs, 0.95), t_interval(diffs, 0.90),
                  sign_flip_p(diffs))


def verdict(summary: Paired, kind: str, margin: float = 1.0) -> str:
    """The verdict rule (module docstring) for a claim of ``kind`` "above" (a beats b) or
    "comparable" (a within ``margin`` AP of b)."""
    if kind not in ("above", "comparable"):
        raise ValueError(f"kind must be 'above' or 'comparable', got {kind!r}")
    if len(summary.diffs) < 2:
        return CANNOT_TELL
    if kind == "above":
        low, high = summary.ci95
        return HOLDS if low > 0 else REVERSED if high < 0 else CANNOT_TELL
    low, high = summary.ci90
    return COMPARABLE if -margin <= low and high <= margin else CANNOT_TELL
