"""The benchmark's run and report: result rows, ``results.md``, ``speedup.png``, the files.

:func:`run_benchmark` measures every variant of :mod:`.benchmark` and writes, each
atomically, ``profile.md`` (with ``--profile``), ``speedup.png``, ``results.md``, then
``results.json`` (present only after a complete run).
"""
from __future__ import annotations

import os
import platform
import statistics
from typing import Any, Dict, List, Tuple

import torch

from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, figure_png
from .benchmark import Bench, Variant, peak_memory, profile_report, setup, time_variants
from .cost import backbone_macs, uniform_keep_speedups

__all__ = ["run_benchmark", "markdown"]


def _scope_figures(bench: Bench, args, timing, v: Variant, scope: str) -> Dict[str, Any]:
    """Median, repeats, throughput and speedups of one variant in one scope."""
    ms, cpu_ms, times, _ = timing
    on_cpu = args.device == "cpu"
    med = ms[(v.key, scope)]
    return {
        "median_ms": med, "times_ms": [1e3 * t for t in times[(v.key, scope)]],
        "throughput_img_s": args.batch_size / (med / 1e3),
        "speedup": ms[("dense", scope)] / med,
        "cpu_time_median_ms": cpu_ms[(v.key, scope)] if on_cpu else None,
        "cpu_time_speedup": (cpu_ms[("dense", scope)] / cpu_ms[(v.key, scope)]
                             if on_cpu else None),
    }


def _variant_row(bench: Bench, args, timing, mem, v: Variant) -> Dict[str, Any]:
    """One variant's figures, the FLOP-predicted speedup next to the measured one."""
    observed = timing[3]
    dense_macs = backbone_macs(bench.spec, gates=False)
    per_image = [backbone_macs(bench.spec, {i: m[b] for i, m in observed["masks"][v.key].items()},
                               gates=not v.gates_off) for b in range(args.batch_size)]
    predicted = dense_macs * args.batch_size / sum(per_image)
    kr = observed["ratios"][v.key]
    backbone = _scope_figures(bench, args, timing, v, "backbone")
    backbone.update(predicted_gmacs_per_image=statistics.fmean(per_image) / 1e9,
                    predicted_speedup=predicted,
                    measured_over_predicted=backbone["speedup"] / predicted)
    return {
        "key": v.key, "name": v.name,
        "forced_keep_ratios": None if v.fixed is None else {str(i): r for i, r in
                                                            v.fixed.items()},
        "keep_ratios": {str(i): r for i, r in kr.items()},
        "mean_keep_ratio": statistics.fmean(kr.values()) if kr else 1.0,
        "backbone": backbone,
        "model": (_scope_figures(bench, args, timing, v, "model")
                  if "model" in bench.scopes else None),
        "peak_memory_mib": mem.get(v.key),
    }


def _notes(bench: Bench, args) -> List[str]:
    notes = []
    if bench.converted:
        notes.append("dense config: backbone converted in memory to a PrunedViT with SViT's "
                     "schedule (random gates; forced keep ratios only)")
    if args.weights == "random":
        notes.append("random weights (seeded): forced-rate timings do not depend on weights; "
                     "learned-gate variant needs --weights checkpoint")
    notes.append("box predictors' score threshold set to 0: the heads process "
                 "test_topk_per_image detections per image in every variant")
    return notes


def _results(bench: Bench, args, cfg, prog: str, rows, method: str) -> Dict[str, Any]:
    x, spec = bench.x, bench.spec
    return {
        "tool": prog, "config_file": args.config_file, "overrides": list(args.opts),
        "device": args.device,
        "device_name": (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                        else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "input_size": args.input_size, "backbone_input_hw": list(x.shape[-2:]),
        "token_grid": list(spec.grid),
        "batch_size": args.batch_size, "repeats": args.repeats, "warmup": args.warmup,
        "weights": "random (seed 0)" if args.weights == "random" else cfg.train.init_checkpoint,
        "converted_from_dense": bench.converted,
        "pruned_blocks": list(bench.vit.pruned_blocks),
        "window_blocks": [i for i, ws in enumerate(spec.window_sizes) if ws],
        "dense_backbone_gmacs_per_image": backbone_macs(spec, gates=False) / 1e9,
        "memory_method": method, "notes": _notes(bench, args), "variants": rows,
    }


def run_benchmark(cfg, args, out_dir: str, prog: str, probe_module: str) -> Dict[str, Any]:
    """Measure every variant, write the files into ``out_dir``; returns results.json's dict.

    ``cfg``: the loaded config; ``args``: the tool's arguments; ``probe_module``: the
    ``python -m`` module whose ``--memory-probe`` measures one variant (``--memory rss``).
    """
    bench = setup(cfg, args)
    timing = time_variants(bench, args, prog)
    mem, method = peak_memory(bench, args, probe_module)
    rows = [_variant_row(bench, args, timing, mem, v) for v in bench.variants]
    res = _results(bench, args, cfg, prog, rows, method)
    curve_x = [i / 20 for i in range(2, 21)]
    curve = (curve_x, uniform_keep_speedups(bench.spec, bench.vit.pruned_blocks, curve_x))
    png = _plot(res, curve)
    md = markdown(res)
    profile_md = profile_report(bench) if args.profile else None
    # every output is complete before it appears; results.json last (it marks completion)
    if profile_md is not None:
        atomic_write_text(os.path.join(out_dir, "profile.md"), profile_md)
    atomic_write_bytes(os.path.join(out_dir, "speedup.png"), png)
    atomic_write_text(os.path.join(out_dir, "results.md"), md)
    atomic_write_json(os.path.join(out_dir, "results.json"), res)
    print(md)
    print(f"{prog}: wrote {out_dir}/results.json, results.md, speedup.png"
          + (", profile.md" if profile_md else ""), flush=True)
    return res


def _ratio_summary(ratios: Dict[int, float]) -> str:
    """{3: 0.7, 4: 0.7, 5: 0.49} -> '3-4: 0.7, 5: 0.49'."""
    if not ratios:
        return "all 1"
    runs: List[List] = []
    for i in sorted(ratios):
        r = round(ratios[i], 3)
        if runs and runs[-1][2] == r and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i, r])
    return ", ".join(f"{a}{'' if a == b else f'-{b}'}: {r:g}" for a, b, r in runs)


