"""Pictures of a prediction: drawn detections and which tokens each pruned block kept."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

__all__ = ["keep_overlay", "keep_mask_grid", "draw_detections"]


def keep_overlay(image_rgb: np.ndarray, keep: np.ndarray, patch: int,
                 dim: float = 0.25) -> np.ndarray:
    """Darken the pruned token cells of ``image_rgb`` (h, w, 3 uint8).

    Args:
        keep: (gh, gw) bool token grid of the padded input (the image is its top-left part).
        patch: token cell size in pixels.
        dim: brightness of pruned cells.
    """
    h, w = image_rgb.shape[:2]
    cells = np.kron(keep.astype(np.uint8), np.ones((patch, patch), np.uint8)).astype(bool)
    cells = cells[:h, :w]
    if cells.shape != (h, w):  # grid smaller than the image (should not happen): pad kept
        full = np.ones((h, w), bool)
        full[:cells.shape[0], :cells.shape[1]] = cells
        cells = full
    out = image_rgb.astype(np.float32)
    out[~cells] *= dim
    return out.clip(0, 255).astype(np.uint8)


def keep_mask_grid(image_rgb: np.ndarray, keep_masks: Dict[int, np.ndarray],
                   keep_ratios: Dict[int, float], patch: int, columns: int = 5,
                   gap: int = 4) -> np.ndarray:
    """One :func:`keep_overlay` panel per pruned block, labelled "block i: kept x% (n/N)",
    ``columns`` per row -> (rows * (h + gap + label), columns * (w + gap), 3) uint8.
    No masks: the image labelled "dense backbone" (or "no keep masks" when the blocks
    reduce tokens without one, as token merging does)."""
    import cv2

    h, w = image_rgb.shape[:2]
    label_h = 18
    panels = [(keep_overlay(image_rgb, m, patch),
               f"block {i}: kept {keep_ratios[i]:.1%} ({int(m.sum())}/{m.size})")
              for i, m in sorted(keep_masks.items())] \
        or [(image_rgb, "no keep masks" if keep_ratios else "dense backbone")]
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    canvas = np.full((rows * (h + label_h + gap) - gap, cols * (w + gap) - gap, 3), 255,
                     np.uint8)
    for k, (img, text) in enumerate(panels):
        y, x = (k // cols) * (h + label_h + gap), (k % cols) * (w + gap)
        cv2.putText(canvas, text, (x + 2, y + label_h - 5), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (0, 0, 0), 1, cv2.LINE_AA)
        canvas[y + label_h:y + label_h + h, x:x + w] = img
    return canvas


def draw_detections(image_rgb: np.ndarray, instances, metadata=None,
                    max_side: Optional[int] = 1024) -> np.ndarray:
    """Detectron2's ``Visualizer`` drawing of ``instances`` on ``image_rgb`` (h, w, 3 uint8,
    the size the instances are in), scaled down so its longer side is at most ``max_side``."""
    from detectron2.utils.visualizer import Visualizer

    scale = 1.0 if not max_side else min(1.0, max_side / max(image_rgb.shape[:2]))
    vis = Visualizer(image_rgb, metadata=metadata, scale=scale)
    return vis.draw_instance_predictions(instances).get_image()
