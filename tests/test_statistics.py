"""The studies' paired statistics and verdict rule on hand-made cases."""
import math

import pytest

from tokenprune.study.statistics import (CANNOT_TELL, COMPARABLE, HOLDS, REVERSED, paired,
                                         sign_flip_p, t_interval, verdict)


def test_t_interval_of_a_hand_computed_case():
    # 1..5: mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776445
    low, high = t_interval([1, 2, 3, 4, 5], 0.95)
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert (low, high) == pytest.approx((3 - half, 3 + half), abs=1e-9)
    low90, high90 = t_interval([1, 2, 3, 4, 5], 0.90)
    assert low < low90 < 3 < high90 < high
    assert all(math.isnan(v) for v in t_interval([1.0], 0.95))


def test_sign_flip_p_is_exact():
    # all five differences positive: only the all-plus and all-minus patterns reach |sum| 15
    assert sign_flip_p([1, 2, 3, 4, 5]) == 2 / 32
    # four differences of size 1, observed sum 2: |sum| >= 2 in 1 + 4 + 4 + 1 of 16 patterns
    assert sign_flip_p([1, 1, 1, -1]) == pytest.approx(10 / 16)
    assert sign_flip_p([0.0, 0.0]) == 1.0
    assert sign_flip_p([]) == 1.0


def test_paired_differences_in_seed_order():
    s = paired([30.0, 32.0, 31.0], [29.0, 30.0, 31.5])
    assert s.diffs == pytest.approx((1.0, 2.0, -0.5))
    assert s.mean == pytest.approx(2.5 / 3)
    assert s.sd == pytest.approx(math.sqrt(sum((d - 2.5 / 3) ** 2 for d in s.diffs) / 2))
    with pytest.raises(ValueError, match="one value per seed"):
        paired([1.0, 2.0], [1.0])


@pytest.mark.parametrize("a, b, kind, expected", [
    ([3, 4, 5, 6, 7], [1, 1, 1, 1, 1], "above", HOLDS),          # interval [2.0, 6.0]
    ([1, 1, 1, 1, 1], [3, 4, 5, 6, 7], "above", REVERSED),
    ([1, -1, 2, -2, 0.5], [0] * 5, "above", CANNOT_TELL),        # straddles 0
    ([0.1, -0.2, 0.3, 0.0, -0.1], [0] * 5, "comparable", COMPARABLE),
    ([0.1, -0.2, 2.3, 0.0, -0.1], [0] * 5, "comparable", CANNOT_TELL),  # 90% reaches past 1
    ([5.0], [1.0], "above", CANNOT_TELL),                         # one seed decides nothing
])
def test_verdict_rule(a, b, kind, expected):
    assert verdict(paired(a, b), kind) == expected


def test_comparable_uses_the_90_percent_interval_and_the_margin():
    s = paired([0.6, 0.9, 0.3, 0.8, 0.4], [0.0] * 5)
    assert s.ci90[1] < 1.0 < s.ci95[1] + 0.5  # inside +-1 at 90%
    assert verdict(s, "comparable") == COMPARABLE
    assert verdict(s, "comparable", margin=0.5) == CANNOT_TELL
    with pytest.raises(ValueError, match="kind"):
        verdict(s, "below")
