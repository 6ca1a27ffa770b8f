"""The ablation's report: the summary rows, ``table.md``, ``results.csv``, ``ap_vs_flops.png``."""
from __future__ import annotations

import csv
import io
import math
import os
import statistics
from typing import Any, Dict, List, Sequence

from ..fileio import atomic_write_bytes, atomic_write_text, figure_png
from .variants import FINDINGS, VARIANTS

__all__ = ["summarize", "write_outputs"]


_METRICS = ("box_ap", "mask_ap", "backbone_gflops", "gate_gflops", "backbone_flops_ratio",
            "keep_ratio", "backbone_ms", "dense_backbone_ms", "backbone_speedup")


def summarize(found: Dict[str, List[dict]]) -> List[Dict[str, Any]]:
    """One row per variant (in :data:`VARIANTS` order): means over seeds, AP spread."""
    rows = []
    for variant in VARIANTS:
        results = found.get(variant.name)
        if not results:
            continue
        row: Dict[str, Any] = dict(variant=variant.name, label=variant.label,
                                   seeds=len(results), train=variant.train or "",
                                   finetune_iters=results[0].get("finetune_iters", 0))
        for key in _METRICS:
            values = [float(r[key]) for r in results]
            row[key] = sum(values) / len(values)
        for key in ("box_ap", "mask_ap"):
            values = [float(r[key]) for r in results]
            row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else float("nan")
        row["box_ap_by_seed"] = {int(r["seed"]): float(r["box_ap"]) for r in results}
        rows.append(row)
    return rows


_CSV_COLUMNS = ("variant", "label", "seeds", "box_ap", "box_ap_sd", "mask_ap", "mask_ap_sd",
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


def _markdown(rows: List[Dict[str, Any]], state: Dict[str, Any]) -> str:
    lines = [
        f"# Token pruning ablation (synthetic shapes, --scale {state['scale']})",
        "",
        f"{state['description']}. Dense model: {state['dense_iters']} iterations per seed; "
        f"each variant fine-tuned from it for {state['finetune_iters']} iterations "
        f"(the same budget; 'shares' = evaluated on another row's fine-tuned weights, whose "
        f"training is identical), training-free rows run on the dense weights.",
        "",
        "| Variant | Description | Box AP | Mask AP | Backbone GFLOPs | vs dense | of which "
        "gates | Kept tokens | Backbone ms | Speed-up | Weights |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    owners: Dict[str, str] = {}
    for row in rows:
        if row["train"] and row["train"] not in owners:
            owners[row["train"]] = row["variant"]
        if not row["train"]:
            weights = "dense (trained)" if row["variant"] == "dense" else "dense (training-free)"
        elif owners[row["train"]] == row["variant"]:
            weights = f"fine-tuned {row['finetune_iters']} it"
        else:
            weights = f"shares {owners[row['train']]}"
        seeds = f" (n={row['seeds']})" if row["seeds"] > 1 else ""
        lines.append(
            f"| {row['variant']}{seeds} | {row['label']} | {_ap_cell(row, 'box_ap')} | "
            f"{_ap_cell(row, 'mask_ap')} | {row['backbone_gflops']:.3f} | "
            f"{row['backbone_flops_ratio']:.2f} | {row['gate_gflops']:.3f} | "
            f"{row['keep_ratio']:.2f} | {row['backbone_ms']:.1f} | "
            f"{row['backbone_speedup']:.2f}x | {weights} |")
    total = sum(v for k, v in state.get("seconds", {}).items() if k != "last_run")
    lines += ["", *_findings(rows)]
    lines += [
        "",
        "Box / mask AP: COCO AP (0-100) on the validation images; ± = sample standard "
        "deviation over seeds (n). Backbone GFLOPs: fvcore (one multiply-add = one flop) for "
        "the ViT (gates and reducer included), mean over the first validation images; 'vs "
        "dense' divides by the dense backbone's. Kept tokens: mean fraction of the tokens a "
        "pruned block computes (merged tokens for ToMe), over pruned blocks and validation "
        "images. Backbone ms: median time of the ViT alone on preprocessed validation images "
        "(batch 1), interleaved with the dense backbone; speed-up = dense ms / variant ms. "
        "'Of which gates': the gates' share of the backbone FLOPs (EViT's score recomputes q "
        "and k; ToMe's matching is no gate and counts in the backbone only).",
        "",
        f"Training time so far: {total / 60:.1f} min; last run "
        f"{state.get('seconds', {}).get('last_run', float('nan')) / 60:.1f} min. "
        f"Re-run: `python -m tokenprune.tools.ablation --output DIR --scale {state['scale']} "
        f"--seeds {state['seeds']}`.",
        "",
    ]
    return "\n".join(lines)


def _findings(rows: List[Dict[str, Any]]) -> List[str]:
    """The :data:`FINDINGS` whose two rows are in ``rows``, one bullet each, with a verdict.

    A claim is judged on the seeds both rows have: the mean of the per-seed differences.
    Seeds differ by several AP, so a two-seed row against a seed-0 row would otherwise
    compare seed 1 with nothing.
    """
    by = {row["variant"]: row for row in rows}
    out = []
    for claim, a, b, how in FINDINGS:
        if a not in by or b not in by:
            continue
        ap_a, ap_b = by[a]["box_ap_by_seed"], by[b]["box_ap_by_seed"]
        common = sorted(set(ap_a) & set(ap_b))
        if not common:
            continue
        diffs = [ap_a[s] - ap_b[s] for s in common]
        diff = sum(diffs) / len(diffs)
        holds = diff > 0 if how == "above" else diff >= -1.0
        if len(ap_a) == len(ap_b) == len(diffs):
            paired = f"{diff:+.1f}" + (
                f"; per seed {' / '.join(f'{d:+.1f}' for d in diffs)}" if len(diffs) > 1 else "")
        else:
            paired = (f"{diff:+.1f} on seed{'s' if len(common) > 1 else ''} "
                      f"{', '.join(map(str, common))}, the seeds both rows have")
        out.append(f"* {claim}: **{'holds' if holds else 'does not hold'}** -- {a} "
                   f"{_ap_cell(by[a], 'box_ap')} box AP at keep {by[a]['keep_ratio']:.2f} vs "
                   f"{b} {_ap_cell(by[b], 'box_ap')} at keep {by[b]['keep_ratio']:.2f} "
                   f"({paired}).")
    return ["Findings (box AP, means over seeds; each claim judged on the seeds both rows "
            "have):", "", *out] if out else []


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
                  plot: bool = True) -> None:
    """table.md and results.csv of the results found so far, and ap_vs_flops.png with
    ``plot`` (a second or so of matplotlib: the runner draws it once, at the end)."""
    rows = summarize(found)
    if not rows:
        return
    atomic_write_text(os.path.join(output, "results.csv"), _csv(rows))
    if plot:
        atomic_write_bytes(os.path.join(output, "ap_vs_flops.png"), _plot(rows))
    atomic_write_text(os.path.join(output, "table.md"), _markdown(rows, state))
