"""The SViT study's report: the summary rows, the validity checks, the findings with their
paired statistics and verdicts; ``table.md``, ``results.csv``, ``ap_vs_flops.png``."""
from __future__ import annotations

import csv
import io
import math
import os
import statistics
from typing import Any, Dict, List, Sequence, Tuple

from ..fileio import atomic_write_bytes, atomic_write_text, figure_png
from .statistics import HOLDS, VERDICT_RULE, paired, verdict
from .variants import FINDINGS, KEEP_TOLERANCE, VALIDITY, VARIANTS

__all__ = ["summarize", "judge", "validity_checks", "write_outputs", "METRICS", "seed_pairs",
           "interval_text"]

#: Per-seed metrics of a row that enter the paired comparisons (AP points, 0-100).
METRICS = ("box_ap", "mask_ap", "box_ap_s", "box_ap_m", "box_ap_l", "sparse_box_ap",
           "crowded_box_ap")
_COSTS = ("backbone_gflops", "gate_gflops", "backbone_flops_ratio", "keep_ratio",
          "backbone_ms", "dense_backbone_ms", "backbone_speedup")


def summarize(found: Dict[str, List[dict]]) -> List[Dict[str, Any]]:
    """One row per variant (in :data:`VARIANTS` order): means over seeds, AP spread, and
    ``by_seed`` = {metric: {seed: value}} for the paired comparisons."""
    rows = []
    for variant in VARIANTS:
        results = found.get(variant.name)
        if not results:
            continue
        row: Dict[str, Any] = dict(variant=variant.name, label=variant.label,
                                   seeds=len(results), train=variant.train or "",
                                   finetune_iters=results[0].get("finetune_iters", 0))
        for key in (*METRICS, *_COSTS):
            row[key] = statistics.fmean(float(r.get(key, math.nan)) for r in results)
        for key in ("box_ap", "mask_ap"):
            values = [float(r[key]) for r in results]
            row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
        row["by_seed"] = {key: {int(r["seed"]): float(r.get(key, math.nan)) for r in results}
                          for key in (*METRICS, "keep_ratio")}
        rows.append(row)
    return rows


def seed_pairs(by: Dict[str, Dict[str, Any]], a: str, b: str, key: str = "box_ap"):
    """(seeds both rows have, a's values, b's values) of ``key``."""
    va, vb = by[a]["by_seed"][key], by[b]["by_seed"][key]
    common = sorted(set(va) & set(vb))
    return common, [va[s] for s in common], [vb[s] for s in common]


def validity_checks(rows: List[Dict[str, Any]]) -> List[Tuple[str, bool, str]]:
    """(statement, passed, the measurement) of each :data:`VALIDITY` check whose rows are
    in ``rows``, and of the keep-ratio agreement of every finding's pair."""
    by = {row["variant"]: row for row in rows}
    out = []
    for statement, a, b, least in VALIDITY:
        if a not in by or b not in by:
            continue
        seeds, va, vb = seed_pairs(by, a, b)
        summary = paired(va, vb)
        passed = (summary.mean >= least) if least is not None else (
            verdict(summary, "above") == HOLDS)
        out.append((statement, passed, f"{a} - {b}: {summary.mean:+.2f} box AP, 95% interval "
                                       f"{interval_text(summary.ci95)} over {len(seeds)} seeds"))
    worst, pairs = 0.0, 0
    for f in FINDINGS:
        if f.a in by and f.b in by and "dense" not in (f.a + f.b):
            _, ka, kb = seed_pairs(by, f.a, f.b, "keep_ratio")
            worst = max([worst, *(abs(x - y) for x, y in zip(ka, kb))])
            pairs += 1
    if pairs:
        out.append((f"paired rows keep the same fraction of tokens within {KEEP_TOLERANCE}",
                    worst <= KEEP_TOLERANCE, f"largest difference {worst:.4f} over "
                                             f"{pairs} pairs and their seeds"))
    return out


