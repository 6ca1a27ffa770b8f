"""Which tokens a pruned ViTDet keeps, block by block, and what it detects.

    python -m tokenprune.tools.visualize --config-file configs/Synthetic/mask_rcnn_vitdet_t_svit.py \\
        --input img1.png img2.jpg --output out/vis [--confidence-threshold 0.5] [--keep-ratio 0.5] \\
        [--prompt "red shapes" "the largest object" | --task-id 0 2] [-- key=value ...]

For every input image, one PNG ``<output>/<image name>.png`` with

* a panel of the final detections (Detectron2's ``Visualizer`` with the metadata of the
  config's test dataset; detections with score >= ``--confidence-threshold``), and
* one panel per pruned block: the image as the model sees it (after the test mapper's
  resize) with the pruned token cells darkened, titled with the block index and the kept
  fraction of the block's token grid (``PrunedViT.last_keep_ratios``).

The images go through a :class:`~tokenprune.engine.predictor.Predictor` (the config's test
mapper, the model, detections at the input size). Weights: ``train.init_checkpoint``
(``--checkpoint``). ``--keep-ratio`` forces top-k rates (the model's ``fixed_keep_ratio``)
instead of the gates' per-image decision. ``--prompt`` / ``--task-id`` go into the input
dict as ``"prompt"`` / ``"task_id"`` for task-guided models (VLTP). Several of them (given both, they are paired
in order) put one row per prompt or task into each image's PNG, so the kept tokens of
different tasks on the same image sit side by side.

Bad input (unreadable or non-image files, an output folder that cannot be written, a
config whose test dataset is missing, a bad keep ratio or threshold) stops with one line
``tokenprune.tools.visualize: error: ...`` and exit status 2, before any image is written. The
PNGs are kept in memory and written (atomically) only after every image is done.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..analysis.drawing import draw_detections, keep_overlay
from ..errors import InputError
from ..fileio import atomic_write_bytes, figure_png
from .predictor import Prediction, Predictor
from .results import output_stems

__all__ = ["VisualizeOptions", "guidances", "visualize"]


@dataclass(frozen=True)
class VisualizeOptions:
    """What to draw: one row per prompt / task id (paired in order when both are given)."""

    prompts: Tuple[str, ...] = ()
    task_ids: Tuple[int, ...] = ()

    def check(self) -> None:
        """InputError for unpaired prompts and task ids."""
        guidances(self.prompts, self.task_ids)


_Panel = Tuple[np.ndarray, str]  # (RGB image, title)


def _figure(title: str, rows: List[List[_Panel]]) -> bytes:
    """One row of panels per guidance; a single row wraps at 4 panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(rows) == 1:
        rows = [rows[0][i:i + 4] for i in range(0, len(rows[0]), 4)]
    nrows, ncols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows + 0.4),
                             dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row_axes, row in zip(axes, rows):
        for ax, (img, t) in zip(row_axes, row):
            ax.imshow(img)
            ax.set_title(t, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def guidances(prompts: Sequence[str], task_ids: Sequence[int]) -> List[Dict]:
    """The input-dict entries of each requested guidance (``[{}]`` when none)."""
    prompts, task_ids = list(prompts or []), list(task_ids or [])
    if prompts and task_ids and len(prompts) != len(task_ids):
        raise InputError(f"{len(prompts)} --prompt values and {len(task_ids)} --task-id values: "
                         f"give one kind, or as many of each (they are paired in order)")
    n = max(len(prompts), len(task_ids), 1)
    out = [{} for _ in range(n)]
    for d, p in zip(out, prompts):
        d["prompt"] = p
    for d, t in zip(out, task_ids):
        d["task_id"] = t
    return out


def _guidance_label(guidance: Dict) -> str:
    parts = [f'"{guidance["prompt"]}"'] if "prompt" in guidance else []
    if "task_id" in guidance:
        parts.append(f"task {guidance['task_id']}")
    return " ".join(parts)


def _guidance_row(predictor: Predictor, pred: Prediction, path: str, image: np.ndarray,
                  guidance: Dict) -> Tuple[List[_Panel], str]:
    """The detections panel and one panel per pruned block for one (image, guidance)."""
    from detectron2.data.detection_utils import convert_image_to_rgb

    fmt, instances = predictor.input_format, pred.instances
    det = draw_detections(convert_image_to_rgb(image, fmt), instances, predictor.metadata,
                          max_side=None)
    label = _guidance_label(guidance)
    det_title = (f"{label}\n" if label else "") + \
        f"{len(instances)} detections (score >= {predictor.confidence_threshold:g})"
    seen_rgb = convert_image_to_rgb(pred.image, fmt)
    row, kept = [], []
    for i, keep in pred.keep_masks.items():
        frac = pred.keep_ratios[i]
        row.append((keep_overlay(seen_rgb, keep, pred.patch_size),
                    f"block {i}: kept {frac:.0%} ({int(keep.sum())}/{keep.size})"))
        kept.append(f"block {i} {frac:.0%}")
    if not row:
        det_title += "\n(no pruned blocks: dense backbone)"
    line = f"{path}{' ' + label if label else ''}: {len(instances)} detections" \
        + (f"; kept: {', '.join(kept)}" if kept else "")
    return [(det, det_title), *row], line


def visualize(predictor: Predictor, images: Sequence[Tuple[str, np.ndarray]], out_dir: str,
              options: VisualizeOptions = VisualizeOptions()) -> List[str]:
    """One PNG per (path, image in the predictor's input format) in ``out_dir`` (see the
    module docstring), one stdout line per image and guidance; returns the PNGs' paths."""
    options.check()
    pngs: Dict[str, bytes] = {}
    for (path, image), stem in zip(images, output_stems([p for p, _ in images])):
        rows = []
        for guidance in guidances(options.prompts, options.task_ids):
            pred = predictor.forward([predictor.prepare(image, **guidance)])[0]
            row, line = _guidance_row(predictor, pred, path, image, guidance)
            rows.append(row)
            print(line, flush=True)
        pngs[os.path.join(out_dir, f"{stem}.png")] = _figure(os.path.basename(path), rows)
    for final, png in pngs.items():  # every image done: now the files appear
        atomic_write_bytes(final, png)
    return list(pngs)
