"""The VLTP study's report: one table per setting, the validity checks, the findings with
their paired statistics and verdicts; ``table.md`` and ``results.csv``."""
from __future__ import annotations

import csv
import io
import math
import os
import statistics
from typing import Any, Dict, List

from ..fileio import atomic_write_text
from .report import interval_text, seed_pairs
from .statistics import COMPARABLE, HOLDS, VERDICT_RULE, paired, verdict
from .vltp import (KEEP_POINTS, KEEP_TOLERANCE, METHOD_LABELS, MIOU_MARGIN, SETTINGS, VALIDITY,
                   findings, rows)

__all__ = ["summarize_vltp", "judge_vltp", "write_vltp_outputs", "VLTP_METRICS"]

#: Per-seed metrics of a row (percent), the first enters the findings.
VLTP_METRICS = ("miou", "miou_nonempty", "ciou", "box_ap", "mask_ap")
_COSTS = ("vit_flops_ratio", "vit_gflops", "decoder_gflops", "keep_ratio", "empty_pairs")
#: A finding's verdict when a validity check failed, followed by "(rule: <verdict>)".
CANNOT_DECIDE = "cannot decide"


def summarize_vltp(found: Dict[str, List[dict]]) -> Dict[str, Dict[str, Any]]:
    """{row name: means over seeds, the mIoU sd and ``by_seed`` = {metric: {seed: value}}}."""
    out = {}
    for name, results in found.items():
        row: Dict[str, Any] = dict(row=name, seeds=len(results),
                                   setting=results[0]["setting"], method=results[0]["method"],
                                   point=results[0]["point"])
        for key in (*VLTP_METRICS, *_COSTS):
            row[key] = statistics.fmean(float(r.get(key, math.nan)) for r in results)
        values = [float(r["miou"]) for r in results]
        row["miou_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
        row["by_seed"] = {key: {int(r["seed"]): float(r.get(key, math.nan)) for r in results}
                          for key in (*VLTP_METRICS, "keep_ratio")}
        out[name] = row
    return out


def judge_vltp(by: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The validity checks (statement, passed, measurement) and the findings (claim, paired
    summary, verdict) of the rows in ``by``."""
    checks = []
    for statement, a, b in VALIDITY:
        if a in by and b in by:
            seeds, va, vb = seed_pairs(by, a, b, "miou")
            s = paired(va, vb)
            checks.append((statement, verdict(s, "above") == HOLDS,
                           f"{a} - {b}: {s.mean:+.2f} mIoU, 95% interval "
                           f"{interval_text(s.ci95, 2)} "
                           f"over {len(seeds)} seeds"))
    worst, pairs = 0.0, 0
    for f in findings():
        if f.a in by and f.b in by and by[f.b]["point"]:
            _, ka, kb = seed_pairs(by, f.a, f.b, "keep_ratio")
            worst = max([worst, *(abs(x - y) for x, y in zip(ka, kb))])
            pairs += 1
    if pairs:
        checks.append((f"paired pruned rows keep the same fraction of tokens within "
                       f"{KEEP_TOLERANCE}", worst <= KEEP_TOLERANCE,
                       f"largest difference {worst:.4f} over {pairs} pairs and their seeds"))
    valid = all(passed for _, passed, _ in checks)
    judged = []
    for f in findings():
        if f.a in by and f.b in by:
            seeds, va, vb = seed_pairs(by, f.a, f.b, "miou")
            s = paired(va, vb)
            v = verdict(s, f.kind, MIOU_MARGIN)
            judged.append((f, s, v if valid else f"{CANNOT_DECIDE} (rule: {v})", seeds))
    return dict(checks=checks, valid=valid, findings=judged)


def _table(setting: str, by: Dict[str, Dict[str, Any]]) -> List[str]:
    lines = [f"### {setting}: {SETTINGS[setting]}", "",
             "| row | keep point | kept (pruned blocks) | ViT FLOPs x unpruned | mIoU | "
             "mIoU without empty pairs | cIoU | box AP | mask AP | seeds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows(setting):
        r = by.get(row.name)
        if r is None:
            continue
        point = KEEP_POINTS[row.point][1] if row.point else "all tokens"
        lines.append(f"| {METHOD_LABELS[row.method]} | {point} | {r['keep_ratio']:.3f} | "
                     f"{r['vit_flops_ratio']:.3f} | {r['miou']:.1f} +- {r['miou_sd']:.1f} | "
                     f"{r['miou_nonempty']:.1f} | {r['ciou']:.1f} | {r['box_ap']:.1f} | "
                     f"{r['mask_ap']:.1f} | {r['seeds']} |")
    return lines + [""]


def _markdown(state: Dict[str, Any], by: Dict[str, Dict[str, Any]],
              judged: Dict[str, Any]) -> str:
    secs = state.get("seconds", {})
    lines = ["# The VLTP study", "",
             f"Scale `{state['scale']}`: {state['description']}. Unpruned task model: "
             f"{state['dense_iters']} iterations; every fine-tune {state['finetune_iters']} "
             f"iterations (decoders at {state['gate_lr_factor']:g}x the learning rate, trained "
             f"towards the keep schedule of base {state['train_base']:g}). Wall time: this run "
             f"{secs.get('last_run', 0) / 60:.1f} min, all runs {secs.get('all_runs', 0) / 60:.1f} "
             "min.", "",
             "mIoU / cIoU: IoU of the union of the predicted masks (score >= 0.5) with the "
             "union of the task's relevant objects, per (image, task) pair; box / mask AP of "
             "the relevant instances. Mean +- sd over the seeds. Every pruned row at a keep "
             "point keeps the same tokens per block in number (top-k).", ""]
    for setting in SETTINGS:
        lines += _table(setting, by)
    lines += ["## Validity checks", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {s} ({m})" for s, ok, m in judged["checks"]]
    if not judged["valid"]:
        lines += ["", "A validity check failed: the study cannot decide its findings; what "
                      "the rule would say is in parentheses."]
    lines += ["", "## Findings (paired over seeds, mIoU points)", "",
              "| claim | a - b per seed | mean +- sd | 95% interval | 90% interval | "
              "sign-flip p | verdict |", "|---|---|---:|---|---|---:|---|"]
    for f, s, v, _ in judged["findings"]:
        diffs = ", ".join(f"{d:+.2f}" for d in s.diffs)
        lines.append(f"| {f.claim} | {diffs} | {s.mean:+.2f} +- {s.sd:.2f} | "
                     f"{interval_text(s.ci95, 2)} | {interval_text(s.ci90, 2)} | {s.p:.3f} | {v} |")
    lines += ["", "Verdict rule: " + VERDICT_RULE.format(margin=MIOU_MARGIN).replace(
        " AP", " mIoU") + f"; '{COMPARABLE}' is the claim 'no loss'.", ""]
    return "\n".join(lines)


def _csv(found: Dict[str, List[dict]]) -> str:
    keys = ["row", "setting", "method", "point", "seed", *VLTP_METRICS, *_COSTS, "seconds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for results in found.values():
        for r in sorted(results, key=lambda r: r["seed"]):
            writer.writerow(r)
    return buf.getvalue()


def write_vltp_outputs(output: str, state: Dict[str, Any],
                       found: Dict[str, List[dict]]) -> Dict[str, Any]:
    """``table.md`` and ``results.csv`` in ``output``; returns {"rows", "checks", "valid",
    "findings"}."""
    by = summarize_vltp(found)
    judged = judge_vltp(by)
    atomic_write_text(os.path.join(output, "table.md"), _markdown(state, by, judged))
    atomic_write_text(os.path.join(output, "results.csv"), _csv(found))
    return dict(rows=by, **judged)
