"""Latency: the one interleaved median timer of the benchmark, the ablation and the
trade-off sweep, its paired form (a reference against a variant), the spread of its rounds
and the busy-machine warning."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = ["BUSY_SPREAD", "interleaved_times", "paired_latency", "spread", "busy_warning"]

# max / min of a dense reference's timed rounds above which the machine counts as busy
BUSY_SPREAD = 1.3


def interleaved_times(calls: Sequence[Callable[[], object]], rounds: int, warmup: int = 1,
                      cuda: bool = False, after_call: Optional[Callable[[int], None]] = None,
                      before_round: Optional[Callable[[int], None]] = None
                      ) -> Tuple[List[List[float]], List[List[float]]]:
    """Wall-clock and CPU seconds of every call of ``calls``, interleaved.

    ``warmup`` untimed rounds, then ``rounds`` timed ones; each round runs every call once,
    the order rotated by one every round, so that slow drift of the machine (thermal, other
    processes) spreads over all calls. CPU time is the process's (``time.process_time``,
    all threads). With ``cuda`` every call is bracketed by ``torch.cuda.synchronize()``.
    ``after_call(i)`` runs after each call of ``calls[i]``, untimed (progress, statistics);
    ``before_round(r)`` before round r (0-based, warm-up rounds first), untimed (inputs).
    Returns (wall, cpu): per call, the list of its timed seconds; take their medians.
    """
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    wall: List[List[float]] = [[] for _ in calls]
    cpu: List[List[float]] = [[] for _ in calls]
    n = len(calls)
    for r in range(warmup + rounds):
        if before_round is not None:
            before_round(r)
        for i in [(r + k) % n for k in range(n)]:
            sync()
            c0, t0 = time.process_time(), time.perf_counter()
            calls[i]()
            sync()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if r >= warmup:
                wall[i].append(dt)
                cpu[i].append(dc)
            if after_call is not None:
                after_call(i)
    return wall, cpu


def paired_latency(reference: Sequence[Callable[[], object]],
                   variant: Sequence[Callable[[], object]], rounds: int, warmup: int = 1,
                   cuda: bool = False) -> Tuple[float, float]:
    """Median milliseconds of the calls of ``reference`` and of ``variant`` (one call per
    input each, the two lists in the same input order), interleaved reference / variant
    input by input (:func:`interleaved_times`), without gradients, so that slow drift of the
    machine affects both alike. Returns (reference ms, variant ms)."""
    if len(reference) != len(variant) or not reference:
        raise ValueError("paired_latency needs one reference and one variant call per input")
    calls = [c for pair in zip(reference, variant) for c in pair]
    with torch.no_grad():
        wall, _ = interleaved_times(calls, rounds, warmup=warmup, cuda=cuda)
    ref = [t for ts in wall[0::2] for t in ts]
    own = [t for ts in wall[1::2] for t in ts]
    return 1e3 * statistics.median(ref), 1e3 * statistics.median(own)


def spread(seconds: Sequence[float]) -> Dict[str, float]:
    """{"min_ms", "median_ms", "max_ms"} of timed rounds in seconds."""
    return {"min_ms": 1e3 * min(seconds), "median_ms": 1e3 * statistics.median(seconds),
            "max_ms": 1e3 * max(seconds)}


def busy_warning(dense: Mapping[str, Sequence[float]],
                 limit: float = BUSY_SPREAD) -> Optional[str]:
    """A warning when a dense reference's rounds (``dense``: {row name: seconds}) spread
    by more than ``limit`` (max / min): the same work took that much longer in some rounds,
    so the machine is busy and the speedups are unreliable. None when every row is steady."""
    ratios = {name: max(t) / min(t) for name, t in dense.items() if t and min(t) > 0}
    wide = {name: r for name, r in ratios.items() if r > limit}
    if not wide:
        return None
    rows = ", ".join(f"{name} {r:.2f}x" for name, r in wide.items())
    return (f"dense timings spread max / min {rows} (> {limit:g}): the machine is busy; "
            "the ratio is unreliable")
