"""What a generated scene dataset holds: object counts, token shares and COCO size ranges
(for the tests, the docs and the sample drawings), and the masks of its annotations."""

import json
from typing import Any, Dict, List

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["scene_statistics", "segmentation_mask"]


def segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons or RLE) -> (height, width) bool mask."""
    if isinstance(segmentation, list):
        return mask_util.decode(
            mask_util.merge(mask_util.frPyObjects(segmentation, height, width))).astype(bool)
    if isinstance(segmentation["counts"], list):
        segmentation = mask_util.frPyObjects(segmentation, height, width)
    return mask_util.decode(segmentation).astype(bool)


def scene_statistics(json_file: str, patch: int = 16) -> Dict[str, Any]:
    """
    What a COCO json's scenes hold, for the tests and the docs.

    Returns:
        dict with "num_images", "num_objects"; per image, in the json's order:
        "objects_per_image" (int), "density" (the image entry's "density", None when absent)
        and "token_share" (the fraction of the image's ``patch`` x ``patch`` px tokens, the
        grid padded to whole tokens, with a pixel of an object's visible mask);
        "area_fractions": {"small", "medium", "large"}, the fractions of the annotations by
        COCO's area ranges (area < 32^2, up to 96^2, above); "camouflaged_share": the
        fraction of annotations with a true "camouflaged" (0 when there are none).
    """
    with open(json_file) as f:
        coco = json.load(f)
    anns_of: Dict[int, List[Dict[str, Any]]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        anns_of[ann["image_id"]].append(ann)
    counts, shares = [], []
    for img in coco["images"]:
        h, w = img["height"], img["width"]
        gh, gw = -(-h // patch), -(-w // patch)
        union = np.zeros((gh * patch, gw * patch), dtype=bool)
        for ann in anns_of[img["id"]]:
            union[:h, :w] |= segmentation_mask(ann["segmentation"], h, w)
        counts.append(len(anns_of[img["id"]]))
        shares.append(float(union.reshape(gh, patch, gw, patch).any(axis=(1, 3)).mean()))
    areas = np.array([a["area"] for a in coco["annotations"]], dtype=float)
    num = max(1, len(areas))
    return {
        "num_images": len(coco["images"]),
        "num_objects": len(coco["annotations"]),
        "objects_per_image": counts,
        "density": [img.get("density") for img in coco["images"]],
        "token_share": shares,
        "area_fractions": {
            "small": float(np.sum(areas < 32**2)) / num,
            "medium": float(np.sum((areas >= 32**2) & (areas <= 96**2))) / num,
            "large": float(np.sum(areas > 96**2)) / num,
        },
        "camouflaged_share": sum(bool(a.get("camouflaged")) for a in coco["annotations"]) / num,
    }
