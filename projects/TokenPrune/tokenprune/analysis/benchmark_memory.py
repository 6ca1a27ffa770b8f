"""Peak memory of the benchmark's variants: live tensors in this process, or the resident
set of a fresh process per variant (:mod:`.memory_probe`); see :mod:`.benchmark`'s
docstring for the methods."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from typing import Dict, Tuple

import torch

from .benchmark import Bench, applied, runner
from .benchmark_options import BenchmarkOptions
from .memory import tensor_peak
from .memory_probe import PROBE_TAG, probe_request

__all__ = ["peak_memory"]


def _tensor_peaks(bench: Bench, device: str) -> Dict[str, Dict[str, float]]:
    out = {}
    with torch.no_grad():
        for v in _eager_variants(bench):
            with applied(bench, v):
                out[v.key] = {s: tensor_peak(runner(bench, v, s), device) for s in bench.scopes}
    return out


def _eager_variants(bench: Bench):
    """The variants whose memory is measured: the eager ones (a compiled variant's first
    calls compile, and its graphs' buffers are not those of one forward)."""
    return [v for v in bench.variants if v.compile == "none"]


def _resident_peaks_per_process(bench: Bench, options: BenchmarkOptions) -> Tuple[dict, str]:
    """Each variant's resident peaks in a fresh ``python -m tokenprune.analysis.memory_probe``
    on this process's settings (its thread count, the resolved input size)."""
    import tokenprune

    probe_options = replace(options, threads=torch.get_num_threads(),
                            input_size=bench.input_size, memory="rss")
    out, method = {}, ""
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(tokenprune.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    for v in _eager_variants(bench):
        proc = subprocess.run([sys.executable, "-m", "tokenprune.analysis.memory_probe"],
                              input=probe_request(probe_options, bench.batch, v.key),
                              capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(PROBE_TAG)]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory probe for {v.name} failed (exit {proc.returncode}):\n"
                               + proc.stderr[-3000:])
        res = json.loads(lines[-1][len(PROBE_TAG):])
        out[v.key], method = res["peaks"], res["method"]
    return out, method


def peak_memory(bench: Bench, options: BenchmarkOptions) -> Tuple[dict, str]:
    """{variant key: {scope: MiB}} as ``options.memory`` asks, and how it was measured."""
    if options.memory == "off":
        return {}, "not measured (--memory off)"
    if options.memory == "tensors" and options.device.startswith("cuda"):
        return _tensor_peaks(bench, options.device), (
            "CUDA tensors: torch.cuda.max_memory_allocated() during one forward minus "
            "memory_allocated() before it")
    if options.memory == "tensors":
        return _tensor_peaks(bench, options.device), (
            "CPU tensors: peak of live tensor memory during one forward (torch.profiler "
            "allocation records) minus the live memory before it")
    mem, how = _resident_peaks_per_process(bench, options)
    return mem, ("CPU: resident-set high-water mark during the first forward in a fresh "
                 "process per variant, minus the resident set before it"
                 + (" (VmHWM reset via /proc/self/clear_refs)" if how == "VmHWM"
                    else " (ru_maxrss delta: a lower bound)"))
