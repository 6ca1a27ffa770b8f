"""The benchmark's ``--profile``: one profiled backbone forward per variant, ``profile.md``."""
from __future__ import annotations

import time

import torch

from .benchmark import Bench, applied, runner

__all__ = ["profile_report"]


def profile_report(bench: Bench) -> str:
    """profile.md: one profiled backbone forward per variant (the model's ``tp::`` ranges)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    labels = ["tp::gate", "tp::group_kept_tokens", "tp::buckets", "tp::pack", "tp::unpack",
              "tp::rel_pos_bias", "tp::gathered_block", "tp::dense_block"]
    parts = ["# Profile of one backbone forward per variant\n",
             "Inclusive CPU time inside the labelled pieces (ms), then the operators with "
             "the most self CPU time.\n"]
    with torch.no_grad():
        for v in bench.variants:
            with applied(bench, v):
                runner(bench, v, "backbone")()  # warm
                with profile(activities=activities) as prof:
                    t0 = time.perf_counter()
                    runner(bench, v, "backbone")()
                    wall = time.perf_counter() - t0
            ka = prof.key_averages()
            by_key = {e.key: e for e in ka}
            parts.append(f"\n## {v.name} (wall {wall * 1e3:.1f} ms under the profiler)\n\n")
            parts.append("| piece | calls | CPU ms (inclusive) |\n|---|---:|---:|\n")
            for label in labels:
                e = by_key.get(label)
                if e is not None:
                    parts.append(f"| {label} | {e.count} | {e.cpu_time_total / 1e3:.1f} |\n")
            parts.append("\n```\n" + ka.table(sort_by="self_cpu_time_total", row_limit=20)
                         + "\n```\n")
    return "".join(parts)
