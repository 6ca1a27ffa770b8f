"""The accuracy / speed trade-off of one trained model: its points, the Pareto front, the
operating point within an AP budget, and the report (``tradeoff.csv``, ``tradeoff.md``,
``tradeoff.png``). The sweep that measures the points: :mod:`tokenprune.study.tradeoff`.

A point is a reducer at a forced keep ratio (every pruned block keeps the top ``ceil(r * N)``
of its tokens), the learned gates' own dynamic rate (no forced ratio), or the dense
reference (every block dense, no gate). Reducers:

* ``gates``: the learned gates deciding per image (the dynamic point; one point whatever
  the ratios). In this code base the learned gates "with the ratio forced" are exactly the
  top-k of their scores, so that is ``topk``, and ``gates`` is the dynamic point;
* ``topk``: the learned gates' scores, top-k at the ratio (``fixed_keep_ratio=r``);
* ``random``, ``evit``, ``tome``: the training-free baselines of
  :data:`tokenprune.modeling.baselines.BASELINE_ARGS` on the checkpoint's weights, at the ratio.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..fileio import figure_png
from ..modeling.baselines import BASELINE_ARGS, net_overrides

__all__ = ["REDUCERS", "LEARNED_REDUCERS", "DEFAULT_KEEP_RATIOS", "Point", "model_args",
           "pareto_front", "with_ratios", "choose_point", "choice_text", "csv_text",
           "markdown", "plot_png"]

REDUCERS: Dict[str, str] = {
    "gates": "the learned gates' own dynamic rate per image (one point, no forced ratio)",
    "topk": "the learned gates' scores, top-k at the forced ratio",
    "random": "a uniformly random choice at the ratio (gate=random)",
    "evit": "EViT: top-k by received attention, no reactivation (gate=attention)",
    "tome": "ToMe: bipartite token merging (reducer=tome)",
}
LEARNED_REDUCERS = ("gates", "topk")
DEFAULT_KEEP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


def model_args(reducer: str, has_gate_kwargs: bool) -> Dict[str, Any]:
    """The PrunedViT arguments that build ``reducer``'s model from the config's (none for the
    learned gates; a baseline's gate drops the config's ``gate_kwargs``, e.g. VLTP's)."""
    args = dict(BASELINE_ARGS.get(reducer, {}))
    if "gate" in args and has_gate_kwargs:
        args["gate_kwargs"] = None
    return args


@dataclass(frozen=True)
class Point:
    """One point of the sweep: ``reducer`` ("dense" or a key of :data:`REDUCERS`) at the
    forced keep ratio ``ratio`` (None: dense, or the gates' dynamic rate)."""

    reducer: str
    ratio: Optional[float] = None

    @property
    def key(self) -> str:
        """File-name key: ``dense``, ``gates``, ``topk_0.7``."""
        return self.reducer if self.ratio is None else f"{self.reducer}_{self.ratio:g}"

    def override(self, has_gate_kwargs: bool) -> str:
        """The config overrides that run this point with ``train_net.py --eval-only`` and the
        tools (empty for dense: the dense model is the dense config)."""
        if self.reducer == "dense":
            return ""
        args = model_args(self.reducer, has_gate_kwargs)
        args.update(fixed_keep_ratio=self.ratio)
        if self.ratio is None:
            args["dynamic"] = True
        return " ".join(net_overrides(args))


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> List[bool]:
    """Per point (x, y), larger both better: True when no other point is at least as good
    in both and better in one (a point with a NaN coordinate is never on the front)."""
    ok = [not (math.isnan(x) or math.isnan(y)) for x, y in zip(xs, ys)]
    front = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        front.append(ok[i] and not any(
            ok[j] and xs[j] >= x and ys[j] >= y and (xs[j] > x or ys[j] > y)
            for j in range(len(xs)) if j != i))
    return front


def with_ratios(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The rows with what depends on the dense row (first): FLOP ratios, the box AP
    difference, and the Pareto marks (``front_speed``: box AP against the measured
    whole-model speedup; ``front_flops``: box AP against the backbone FLOP ratio)."""
    dense = rows[0]
    out = [dict(r) for r in rows]
    for r in out:
        r["backbone_flops_ratio"] = r["backbone_gflops"] / dense["backbone_gflops"]
        r["total_flops_ratio"] = r["total_gflops"] / dense["total_gflops"]
        r["box_ap_drop"] = dense["box_ap"] - r["box_ap"]
    ap = [r["box_ap"] for r in out]
    for key, xs in (("front_speed", [r["model_speedup"] for r in out]),
                    ("front_flops", [-r["backbone_flops_ratio"] for r in out])):
        for r, on in zip(out, pareto_front(xs, ap)):
            r[key] = on
    return out


def choose_point(rows: List[Dict[str, Any]], max_ap_drop: float) -> Optional[Dict[str, Any]]:
    """The fastest measured point (whole-model speedup, then backbone speedup) other than
    dense whose box AP is at most ``max_ap_drop`` below dense's (rows of
    :func:`with_ratios`); None when none qualifies."""
    fits = [r for r in rows[1:] if r["box_ap_drop"] <= max_ap_drop]  # NaN never fits
    return max(fits, key=lambda r: (r["model_speedup"], r["backbone_speedup"]), default=None)


def choice_text(rows: List[Dict[str, Any]], max_ap_drop: float) -> str:
    """The ``--max-ap-drop`` answer as a few lines: the point and the override that runs it."""
    dense_ap = rows[0]["box_ap"]
    best = choose_point(rows, max_ap_drop)
    if best is None:
        return (f"no point keeps its box AP within {max_ap_drop:g} of dense "
                f"({dense_ap:.1f}): none qualifies")
    return (f"fastest point within {max_ap_drop:g} box AP of dense ({dense_ap:.1f}): "
            f"{best['label']}, box AP {best['box_ap']:.1f}, mask AP {best['mask_ap']:.1f}, "
            f"whole model {best['model_speedup']:.2f}x, backbone {best['backbone_speedup']:.2f}x "
            f"(backbone FLOPs {best['backbone_flops_ratio']:.2f} of dense)\n"
            f"run it with the override: {best['override']}")


_COLUMNS = ("key", "reducer", "keep_ratio", "kept", "box_ap", "box_ap_drop", "mask_ap",
            "task_miou", "backbone_gflops", "backbone_flops_ratio", "total_gflops",
            "total_flops_ratio", "backbone_ms", "dense_backbone_ms", "backbone_speedup",
            "model_ms", "dense_model_ms", "model_speedup", "front_speed", "front_flops",
            "override")


def csv_text(rows: List[Dict[str, Any]]) -> str:
    """tradeoff.csv: one line per point (rows of :func:`with_ratios`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _cell(value: Optional[float], spec: str = ".1f") -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:{spec}}"


def markdown(rows: List[Dict[str, Any]], info: Dict[str, Any],
             max_ap_drop: Optional[float] = None) -> str:
    """tradeoff.md: the run's settings and machine, one table line per point."""
    miou = any(not math.isnan(r["task_miou"]) for r in rows)
    lines = [f"# Accuracy against speed: {info['config_file']}", "",
             f"- checkpoint: `{info['checkpoint']}`; overrides: "
             f"`{' '.join(info['overrides']) or 'none'}`",
             f"- evaluated on {info['num_images']} images of `{info['test_dataset']}`, batch "
             f"{info['batch_size']}, precision {info['precision']}",
             f"- machine: {info['device']} ({info['device_name']}), torch "
             f"{info['torch_version']}, {info['torch_threads']} threads",
             f"- FLOPs: fvcore, mean over the first {info['latency_images']} images; latency: "
             f"median ms per image over {info['repeats']} rounds of the same images, each point "
             "and dense interleaved in one process; dense against itself (the timing noise): "
             f"backbone {rows[0]['backbone_noise']:.2f}x, whole model "
             f"{rows[0]['model_noise']:.2f}x",
             "- Pareto: on the front of box AP against the whole-model speedup (s) and against "
             "the backbone FLOP ratio (f)", ""]
    lines += [f"- `{name}`: {what}" for name, what in REDUCERS.items()]
    head = ("| point | kept | box AP | Δ | mask AP |" + (" task mIoU |" if miou else "")
            + " backbone GFLOPs (ratio) | total GFLOPs | backbone ms | backbone speedup "
            "| model ms | model speedup | Pareto |")
    lines += ["", head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        front = ("s" if r["front_speed"] else "") + ("f" if r["front_flops"] else "")
        lines.append(
            f"| {r['label']} | {r['kept']:.3f} | {_cell(r['box_ap'])} | "
            f"{_cell(-r['box_ap_drop'], '+.1f')} | {_cell(r['mask_ap'])} |"
            + (f" {_cell(r['task_miou'])} |" if miou else "")
            + f" {r['backbone_gflops']:.3f} ({r['backbone_flops_ratio']:.2f}) | "
            f"{r['total_gflops']:.3f} | {r['backbone_ms']:.1f} | {r['backbone_speedup']:.2f}x | "
            f"{r['model_ms']:.1f} | {r['model_speedup']:.2f}x | {front} |")
    if max_ap_drop is not None:
        lines += ["", choice_text(rows, max_ap_drop).replace("\n", "; ")]
    return "\n".join(lines) + "\n"


def _panel(ax, rows: List[Dict[str, Any]], x_key: str, front_key: str, xlabel: str) -> None:
    """One panel: box AP against ``x_key``, a line per reducer, dense and the dynamic gates
    as markers, the Pareto front dashed."""
    for reducer in REDUCERS:
        line = sorted((r for r in rows if r["reducer"] == reducer and r["keep_ratio"]),
                      key=lambda r: r["keep_ratio"])
        if line:
            ax.plot([r[x_key] for r in line], [r["box_ap"] for r in line], "o-", ms=4,
                    label=reducer)
    for reducer, style, label in (("dense", "k*", "dense"),
                                  ("gates", "r*", "learned gates (dynamic)")):
        for r in rows:
            if r["reducer"] == reducer:
                ax.plot([r[x_key]], [r["box_ap"]], style, ms=12, label=label)
    front = sorted((r for r in rows if r[front_key]), key=lambda r: r[x_key])
    ax.plot([r[x_key] for r in front], [r["box_ap"] for r in front], "--", color="0.4",
            lw=1, marker="o", mfc="none", ms=10, label="Pareto front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("box AP")
    ax.grid(alpha=0.3)


def plot_png(rows: List[Dict[str, Any]], title: str) -> bytes:
    """tradeoff.png: box AP against the measured whole-model speedup and against the
    backbone FLOP ratio (rows of :func:`with_ratios`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    _panel(axes[0], rows, "model_speedup", "front_speed",
           "whole-model speedup over dense (measured, median)")
    _panel(axes[1], rows, "backbone_flops_ratio", "front_flops",
           "backbone FLOPs / dense (fvcore)")
    axes[1].invert_xaxis()  # cheaper to the right, as faster is in the left panel
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return figure_png(fig, dpi=110)

