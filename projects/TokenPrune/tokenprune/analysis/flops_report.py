"""The FLOP report of a model: the per-module table, the region summary, the JSON report.

For a model with a PrunedViT, two columns: the model as configured (gates included, also a
gate that keeps every token) and ``keep all`` (top-k at 1.0 in every pruned block, gates
not counted: the dense ViT's cost); ``backbone_ratio`` in the JSON is the first over the
second.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any, Dict, List, Optional

from torch import nn

from ..errors import InputError
from ..fileio import make_output_dir
from ..modeling.meta_arch import find_pruned_vit
from .flops import FlopCounts, count_model_flops, flops_table

__all__ = ["flops_report", "resolve_output"]

CONVENTION = ("fvcore: one fused multiply-add = 1 flop; mean over inputs, each traced "
              "separately; headline flops use fvcore's default handles with "
              "Detectron2's ignored operators (= detectron2.utils.analysis."
              "FlopCountAnalysis); 'extra' = element-wise flops of tokenprune's own "
              "handles (not in the headline); 'moves' = elements moved by gather/"
              "scatter/index ops (not flops)")


def resolve_output(output_dir: str, path: Optional[str]) -> str:
    """The JSON report's path (default ``output_dir/flops.json``), its folder writable."""
    path = path or os.path.join(output_dir, "flops.json")
    if os.path.isdir(path):
        raise InputError(f"output path {path} is a folder; give a file name such as flops.json")
    make_output_dir(os.path.dirname(os.path.abspath(path)))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"cannot write to output file {path}: permission denied")
    return path


def _g(x: float) -> str:
    return f"{x / 1e9:.4f}"


def _summary(columns: Dict[str, FlopCounts]) -> str:
    titles = list(columns)
    width = 38
    lines = [f"{'GFLOPs, mean per image':<{width}}" + "".join(f"{t:>15}" for t in titles)
             + (f"{'ratio':>8}" if len(titles) == 2 else "")]
    rows = [("backbone (ViT: backbone.net)", "flops", "backbone"),
            ("  of which gates", "flops", "gates"),
            ("neck (rest of backbone)", "flops", "neck"),
            ("heads (RPN + ROI heads)", "flops", "heads"),
            ("other (pre/post-processing)", "flops", "other"),
            ("total", "flops", "total"),
            ("extra element-wise, backbone *", "extra", "backbone"),
            ("extra element-wise, total *", "extra", "total"),
            ("element moves (G), backbone **", "moves", "backbone"),
            ("element moves (G), total **", "moves", "total")]
    for label, kind, key in rows:
        values = [getattr(c, key) if kind == "flops" else getattr(c, kind)[key]
                  for c in columns.values()]
        if key == "gates" and not any(values):
            continue
        line = f"{label:<{width}}" + "".join(f"{_g(v):>15}" for v in values)
        if len(values) == 2:
            line += f"{values[0] / values[1]:>8.3f}" if values[1] else f"{'-':>8}"
        lines.append(line)
    lines.append("*  softmax, GELU, add, mul, ... (tokenprune handles), not in the headline flops")
    lines.append("** elements moved by gather / scatter / index ops, not flops")
    return "\n".join(lines)


def _print_report(title: str, columns: Dict[str, FlopCounts], table: str, num_asked: int,
                  num_inputs: int, unsupported: Counter) -> None:
    configured = columns["as configured"]
    print(f"FLOPs of {title} on the first {num_inputs} test image(s), mean per "
          f"image (fvcore: one multiply-add = 1 flop; headline = fvcore/Detectron2 handles)")
    if num_inputs < num_asked:
        print(f"note: the test set has only {num_inputs} image(s)")
    print(table)
    print(_summary(columns))
    if configured.keep_ratios:
        print("keep ratios (as configured): " + ", ".join(
            f"block {i}: {r:.3f}" for i, r in configured.keep_ratios.items()))
    if unsupported:
        print("uncounted operators (fvcore unsupported_ops, occurrences per image): " + ", ".join(
            f"{op} x{k:g}" for op, k in sorted(unsupported.items(), key=lambda kv: -kv[1])))


def flops_report(model: nn.Module, inputs: List[dict], title: str, num_asked: int,
                 depth: int) -> Dict[str, Any]:
    """Count (and, for a pruned backbone, count with every token kept), print the table and
    the summary; returns the JSON report (without the caller's config fields)."""
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    columns: Dict[str, FlopCounts] = {"as configured": count_model_flops(model, inputs)}
    pruned = find_pruned_vit(model) is not None
    if pruned:
        columns["keep all"] = count_model_flops(model, inputs, keep_all=True)
    table = flops_table(model, {f"#flops ({t})": c.by_module for t, c in columns.items()},
                        max_depth=depth)
    unsupported = Counter()
    for c in columns.values():
        for op, k in c.unsupported_ops.items():
            unsupported[op] = max(unsupported[op], k)
    _print_report(title, columns, table, num_asked, len(inputs), unsupported)
    report: Dict[str, Any] = {
        "num_inputs": len(inputs),
        "convention": CONVENTION,
        "columns": {("configured" if t == "as configured" else "keep_all"): c.to_json()
                    for t, c in columns.items()},
        "unsupported_ops": dict(unsupported),
        "table": table,
    }
    if pruned:
        configured, dense = columns["as configured"], columns["keep all"]
        report["backbone_ratio"] = configured.backbone / dense.backbone if dense.backbone else None
        report["total_ratio"] = configured.total / dense.total if dense.total else None
    return report
