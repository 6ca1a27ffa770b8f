"""Peak memory of the benchmark's variants: live tensors in this process, or the resident
set of a fresh process per variant (the tool re-run with ``--memory-probe``); see
:mod:`.benchmark`'s docstring for the methods."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List, Tuple

import torch

from .benchmark import Bench, applied
from .memory import resident_peaks, tensor_peak

__all__ = ["peak_memory", "memory_probe", "PROBE_TAG"]

PROBE_TAG = "TOKENPRUNE_MEMORY_PROBE "


def _tensor_peaks(bench: Bench, device: str) -> Dict[str, Dict[str, float]]:
    out = {}
    with torch.no_grad():
        for v in bench.variants:
            with applied(bench, v):
                out[v.key] = {s: tensor_peak(bench.runners[s], device) for s in bench.scopes}
    return out


def memory_probe(bench: Bench, args) -> None:
    """Child process: one variant's resident peaks, printed as one tagged JSON line."""
    (variant,) = [v for v in bench.variants if v.key == args.memory_probe]
    with torch.no_grad(), applied(bench, variant):
        peaks, method = resident_peaks({s: bench.runners[s] for s in bench.scopes})
    print(PROBE_TAG + json.dumps({"method": method, "peaks": peaks}), flush=True)


def _probe_command(bench: Bench, args, key: str, module: str) -> List[str]:
    cmd = [sys.executable, "-m", module, "--config-file", args.config_file,
           "--threads", str(torch.get_num_threads()), "--attention", *args.attention,
           "--precision", args.precision,
           "--device", args.device, "--batch-size", str(bench.batch),
           "--input-size", str(args.input_size), "--weights", args.weights,
           "--memory", "rss", "--memory-probe", key]
    if args.keep_ratios:
        cmd += ["--keep-ratios", *[repr(r) for r in args.keep_ratios]]
    if args.schedule:
        cmd += ["--schedule", args.schedule]
    if args.backbone_only:
        cmd.append("--backbone-only")
    if args.prompt is not None:
        cmd += ["--prompt", args.prompt]
    if args.task_id is not None:
        cmd += ["--task-id", str(args.task_id)]
    return cmd + ["--", *args.opts]


def _resident_peaks_per_process(bench: Bench, args, module: str) -> Tuple[dict, str]:
    """Each variant's resident peaks in a fresh ``python -m module`` (the tool's probe)."""
    import tokenprune

    out, method = {}, ""
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(tokenprune.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    for v in bench.variants:
        proc = subprocess.run(_probe_command(bench, args, v.key, module), capture_output=True,
                              text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(PROBE_TAG)]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory probe for {v.name} failed (exit {proc.returncode}):\n"
                               + proc.stderr[-3000:])
        res = json.loads(lines[-1][len(PROBE_TAG):])
        out[v.key], method = res["peaks"], res["method"]
    return out, method


def peak_memory(bench: Bench, args, probe_module: str) -> Tuple[dict, str]:
    """{variant key: {scope: MiB}} as ``args.memory`` asks, and how it was measured."""
    if args.memory == "off":
        return {}, "not measured (--memory off)"
    if args.memory == "tensors" and args.device.startswith("cuda"):
        return _tensor_peaks(bench, args.device), (
            "CUDA tensors: torch.cuda.max_memory_allocated() during one forward minus "
            "memory_allocated() before it")
    if args.memory == "tensors":
        return _tensor_peaks(bench, args.device), (
            "CPU tensors: peak of live tensor memory during one forward (torch.profiler "
            "allocation records) minus the live memory before it")
    mem, how = _resident_peaks_per_process(bench, args, probe_module)
    return mem, ("CPU: resident-set high-water mark during the first forward in a fresh "
                 "process per variant, minus the resident set before it"
                 + (" (VmHWM reset via /proc/self/clear_refs)" if how == "VmHWM"
                    else " (ru_maxrss delta: a lower bound)"))