def _fmt(x, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def markdown(res: dict) -> str:
    """results.md of a results.json dict."""
    lines = [
        "# TokenPrune benchmark\n",
        f"- config: `{res['config_file']}` {' '.join(res['overrides'])}",
        f"- device: {res['device']} ({res['device_name']}), torch threads {res['torch_threads']}",
        f"- input: {res['batch_size']} x {res['input_size']}x{res['input_size']} "
        f"(backbone input {res['backbone_input_hw'][0]}x{res['backbone_input_hw'][1]}, "
        f"token grid {res['token_grid'][0]}x{res['token_grid'][1]})",
        f"- weights: {res['weights']}; warm-up rounds {res['warmup']}, timed rounds "
        f"{res['repeats']} (medians, variants interleaved)",
        f"- peak memory: {res['memory_method']}",
        "- speedups: medians of wall-clock time; on a CPU also of this process's CPU time "
        "(all threads), which is less sensitive to other processes on a shared machine",
    ]
    lines += [f"- note: {n}" for n in res["notes"]]
    lines += [
        "",
        "| variant | keep ratios (block: kept fraction) | mean keep | backbone ms | "
        "backbone speedup | predicted speedup | measured / predicted | whole-model ms | "
        "whole-model speedup | peak memory MiB (backbone / whole) | "
        "CPU-time speedup (backbone / whole) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in res["variants"]:
        ratios = {int(k): r for k, r in v["keep_ratios"].items()}
        b, m, mem = v["backbone"], v.get("model"), v.get("peak_memory_mib")
        mem_s = "n/a" if not mem else " / ".join(_fmt(mem.get(s), ".0f")
                                                  for s in ("backbone", "model") if s in mem)
        lines.append(
            f"| {v['name']} | {_ratio_summary(ratios)} | {v['mean_keep_ratio']:.3f} "
            f"| {b['median_ms']:.1f} | {b['speedup']:.2f}x | {b['predicted_speedup']:.2f}x "
            f"| {b['measured_over_predicted']:.2f} "
            f"| {_fmt(m and m['median_ms'])} | {_fmt(m and m['speedup'], '.2f', 'x')} "
            f"| {mem_s} | {_fmt(b['cpu_time_speedup'], '.2f', 'x')} / "
            f"{_fmt(m and m['cpu_time_speedup'], '.2f', 'x')} |")
    return "\n".join(lines) + "\n"


def _plot(res: dict, curve: Tuple[List[float], List[float]]) -> bytes:
    """speedup.png: measured and predicted speedups against the mean keep ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    xs, ys = curve
    ax.plot(xs, ys, "-", color="0.6", label="FLOP-predicted, uniform keep ratio")
    vs = res["variants"]
    ax.plot([v["mean_keep_ratio"] for v in vs],
            [v["backbone"]["predicted_speedup"] for v in vs], "x", color="0.3", ms=8,
            label="FLOP-predicted, measured variants")
    ax.plot([v["mean_keep_ratio"] for v in vs], [v["backbone"]["speedup"] for v in vs], "o",
            color="tab:blue", label="backbone, measured")
    if all(v.get("model") for v in vs):
        ax.plot([v["mean_keep_ratio"] for v in vs], [v["model"]["speedup"] for v in vs], "s",
                color="tab:orange", label="whole model, measured")
    for v in vs:
        ax.annotate(v["name"], (v["mean_keep_ratio"], v["backbone"]["speedup"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(1.0, color="0.85", lw=0.8)
    ax.set_xlabel("mean keep ratio of the pruned blocks")
    ax.set_ylabel("speedup over dense")
    ax.set_title(f"{os.path.basename(res['config_file'])}: {res['device']}, "
                 f"{res['batch_size']}x{res['input_size']}px", fontsize=9)
    ax.set_xlim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)
