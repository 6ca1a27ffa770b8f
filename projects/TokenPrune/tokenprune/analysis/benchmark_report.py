"""The benchmark's run and report: result rows, ``results.md``, ``speedup.png``, the files.

:func:`run_benchmark` measures every variant of :mod:`.benchmark` and writes, each
atomically, ``profile.md`` (with ``--profile``), ``speedup.png``, ``results.md``, then
``results.json`` (present only after a complete run).
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, figure_png
from .benchmark import Bench, BenchmarkVariant, for_batch, padding_fractions, setup, time_variants
from .benchmark_options import BenchmarkOptions
from .benchmark_memory import peak_memory
from .benchmark_profile import profile_report
from .cost import backbone_macs, uniform_keep_speedups
from .timing import busy_warning, spread

__all__ = ["run_benchmark", "markdown", "summary_markdown"]

def _baselines(bench: Bench, timing) -> Dict[str, str]:
    """Per scope, the key of the fastest dense reference (wall-clock median; any kernel and
    compile mode of the run)."""
    ms = timing[0]
    dense = [v.key for v in bench.variants if v.gates_off]
    return {s: min(dense, key=lambda k: ms[(k, s)]) for s in bench.scopes}


def _compile_figures(options: BenchmarkOptions, timing, v: BenchmarkVariant,
                     scope: str) -> Dict[str, Any]:
    """A compiled variant's compile cost in one scope: its first call's seconds beyond its
    median (the compile), the graphs built during its calls (in all and in the timed
    rounds: recompiles) and the graph breaks; None figures for an eager variant."""
    rec = timing[3]["calls"][(v.key, scope)]
    if v.compile == "none":
        return {"compile_s": None, "graphs": None, "timed_graphs": None, "graph_breaks": None}
    return {"compile_s": rec.first_s - statistics.median(timing[2][(v.key, scope)]),
            "graphs": sum(rec.graphs), "timed_graphs": sum(rec.graphs[options.warmup:]),
            "graph_breaks": rec.breaks}


def _scope_figures(bench: Bench, options: BenchmarkOptions, timing, v: BenchmarkVariant,
                   scope: str, base: str) -> Dict[str, Any]:
    """Min / median / max, repeats, throughput and speedups (against dense ``base``) in one
    scope."""
    ms, cpu_ms, times, _ = timing
    on_cpu = options.device == "cpu"
    med = ms[(v.key, scope)]
    return {
        **spread(times[(v.key, scope)]), "times_ms": [1e3 * t for t in times[(v.key, scope)]],
        **_compile_figures(options, timing, v, scope),
        "throughput_img_s": bench.batch / (med / 1e3),
        "baseline": base, "speedup": ms[(base, scope)] / med,
        # against the eager Detectron2 blocks (None when the run has no eager mode)
        "speedup_vs_detectron2": (ms[("dense", scope)] / med if ("dense", scope) in ms
                                  else None),
        "cpu_time_median_ms": cpu_ms[(v.key, scope)] if on_cpu else None,
        "cpu_time_speedup": (cpu_ms[(base, scope)] / cpu_ms[(v.key, scope)]
                             if on_cpu else None),
    }


def _variant_row(bench: Bench, options: BenchmarkOptions, timing, mem,
                 v: BenchmarkVariant) -> Dict[str, Any]:
    """One variant's figures, the FLOP-predicted speedup next to the measured one."""
    observed = timing[3]
    bases = _baselines(bench, timing)
    dense_macs = backbone_macs(bench.spec, gates=False)
    # the timed rounds' backbone forwards (their images, if several); masks: the first's
    timed_masks = observed["masks"][v.key][options.warmup:]
    masks = timed_masks[0]
    per_image = [backbone_macs(bench.spec, {i: m[b] for i, m in call.items()},
                               gates=not v.gates_off)
                 for call in timed_masks for b in range(bench.batch)]
    predicted = dense_macs * len(per_image) / sum(per_image)
    timed_ratios = observed["ratios"][v.key][options.warmup:]
    kr = {i: statistics.fmean(r[i] for r in timed_ratios) for i in timed_ratios[0]}
    backbone = _scope_figures(bench, options, timing, v, "backbone", bases["backbone"])
    backbone.update(predicted_gmacs_per_image=statistics.fmean(per_image) / 1e9,
                    predicted_speedup=predicted,
                    measured_over_predicted=backbone["speedup"] / predicted)
    return {
        "key": v.key, "name": v.name, "attention": v.attention, "compile": v.compile,
        "image_scales": v.image_scales,
        "kept_per_image": [int(sum(int(m[b].sum()) for m in masks.values()))
                           for b in range(bench.batch)] if masks else None,
        "padding": padding_fractions(bench, masks),
        "forced_keep_ratios": None if v.fixed is None else {str(i): r for i, r in
                                                            v.fixed.items()},
        "keep_ratios": {str(i): r for i, r in kr.items()},
        "mean_keep_ratio": statistics.fmean(kr.values()) if kr else 1.0,
        "backbone": backbone,
        "model": (_scope_figures(bench, options, timing, v, "model", bases["model"])
                  if "model" in bench.scopes else None),
        "peak_memory_mib": mem.get(v.key),
    }