def judge(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each :data:`FINDINGS` claim whose rows are in ``rows``: its paired summaries (every
    metric of :data:`METRICS`) and its verdict on box AP."""
    by = {row["variant"]: row for row in rows}
    out = []
    for f in FINDINGS:
        if f.a not in by or f.b not in by:
            continue
        summaries = {}
        for key in METRICS:
            seeds, va, vb = seed_pairs(by, f.a, f.b, key)
            summaries[key] = paired(va, vb)
        out.append(dict(finding=f, seeds=seeds, summaries=summaries,
                        verdict=verdict(summaries["box_ap"], f.kind, f.margin)))
    return out


def interval_text(ci: Tuple[float, float], digits: int = 1) -> str:
    """``(low, high)`` -> "[+low, +high]" with ``digits`` decimals; "n/a" when undefined."""
    return "n/a" if math.isnan(ci[0]) else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


_CSV_COLUMNS = ("variant", "label", "seeds", "box_ap", "box_ap_sd", "mask_ap", "mask_ap_sd",
                "box_ap_s", "box_ap_m", "box_ap_l", "sparse_box_ap", "crowded_box_ap",
                "backbone_gflops", "backbone_flops_ratio", "gate_gflops", "keep_ratio",
                "backbone_ms", "dense_backbone_ms", "backbone_speedup", "train",
                "finetune_iters")


def _csv(rows: List[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _ap_cell(row: Dict[str, Any], key: str) -> str:
    value, sd = row[key], row[f"{key}_sd"]
    return f"{value:.1f}" if math.isnan(sd) else f"{value:.1f} ± {sd:.1f}"


def _findings_tables(judged: List[Dict[str, Any]], valid: bool) -> List[str]:
    lines = [
        "| Finding | a vs b | n | per-seed a - b (box AP) | mean ± sd | 95% interval | "
        "90% interval | sign-flip p | verdict |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for j in judged:
        f, s = j["finding"], j["summaries"]["box_ap"]
        word = j["verdict"] if valid else f"cannot decide (rule: {j['verdict']})"
        lines.append(
            f"| {f.claim} | {f.a} vs {f.b} | {len(j['seeds'])} | "
            f"{' / '.join(f'{d:+.1f}' for d in s.diffs)} | {s.mean:+.2f} ± {s.sd:.2f} | "
            f"{interval_text(s.ci95)} | {interval_text(s.ci90)} | {s.p:.3f} | **{word}** |")
    lines += ["", "The same pairs on the other measures (mean a - b, 95% interval):", "",
              "| Finding | mask AP | AP small | AP medium | AP large | sparse images (0-2 "
              "objects) | crowded images (12+) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for j in judged:
        cells = [f"{j['summaries'][k].mean:+.1f} {interval_text(j['summaries'][k].ci95)}"
                 for k in METRICS[1:]]
        lines.append(f"| {j['finding'].claim} | {' | '.join(cells)} |")
    return lines


def _markdown(rows: List[Dict[str, Any]], state: Dict[str, Any],
              curve: List[Tuple[int, float, float]]) -> str:
    checks = validity_checks(rows)
    valid = all(passed for _, passed, _ in checks)
    k = len(state["seeds"])
    lines = [
        f"# The SViT study (--scale {state['scale']})",
        "",
        f"{state['description']}. One dense model ({state['dense_iters']} iterations, seed "
        f"{state['dense_seed']}); every trained row fine-tuned from it for "
        f"{state['finetune_iters']} iterations per seed (seeds {state['seeds']}); training "
        f"keep targets {state['keep_targets']} per stage; gates at "
        f"{state['gate_lr_factor']:g}x the learning rate, their Gumbel noise annealed to 0 "
        f"over the first {state['gate_noise_anneal']:g} of each fine-tune. Pruned rows are run "
        f"at SViT's measured kept fractions of the same seed (top-k), so each pair keeps the "
        f"same number of tokens.",
        "",
        "## Validity checks",
        "",
        *(f"* {'PASS' if passed else 'FAIL'}: {statement} ({measured})."
          for statement, passed, measured in checks),
        "",
        ("All checks pass: the verdicts below follow the rule." if valid else
         "**A check failed: the study cannot decide.** The data or the recipe needs work; "
         "the verdicts the rule would give are shown in parentheses, for the record only."),
        "",
        "## Findings",
        "",
        *_findings_tables(judge(rows), valid),
        "",
        "Rule (fixed before the reported run, `tokenprune.study.statistics`): "
        + VERDICT_RULE.format(margin=1.0) + ". Intervals: Student t over the per-seed "
        f"differences; p: exact two-sided sign-flip test (with {k} seeds its smallest value "
        f"is 2/{2 ** k} = {2 / 2 ** k:.3f}).",
        "",
        "## Rows",
        "",
        "| Row | Description | n | Box AP | Mask AP | AP S / M / L | sparse / crowded | "
        "Backbone GFLOPs | vs dense | Kept | Backbone ms | Speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['label']} | {row['seeds']} | {_ap_cell(row, 'box_ap')} | "
            f"{_ap_cell(row, 'mask_ap')} | {row['box_ap_s']:.1f} / {row['box_ap_m']:.1f} / "
            f"{row['box_ap_l']:.1f} | {row['sparse_box_ap']:.1f} / {row['crowded_box_ap']:.1f} | "
            f"{row['backbone_gflops']:.3f} | {row['backbone_flops_ratio']:.2f} | "
            f"{row['keep_ratio']:.3f} | {row['backbone_ms']:.1f} | "
            f"{row['backbone_speedup']:.2f}x |")
    if curve:
        lines += ["", "The dense model's learning curve (validation box / mask AP): " + ", ".join(
            f"{it} it {box:.1f} / {mask:.1f}" for it, box, mask in curve) + "."]
    seconds = state.get("seconds", {})
    lines += [
        "",
        "Box / mask AP: COCO AP (0-100) on the validation images, mean ± sample sd over the "
        "seeds (n); AP S / M / L: box AP by COCO object size; sparse / crowded: box AP on the "
        "images with 0-2 / 12 or more objects. Backbone GFLOPs: fvcore, gates included, mean "
        "over the first validation images; 'vs dense' divides by the dense backbone's. Kept: "
        "mean fraction of the tokens a pruned block computes, over blocks 3-11 and the "
        "validation images. Backbone ms: median of the ViT alone (batch 1, one thread, "
        "interleaved with the dense ViT; the other worker ran beside it).",
        "",
        f"Wall time: {seconds.get('all_runs', math.nan) / 60:.1f} min in all runs into this "
        f"folder (the last: {seconds.get('last_run', math.nan) / 60:.1f} min). "
        f"Re-run: `python -m tokenprune.tools.ablation --output DIR --scale {state['scale']} "
        f"--jobs 2`.",
        "",
    ]
    return "\n".join(lines)


def _spread_labels(xs: Sequence[float], ys: Sequence[float], near: float,
                   gap: float) -> List[float]:
    """Label heights for points (xs, ys): among points less than ``near`` apart in x, labels
    are at least ``gap`` apart in y, in the points' order, centred on the points' heights."""
    heights = list(ys)
    if not heights:
        return heights
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    groups, current = [], [order[0]]
    for prev, i in zip(order, order[1:]):
        if xs[i] - xs[prev] < near:
            current.append(i)
        else:
            groups.append(current)
            current = [i]
    groups.append(current)
    for group in groups:
        group.sort(key=lambda i: ys[i])
        for prev, i in zip(group, group[1:]):
            heights[i] = max(heights[i], heights[prev] + gap)
        shift = (sum(ys[i] for i in group) - sum(heights[i] for i in group)) / len(group)
        for i in group:
            heights[i] += shift
    return heights


def _plot(rows: List[Dict[str, Any]]) -> bytes:
    """Box and mask AP against backbone GFLOPs, one labelled point per variant (a variant
    whose AP is NaN, a model with no detection at all, has no point in that panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharex=True, layout="constrained")
    xs = [r["backbone_gflops"] for r in rows]
    near = 0.1 * (max(xs) - min(xs) or 1.0)  # points this close in x share a label column
    for ax, key, title in ((axes[0], "box_ap", "box AP"), (axes[1], "mask_ap", "mask AP")):
        shown = [r for r in rows if not math.isnan(r[key])]
        px, ys = [r["backbone_gflops"] for r in shown], [r[key] for r in shown]
        spread = max(ys, default=0.0) - min(ys, default=0.0)
        label_ys = _spread_labels(px, ys, near, gap=0.045 * (spread or 1.0))
        for r, x, y, label_y in zip(shown, px, ys, label_ys):
            sd = r[f"{key}_sd"]
            ax.errorbar([x], [y], yerr=None if math.isnan(sd) else [sd], fmt="o",
                        capsize=3, color="black" if r["variant"] in ("dense", "dense_ft") else
                        "tab:red" if r["variant"] == "svit" else "tab:blue")
            label = ax.annotate(r["variant"], (x, y), xytext=(x + 0.3 * near, label_y),
                                fontsize=7, va="center",
                                arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5"))
            label.set_in_layout(False)  # labels far off a flat panel collapse the layout
        ax.set_xlim(right=max(xs) + 3 * near)  # room for the labels of the rightmost points
        ax.set_xlabel("backbone GFLOPs per image (fvcore, gates included)")
        ax.set_ylabel(title)
        ax.set_title(f"{title} against backbone FLOPs")
        ax.grid(alpha=0.3)
    return figure_png(fig, dpi=110)


def write_outputs(output: str, state: Dict[str, Any], found: Dict[str, List[dict]],
                  curve: Sequence[Tuple[int, float, float]] = (), plot: bool = True) -> None:
    """table.md and results.csv of the results found so far, and ap_vs_flops.png with
    ``plot``; ``curve``: the dense model's (iteration, box AP, mask AP) evaluations."""
    rows = summarize(found)
    if not rows:
        return
    atomic_write_text(os.path.join(output, "results.csv"), _csv(rows))
    if plot:
        atomic_write_bytes(os.path.join(output, "ap_vs_flops.png"), _plot(rows))
    atomic_write_text(os.path.join(output, "table.md"), _markdown(rows, state, list(curve)))
