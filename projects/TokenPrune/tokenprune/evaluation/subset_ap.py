"""COCO AP on a subset of a test set's images, from the detections Detectron2's
``COCOEvaluator`` saved (``coco_instances_results.json`` in its ``output_dir``): e.g. the
sparse and the crowded images of the SViT study."""
from __future__ import annotations

import contextlib
import io
import json
from typing import Dict, Iterable, List, Sequence, Tuple

__all__ = ["images_by_count", "subset_ap"]


def images_by_count(gt_json: str, ranges: Dict[str, Tuple[int, int]]) -> Dict[str, List[int]]:
    """{subset: ids of the images of the COCO file ``gt_json`` with ``low`` to ``high``
    annotated objects (both included)} for each subset's ``(low, high)`` in ``ranges``."""
    with open(gt_json) as f:
        data = json.load(f)
    counts: Dict[int, int] = {int(img["id"]): 0 for img in data["images"]}
    for ann in data["annotations"]:
        counts[int(ann["image_id"])] += 1
    return {name: sorted(i for i, n in counts.items() if low <= n <= high)
            for name, (low, high) in ranges.items()}


def subset_ap(gt_json: str, results_json: str, subsets: Dict[str, Iterable[int]],
              iou_types: Sequence[str] = ("bbox", "segm")) -> Dict[str, Dict[str, float]]:
    """{subset: {iou type: COCO AP (0-100)}} of the detections in ``results_json`` (COCO
    results format with the dataset's category ids, as ``COCOEvaluator`` writes them) over
    each subset's image ids of ``gt_json``; nan where those images hold no ground truth.
    Both files are read once."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with open(results_json) as f:
        all_dets = json.load(f)
    out: Dict[str, Dict[str, float]] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO(gt_json)
        for name, image_ids in subsets.items():
            ids = sorted(int(i) for i in image_ids)
            wanted = set(ids)
            dets = [d for d in all_dets if int(d["image_id"]) in wanted]
            out[name] = {}
            for iou_type in iou_types:
                if not gt.getAnnIds(imgIds=ids):
                    out[name][iou_type] = float("nan")
                    continue
                if not dets:
                    out[name][iou_type] = 0.0
                    continue
                # as Detectron2's COCOEvaluator: a mask result without its box, so that
                # pycocotools takes the area and box from the mask
                found = gt.loadRes([{k: v for k, v in d.items()
                                     if not (iou_type == "segm" and k == "bbox")}
                                    for d in dets])
                ev = COCOeval(gt, found, iou_type)
                ev.params.imgIds = ids
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
                out[name][iou_type] = max(0.0, float(ev.stats[0])) * 100
    return out
