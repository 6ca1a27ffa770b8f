"""Pictures of a prediction: drawn detections and which tokens each pruned block kept; and
sample scenes of the study dataset with their masks."""
from __future__ import annotations

import io
import os
from typing import Dict, Optional

import numpy as np

from ..fileio import atomic_write_bytes, figure_png

__all__ = ["keep_overlay", "keep_mask_grid", "draw_detections", "draw_study_samples"]


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


def _outline(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool: the pixels of ``mask`` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def draw_study_samples(json_file: str, image_root: str, out_path: str, num: int = 6,
                       columns: int = 3) -> str:
    """A picture of ``num`` scenes of a study dataset (:mod:`tokenprune.data.synthetic_study`):
    sparse, medium and crowded scenes in turn, first those of median then of most objects
    of their density. Each scene is shown beside its visible masks filled in class colours
    (camouflaged objects hatched, outlines white) and titled with its object count and
    token share; ``columns`` scenes per row, a legend of the classes below. Writes a PNG
    to ``out_path`` and returns it."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from PIL import Image

    from ..data.scene_statistics import scene_statistics, segmentation_mask

    with open(json_file) as f:
        coco = json.load(f)
    stats = scene_statistics(json_file)
    by_count = np.argsort(stats["objects_per_image"], kind="stable")
    pools = [[int(i) for i in by_count if stats["density"][i] == d]
             for d in ("sparse", "medium", "crowded")]
    per_pool = -(-num // len(pools))
    picks = [pool[(j + 1) * (len(pool) - 1) // per_pool]
             for j in range(per_pool) for pool in pools if pool][:num]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    palette = plt.get_cmap("tab10").colors
    color_of = {cid: np.array(palette[k % len(palette)]) for k, cid in enumerate(sorted(names))}
    rows = -(-len(picks) // columns)
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(5.2 * columns, 2.7 * rows + 0.4),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, i in enumerate(picks):
        img = coco["images"][i]
        with Image.open(os.path.join(image_root, img["file_name"])) as im:
            pixels = np.asarray(im.convert("RGB"))
        masks = np.zeros(pixels.shape, np.float32)
        hatch = np.add.outer(np.arange(img["height"]), np.arange(img["width"])) % 4 < 2
        for ann in (a for a in coco["annotations"] if a["image_id"] == img["id"]):
            mask = segmentation_mask(ann["segmentation"], img["height"], img["width"])
            masks[mask & hatch if ann.get("camouflaged") else mask] = color_of[ann["category_id"]]
            masks[_outline(mask)] = 1.0
        ax_img, ax_mask = axes[k // columns, 2 * (k % columns):2 * (k % columns) + 2]
        ax_img.imshow(pixels, interpolation="nearest")
        ax_mask.imshow(masks, interpolation="nearest")
        count = stats["objects_per_image"][i]
        ax_img.set_title(f"{stats['density'][i]}: {count} object{'s' * (count != 1)}, "
                         f"{stats['token_share'][i]:.0%} of tokens", fontsize=9, loc="left")
    handles = [Patch(color=color_of[c], label=names[c]) for c in sorted(names)]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="////",
                         label="camouflaged (hatched)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    with Image.open(io.BytesIO(figure_png(fig, dpi=100))) as im:
        # a palette of 256 colours: a fifth of the size, looks the same
        buf = io.BytesIO()
        im.convert("RGB").quantize(256).save(buf, format="PNG", optimize=True)
    atomic_write_bytes(out_path, buf.getvalue())
    return out_path
