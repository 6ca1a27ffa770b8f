"""The studies' worker processes: the fine-tune work split over ``--jobs`` processes of
one thread each (one per CPU core: 1.8x the iterations per second of one process on two
threads, measured on this project's 2-core machine), their progress lines relayed to the
console. Used by :func:`tokenprune.study.runner.run_ablation` (units: seeds) and
:func:`tokenprune.study.vltp_runner.run_vltp_study` (units: setting and seed)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Sequence, Tuple, TypeVar

T = TypeVar("T")

__all__ = ["split_seeds", "balance", "run_workers", "progress"]


def progress(message: str) -> None:
    """A timestamped progress line on stdout (the lines the workers' logs relay start so)."""
    print(f"[ablation {time.strftime('%H:%M:%S')}] {message}", flush=True)


def split_seeds(seeds: Sequence[int], jobs: int) -> List[List[int]]:
    """The seeds of each of ``jobs`` workers (round robin; empty workers dropped)."""
    return [list(seeds[k::jobs]) for k in range(min(jobs, len(seeds)))]


def balance(costs: Dict[T, float], jobs: int) -> List[List[T]]:
    """The units of each of ``jobs`` workers, the costliest first to the least loaded worker
    (longest processing time first); empty workers dropped."""
    loads: List[Tuple[float, int, List[T]]] = [(0.0, k, []) for k in range(jobs)]
    for unit in sorted(costs, key=lambda u: -costs[u]):
        load, k, part = min(loads)
        part.append(unit)
        loads[k] = (load + costs[unit], k, part)
    return [part for _, _, part in sorted(loads, key=lambda x: x[1]) if part]


def run_workers(output: str, scale_name: str, parts: Sequence[Sequence[Any]],
                extra: Sequence[str]) -> None:
    """One worker process per part (``--worker-units``: the part's units joined by commas),
    one thread each; waits for all and raises if one failed (its log: ``worker<k>.txt``)."""
    procs = []
    for k, seeds in enumerate(parts):
        log = open(os.path.join(output, f"worker{k}.txt"), "a")
        cmd = [sys.executable, "-m", "tokenprune.tools.ablation", "--output", output,
               "--scale", scale_name, "--worker-units", ",".join(map(str, seeds)), *extra]
        procs.append((k, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        progress(f"worker {k}: {', '.join(map(str, seeds))} (log {log.name})")
    offsets = [0] * len(procs)
    while True:
        running = any(proc.poll() is None for _, proc, _ in procs)
        for k, _, log in procs:  # the workers' progress lines, on this console
            with open(log.name) as f:
                f.seek(offsets[k])
                text = f.read()
            whole = text[:text.rfind("\n") + 1]
            offsets[k] += len(whole.encode())
            for line in whole.splitlines():
                if line.startswith("[ablation"):
                    print(f"  worker {k} {line}", flush=True)
        if not running:
            break
        time.sleep(5)
    failed = [f"worker {k} (exit {proc.returncode}, see {log.name})"
              for k, proc, log in procs if proc.returncode != 0]
    for _, _, log in procs:
        log.close()
    if failed:
        raise RuntimeError(f"the study's workers failed: {', '.join(failed)}")
