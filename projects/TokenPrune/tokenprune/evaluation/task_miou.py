"""VLTP's task-oriented segmentation measure: IoU of the union of relevant-object masks.

For each (image, task) pair -- one record of a task dataset such as ``coco_tasks_test`` or
``synthetic_tasks_val`` -- the prediction is the union of the predicted instance masks with
score >= ``score_thresh`` and the ground truth is the union of the record's (task-relevant)
instance masks. Reported, in percent:

* ``mIoU``: mean over pairs of intersection / union. A pair with an empty prediction *and* an
  empty ground truth (nothing relevant, nothing predicted) counts as IoU 1: it is solved.
* ``cIoU``: cumulative intersection over cumulative union over all pairs (empty pairs add
  nothing; 100 if every pair is empty/empty).
* ``mIoU-task{t}``: ``mIoU`` over the pairs of task ``t``.
* ``mIoU-nonempty``: ``mIoU`` over the pairs with something relevant only (an empty pair's
  IoU of 1 lifts every model alike and hides differences); ``empty_pairs``: their share of
  the pairs (percent).
"""
from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from typing import Any, Dict, List

import numpy as np
import pycocotools.mask as mask_util

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm

__all__ = ["TaskMaskIoUEvaluator", "union_mask"]

logger = logging.getLogger(__name__)


def _annotation_mask(ann: Dict[str, Any], height: int, width: int) -> np.ndarray:
    """One Detectron2 annotation -> (height, width) bool mask (its box when it has no mask)."""
    seg = ann.get("segmentation")
    if isinstance(seg, dict):  # RLE, compressed (str counts) or not (list counts)
        rle = mask_util.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
        return mask_util.decode(rle).astype(bool)
    if seg:  # polygons
        polygons = [p for p in seg if len(p) >= 6]
        if polygons:
            rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
            return mask_util.decode(rle).astype(bool)
    x0, y0, x1, y1 = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
    mask = np.zeros((height, width), dtype=bool)
    mask[max(int(round(y0)), 0) : int(round(y1)), max(int(round(x0)), 0) : int(round(x1))] = True
    return mask


def union_mask(annotations: List[Dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Union of the masks of Detectron2 annotations -> (height, width) bool array."""
    mask = np.zeros((height, width), dtype=bool)
    for ann in annotations:
        mask |= _annotation_mask(ann, height, width)
    return mask


class TaskMaskIoUEvaluator(DatasetEvaluator):
    """mIoU / cIoU of the union of relevant-instance masks per (image, task) pair.

    Ground truth is read from the registered dataset ``dataset_name`` (records keyed by
    ``image_id``, which must be unique per pair; each record has ``task_id``). Predictions are
    Detectron2 ``outputs[i]["instances"]`` with ``scores`` and ``pred_masks`` at the record's
    resolution. Returns ``{"task_seg": {"mIoU": %, "cIoU": %, "mIoU-task{t}": %, ...}}``.
    """

    def __init__(self, dataset_name: str, score_thresh: float = 0.5):
        self._dataset_name = dataset_name
        self._score_thresh = score_thresh
        self._records = {r["image_id"]: r for r in DatasetCatalog.get(dataset_name)}
        self._pairs: List[tuple] = []

    def reset(self) -> None:
        self._pairs = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Stores (image_id, task_id, intersection, union) pixel counts for each pair."""
        for inp, out in zip(inputs, outputs):
            record = self._records[inp["image_id"]]
            h, w = record["height"], record["width"]
            gt = union_mask(record.get("annotations", []), h, w)
            instances = out["instances"]
            if not instances.has("pred_masks"):
                raise ValueError("TaskMaskIoUEvaluator needs predictions with 'pred_masks'")
            keep = instances.scores >= self._score_thresh
            masks = instances.pred_masks[keep].to("cpu")
            if tuple(masks.shape[-2:]) != (h, w):
                raise ValueError(
                    f"predicted masks have size {tuple(masks.shape[-2:])}, "
                    f"image {inp['image_id']} has {(h, w)}"
                )
            pred = masks.any(dim=0).numpy() if len(masks) else np.zeros((h, w), dtype=bool)
            inter = int(np.logical_and(pred, gt).sum())
            union = int(np.logical_or(pred, gt).sum())
            self._pairs.append((inp["image_id"], int(record["task_id"]), inter, union,
                                bool(gt.any())))

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        pairs = comm.gather(self._pairs, dst=0)
        if not comm.is_main_process():
            return {}
        pairs = list(itertools.chain(*pairs))
        if not pairs:
            logger.warning(f"TaskMaskIoUEvaluator on {self._dataset_name}: no predictions.")
            return {}
        ious = defaultdict(list)
        nonempty: List[float] = []
        total_inter = total_union = 0
        for _, task_id, inter, union, relevant in pairs:
            iou = inter / union if union > 0 else 1.0
            ious[task_id].append(iou)
            if relevant:
                nonempty.append(iou)
            total_inter += inter
            total_union += union
        all_ious = list(itertools.chain(*ious.values()))
        results = {
            "mIoU": 100.0 * float(np.mean(all_ious)),
            "cIoU": 100.0 * total_inter / total_union if total_union > 0 else 100.0,
            "mIoU-nonempty": 100.0 * float(np.mean(nonempty)) if nonempty else float("nan"),
            "empty_pairs": 100.0 * (1 - len(nonempty) / len(pairs)),
        }
        for task_id in sorted(ious):
            results[f"mIoU-task{task_id}"] = 100.0 * float(np.mean(ious[task_id]))
        logger.info(
            f"Task segmentation on {self._dataset_name} ({len(pairs)} pairs): "
            f"mIoU {results['mIoU']:.2f} ({results['mIoU-nonempty']:.2f} without the "
            f"{results['empty_pairs']:.0f}% of pairs with nothing relevant), "
            f"cIoU {results['cIoU']:.2f}"
        )
        return {"task_seg": results}
