"""A predictor over many image files, with results a program can read.

:func:`predict_folder` collects the inputs (:func:`collect_inputs`), runs a
:class:`~tokenprune.engine.predictor.Predictor` in batches with a progress bar, and writes

* per image: ``<name>_detections.png`` (drawn detections) and ``<name>_keep.png`` (one
  keep-mask overlay panel per pruned block), each as soon as its batch is done;
* for the run: ``results.json`` (COCO results: ``image_id``, ``file_name``, ``category_id``,
  ``bbox`` XYWH pixels, ``score``, ``segmentation`` RLE with ``counts`` a str), and
  ``keep_ratios.csv`` (per image: size, detections, latency, mean and per-block keep ratio).

Unreadable files are reported, skipped, and listed in the returned :class:`RunSummary`.
"""
from __future__ import annotations

import csv
import glob
import io
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import BadImageError, InputError
from ..analysis.drawing import draw_detections, keep_mask_grid
from .predictor import Prediction, PreparedImage, Predictor

__all__ = ["IMAGE_EXTENSIONS", "collect_inputs", "coco_results", "keep_ratio_table",
           "output_stems", "predict_folder", "RunSummary"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                    ".pgm")
RESULTS_JSON = "results.json"
KEEP_CSV = "keep_ratios.csv"


def collect_inputs(specs: Sequence[str]) -> List[str]:
    """Files, folders (their image files by extension, sorted, not recursive) and glob
    patterns -> image paths, each once, in the order given. A spec that names nothing
    raises :class:`InputError`."""
    paths: List[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, n) for n in os.listdir(spec)
                           if n.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(spec, n)))
            if not found:
                raise InputError(f"folder {spec} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        elif os.path.exists(spec):
            found = [spec]
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
            if not found:
                raise InputError(f"pattern {spec} matches no files")
        else:
            raise InputError(f"input not found: {spec}")
        paths.extend(found)
    seen, unique = set(), []
    for p in paths:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_stems(paths: Sequence[str]) -> List[str]:
    """A distinct output name stem per input (``a.png``, ``a.jpg`` -> ``a``, ``a_1``)."""
    stems, used = [], set()
    for p in paths:
        base = os.path.splitext(os.path.basename(p))[0] or "image"
        stem, k = base, 1
        while stem in used:
            stem, k = f"{base}_{k}", k + 1
        used.add(stem)
        stems.append(stem)
    return stems


def coco_results(prediction: Prediction, image_id: int, file_name: str,
                 metadata=None) -> List[Dict]:
    """COCO result dicts of one image (Detectron2's ``instances_to_coco_json``) with
    ``file_name``; category ids mapped back to the dataset's when the metadata has
    ``thing_dataset_id_to_contiguous_id``, else the contiguous class index."""
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    to_dataset = {}
    mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) if metadata else None
    if mapping:
        to_dataset = {v: k for k, v in mapping.items()}
    rows = instances_to_coco_json(prediction.instances, image_id)
    for r in rows:
        r["category_id"] = int(to_dataset.get(r["category_id"], r["category_id"]))
        r["file_name"] = file_name
    return rows


def keep_ratio_table(rows: List[Dict]) -> str:
    """CSV text of the per-image rows; one ``keep_block{i}`` column per pruned block."""
    blocks = sorted({i for r in rows for i in r["keep_ratios"]})
    header = ["image_id", "file_name", "width", "height", "detections", "latency_ms",
              "batch_size", "keep_mean"] + [f"keep_block{i}" for i in blocks]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        k = r["keep_ratios"]
        writer.writerow([r["image_id"], r["file_name"], r["width"], r["height"],
                         r["detections"], f"{r['latency_ms']:.1f}", r["batch_size"],
                         f"{np.mean(list(k.values())):.4f}" if k else ""]
                        + [f"{k[i]:.4f}" if i in k else "" for i in blocks])
    return buf.getvalue()


@dataclass
class RunSummary:
    """What :func:`predict_folder` did: image paths done, (path, reason) skipped, files."""

    done: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    results_json: str = ""
    keep_csv: str = ""


def predict_folder(predictor: Predictor, paths: Sequence[str], out_dir: str,
                   batch_size: int = 1, guidance: Optional[Dict] = None,
                   progress: bool = True) -> RunSummary:
    """Run ``predictor`` over ``paths`` in batches and write the outputs into ``out_dir``
    (module docstring). ``guidance``: task_id / prompt / guidance for every image."""
    from tqdm import tqdm

    from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
    from detectron2.data.detection_utils import convert_image_to_rgb

    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    summary = RunSummary()
    coco: List[Dict] = []
    table: List[Dict] = []
    stems = output_stems(paths)
    fmt = predictor.input_format
    start = time.perf_counter()
    bar = tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    for first in range(0, len(paths), batch_size):
        batch: List[Tuple[int, np.ndarray, PreparedImage]] = []
        for k in range(first, min(first + batch_size, len(paths))):
            try:
                image = predictor.read(paths[k])
                batch.append((k, image, predictor.prepare(image, **(guidance or {}))))
            except BadImageError as e:
                summary.skipped.append((paths[k], str(e)))
                bar.write(f"skipped {paths[k]}: {e}", file=sys.stderr)
                bar.update(1)
        if not batch:
            continue
        t0 = time.perf_counter()
        preds = predictor.forward([p for _, _, p in batch])
        per_image_ms = 1000 * (time.perf_counter() - t0) / len(batch)
        for (k, image, _), pred in zip(batch, preds):
            image_id = k + 1
            rgb = convert_image_to_rgb(image, fmt)
            seen_rgb = convert_image_to_rgb(pred.image, fmt)
            atomic_write_bytes(os.path.join(out_dir, f"{stems[k]}_detections.png"),
                               _png(draw_detections(rgb, pred.instances, predictor.metadata)))
            atomic_write_bytes(os.path.join(out_dir, f"{stems[k]}_keep.png"),
                               _png(keep_mask_grid(seen_rgb, pred.keep_masks, pred.keep_ratios,
                                                   pred.patch_size)))
            coco.extend(coco_results(pred, image_id, paths[k], predictor.metadata))
            h, w = image.shape[:2]
            table.append(dict(image_id=image_id, file_name=paths[k], width=w, height=h,
                              detections=len(pred.instances), latency_ms=per_image_ms,
                              batch_size=len(batch), keep_ratios=pred.keep_ratios))
            summary.done.append(paths[k])
            bar.update(1)
    bar.close()
    summary.results_json = os.path.join(out_dir, RESULTS_JSON)
    summary.keep_csv = os.path.join(out_dir, KEEP_CSV)
    atomic_write_json(summary.results_json, coco)
    atomic_write_text(summary.keep_csv, keep_ratio_table(table))
    summary.seconds = time.perf_counter() - start
    return summary


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
