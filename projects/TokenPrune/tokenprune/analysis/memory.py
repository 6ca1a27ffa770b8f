"""Peak memory of one forward: live tensor memory, or the process's resident set.

* :func:`tensor_peak`: the peak of live PyTorch tensor memory during ``fn()`` minus the live
  memory before it. CUDA: ``torch.cuda.max_memory_allocated()`` minus
  ``memory_allocated()``. CPU: the same quantity from ``torch.profiler``'s allocation
  records (``profile_memory=True``; the running sum of allocations and frees).
* :func:`resident_peaks`: the process's resident-set high-water mark (Linux), reset through
  ``/proc/self/clear_refs`` before each call and read after it, relative to the resident set
  before the first; meant for a fresh process per measurement.
"""
from __future__ import annotations

import gc
from typing import Callable, Dict, Tuple

import torch

__all__ = ["tensor_peak", "resident_peaks", "MIB"]

MIB = 1024.0 ** 2


def tensor_peak(fn: Callable[[], object], device: str) -> float:
    """Peak live tensor memory (MiB) during ``fn()`` above the live memory before it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / MIB
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak / MIB


def _proc_status() -> Dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def resident_peaks(calls: Dict[str, Callable[[], object]]) -> Tuple[Dict[str, float], str]:
    """{name: extra resident MiB of its first call}, and the method ("VmHWM", or
    "ru_maxrss" where the high-water mark cannot be reset: correct only if it grows)."""
    result = {}
    gc.collect()
    if _reset_hwm():
        base = _proc_status()["VmRSS"]
        for name, fn in calls.items():
            _reset_hwm()
            fn()
            result[name] = (_proc_status()["VmHWM"] - base) / MIB
        return result, "VmHWM"
    import resource

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for name, fn in calls.items():
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result[name] = max(0, peak - base) / MIB
    return result, "ru_maxrss"