def _notes(bench: Bench, options: BenchmarkOptions) -> List[str]:
    notes = []
    if bench.converted:
        notes.append("dense config: backbone converted in memory to a PrunedViT with SViT's "
                     "schedule (random gates; forced keep ratios only)")
    if options.weights == "random":
        notes.append("random weights (seeded): forced-rate timings do not depend on weights; "
                     "learned-gate variant needs --weights checkpoint")
    notes.append("box predictors' score threshold set to 0: the heads process "
                 "test_topk_per_image detections per image in every variant")
    return notes


def _results(bench: Bench, options: BenchmarkOptions, cfg, prog: str, runs,
             method: str) -> Dict[str, Any]:
    x, spec = bench.x, bench.spec
    return {
        "tool": prog, "config_file": options.config_file, "overrides": list(options.overrides),
        "device": options.device,
        "device_name": (torch.cuda.get_device_name(options.device)
                        if options.device.startswith("cuda")
                        else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "precision": options.precision, "attention": list(options.attention),
        "compile": list(options.compile), "images": options.images,
        "bucket_quantum": bench.vit.bucket_quantum,
        "input_size": bench.input_size, "backbone_input_hw": list(x.shape[-2:]),
        "token_grid": list(spec.grid),
        "batch_sizes": list(options.batch_sizes), "repeats": options.repeats,
        "warmup": options.warmup,
        "weights": "random (seed 0)" if options.weights == "random" else cfg.train.init_checkpoint,
        "converted_from_dense": bench.converted,
        "pruned_blocks": list(bench.vit.pruned_blocks),
        "window_blocks": [i for i, ws in enumerate(spec.window_sizes) if ws],
        "dense_backbone_gmacs_per_image": backbone_macs(spec, gates=False) / 1e9,
        "memory_method": method, "notes": _notes(bench, options), "runs": runs,
    }


def _measure_batch(base: Bench, options: BenchmarkOptions, prog: str, batch: int):
    """(bench, run dict, memory method) of one batch size."""
    bench = for_batch(base, options, batch)
    timing = time_variants(bench, options, f"{prog} [batch {batch}]")
    mem, method = peak_memory(bench, options)
    dense = {f"{v.name} ({s})": timing[2][(v.key, s)] for v in bench.variants if v.gates_off
             for s in bench.scopes}
    bases = _baselines(bench, timing)
    names = {v.key: v.name for v in bench.variants}
    run = {"batch_size": batch, "baselines": bases,
           "baseline_names": {s: names[k] for s, k in bases.items()},
           "busy_warning": busy_warning(dense),
           "variants": [_variant_row(bench, options, timing, mem, v) for v in bench.variants]}
    return bench, run, method


def run_benchmark(cfg, options: BenchmarkOptions, out_dir: str, prog: str) -> Dict[str, Any]:
    """Measure every variant at every batch size, write the files into ``out_dir``; returns
    results.json's dict. ``cfg``: the loaded config of ``options.config_file``; ``prog``:
    the name on the progress bars and the last line.
    """
    base = setup(cfg, options)
    runs, method, bench = [], "", base
    for batch in options.batch_sizes:
        bench, run, method = _measure_batch(base, options, prog, batch)
        runs.append(run)
    res = _results(bench, options, cfg, prog, runs, method)
    curve_x = [i / 20 for i in range(2, 21)]
    curve = (curve_x, uniform_keep_speedups(bench.spec, bench.vit.pruned_blocks, curve_x))
    png = _plot(res, curve)
    md = markdown(res)
    profile_md = profile_report(bench) if options.profile else None
    # every output is complete before it appears; results.json last (it marks completion)
    if profile_md is not None:
        atomic_write_text(os.path.join(out_dir, "profile.md"), profile_md)
    atomic_write_bytes(os.path.join(out_dir, "speedup.png"), png)
    atomic_write_text(os.path.join(out_dir, "results.md"), md)
    atomic_write_json(os.path.join(out_dir, "results.json"), res)
    print(md)
    for run in runs:
        if run["busy_warning"]:
            print(f"{prog}: warning: batch {run['batch_size']}: {run['busy_warning']}",
                  file=sys.stderr, flush=True)
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


def _spread_cell(scope: Optional[dict]) -> str:
    """'min / median / max' milliseconds of a scope's figures; n/a without them."""
    if not scope:
        return "n/a"
    return " / ".join(f"{scope[k]:.1f}" for k in ("min_ms", "median_ms", "max_ms"))


def markdown(res: dict) -> str:
    """results.md of a results.json dict."""
    lines = [
        "# TokenPrune benchmark\n",
        f"- config: `{res['config_file']}` {' '.join(res['overrides'])}",
        f"- device: {res['device']} ({res['device_name']}), torch {res['torch_version']}, "
        f"threads {res['torch_threads']}, precision {res['precision']}",
        f"- input: {res['input_size']}x{res['input_size']} "
        f"(backbone input {res['backbone_input_hw'][0]}x{res['backbone_input_hw'][1]}, "
        f"token grid {res['token_grid'][0]}x{res['token_grid'][1]}), batch sizes "
        f"{', '.join(map(str, res['batch_sizes']))}",
        f"- pruned variants: attention {', '.join(res['attention'])}, windows bucketed by "
        f"kept count (quantum {res['bucket_quantum']})",
        f"- weights: {res['weights']}; warm-up rounds {res['warmup']}, timed rounds "
        f"{res['repeats']} (min / median / max, variants interleaved; speedups of medians)",
        f"- peak memory: {res['memory_method']}",
        "- speedups: against the fastest dense row of each scope (any kernel and compile "
        "mode; named per table); medians of wall-clock time; on a CPU also of this "
        "process's CPU time (all threads), which is less sensitive to other processes on a "
        "shared machine",
        "- padding: slots the gathered attention computes beyond the kept tokens, with one "
        "bucket (every group padded to the fullest) -> with the buckets",
    ]
    modes = list(dict.fromkeys(v.get("compile", "none") for r in res["runs"]
                               for v in r["variants"]))
    if modes != ["none"]:
        lines.append(f"- compile modes: {', '.join(modes)}; a compiled row's compile s is its "
                     "first call's time beyond its median; graphs: torch._dynamo's unique "
                     "graphs built during its calls (a graph a row measured before it built "
                     "is counted there), in all and in the timed rounds; graph breaks during "
                     "its calls")
    lines += [f"- note: {n}" for n in res["notes"]]
    lines += [f"- **warning** (batch {r['batch_size']}): {r['busy_warning']}"
              for r in res["runs"] if r.get("busy_warning")]
    for run in res["runs"]:
        lines += _run_table(run)
    if len(res["runs"]) > 1:
        lines += _batch_table(res["runs"])
    return "\n".join(lines) + "\n"


def _run_table(run: dict) -> List[str]:
    """The table of one batch size (with compile columns when a variant is compiled)."""
    compiled = any(v.get("compile", "none") != "none" for v in run["variants"])
    head = ("| variant | keep ratios (block: kept fraction) | mean keep | "
            "backbone ms (min / median / max) | backbone speedup | predicted speedup | "
            "measured / predicted | whole-model ms (min / median / max) | "
            "whole-model speedup | peak memory MiB (backbone / whole) | "
            "CPU-time speedup (backbone / whole) | padding |")
    rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if compiled:
        head += " compile s (backbone / whole) | graphs (backbone / whole) | " \
                "recompiles in the timed rounds | graph breaks |"
        rule += "---:|---:|---:|---:|"
    lines = ["", f"## Batch {run['batch_size']}: speedups against the fastest dense, "
             + ", ".join(f"{name} ({s})" for s, name in run["baseline_names"].items()), "",
             head, rule]
    for v in run["variants"]:
        ratios = {int(k): r for k, r in v["keep_ratios"].items()}
        b, m, mem = v["backbone"], v.get("model"), v.get("peak_memory_mib")
        mem_s = "n/a" if not mem else " / ".join(_fmt(mem.get(s), ".0f")
                                                  for s in ("backbone", "model") if s in mem)
        pad = v["padding"]
        pad_s = (f"{100 * pad['one_bucket']:.0f}% -> {100 * pad['buckets']:.0f}%"
                 if v["keep_ratios"] else "")
        line = (
            f"| {v['name']} | {_ratio_summary(ratios)} | {v['mean_keep_ratio']:.3f} "
            f"| {_spread_cell(b)} | {b['speedup']:.2f}x | {b['predicted_speedup']:.2f}x "
            f"| {b['measured_over_predicted']:.2f} "
            f"| {_spread_cell(m)} | {_fmt(m and m['speedup'], '.2f', 'x')} "
            f"| {mem_s} | {_fmt(b['cpu_time_speedup'], '.2f', 'x')} / "
            f"{_fmt(m and m['cpu_time_speedup'], '.2f', 'x')} | {pad_s} |")
        if compiled:
            scopes = [x for x in (b, m) if x]
            if v.get("compile", "none") == "none":
                line += " | | | |"
            else:
                line += (" " + " / ".join(f"{x['compile_s']:.0f}" for x in scopes) + " | "
                         + " / ".join(str(x["graphs"]) for x in scopes) + " | "
                         + " / ".join(str(x["timed_graphs"]) for x in scopes) + " | "
                         + " / ".join(str(x["graph_breaks"]) for x in scopes) + " |")
        lines.append(line)
    return lines


def _batch_table(runs: List[dict]) -> List[str]:
    """Latency per image and images/s of every variant at every batch size."""
    lines = ["", "## Batch sizes: backbone ms per image, images/s, speedup", "",
             "| variant | " + " | ".join(f"batch {r['batch_size']}" for r in runs) + " |",
             "|---|" + "---:|" * len(runs)]
    names = list(dict.fromkeys(v["name"] for r in runs for v in r["variants"]))
    for name in names:
        cells = []
        for r in runs:
            v = next((v for v in r["variants"] if v["name"] == name), None)
            b = v and v["backbone"]
            cells.append("" if not b else f"{b['median_ms'] / r['batch_size']:.1f} ms, "
                         f"{b['throughput_img_s']:.2f}/s, {b['speedup']:.2f}x")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _plot(res: dict, curve: Tuple[List[float], List[float]]) -> bytes:
    """speedup.png: measured and predicted speedups against the mean keep ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    xs, ys = curve
    ax.plot(xs, ys, "-", color="0.6", label="FLOP-predicted, uniform keep ratio")
    run = res["runs"][0]
    vs = run["variants"]
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
    ax.set_ylabel("speedup over the faster dense reference")
    ax.set_title(f"{os.path.basename(res['config_file'])}: {res['device']}, "
                 f"{run['batch_size']}x{res['input_size']}px", fontsize=9)
    ax.set_xlim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


def summary_markdown(results: List[dict]) -> str:
    """One table of several benchmark results (e.g. a windowed and a global config): per
    config, input size, precision and variant, the backbone's milliseconds per image and
    speedup against the faster dense reference at each batch size."""
    batches = sorted({r["batch_size"] for res in results for r in res["runs"]})
    lines = ["| config | input | precision | variant | "
             + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|---|---|" + "---:|" * len(batches)]
    for res in results:
        runs = {r["batch_size"]: r for r in res["runs"]}
        names = list(dict.fromkeys(v["name"] for r in res["runs"] for v in r["variants"]))
        row = (f"| {os.path.basename(res['config_file'])} | "
               f"{res['input_size']}x{res['input_size']} | {res['precision']} | ")
        for name in names:
            cells = []
            for b in batches:
                v = next((v for v in runs[b]["variants"] if v["name"] == name), None) \
                    if b in runs else None
                cells.append("" if v is None else
                             f"{v['backbone']['median_ms'] / b:.1f} ms "
                             f"({v['backbone']['speedup']:.2f}x)")
            lines.append(row + f"{name} | " + " | ".join(cells) + " |")
    head = results[0]
    return (f"Backbone ms per image (speedup against the faster dense reference); "
            f"{head['device']} ({head['device_name']}), torch {head['torch_version']}\n\n"
            + "\n".join(lines) + "\n")
