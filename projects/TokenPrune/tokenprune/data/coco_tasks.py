"""COCO-Tasks (Sawatzky et al., "What Object Should I Use? - Task Driven Object Detection",
CVPR 2019): 14 tasks over COCO 2014 images, for task-oriented segmentation (VLTP).

Format (https://github.com/coco-tasks/dataset, branch cvpr2019; README there):
``annotations/task_{t}_{split}.json`` for t = 1..14 and split in {train, test}, each a
COCO-style json over the COCO images chosen for task t. Every annotation is a COCO object
(COCO annotation ``id``, ``image_id``, ``bbox`` [x, y, w, h], ``segmentation``, ``area``,
``iscrowd``) with two changes: ``COCO_category_id`` holds the object's COCO class and
``category_id`` is 1 if the object is preferred for the task in this image, 0 if not.
Image ``file_name`` s are COCO 2014 names (``COCO_train2014_*.jpg`` / ``COCO_val2014_*.jpg``);
the images themselves come from COCO.

Layout read here (Detectron2's convention, root = ``$DETECTRON2_DATASETS``)::

    coco-tasks/annotations/task_{1..14}_{train,test}.json
    coco/train2014/COCO_train2014_*.jpg
    coco/val2014/COCO_val2014_*.jpg

Dataset dicts: one record per (image, task) pair with ``task_id`` (1..14), ``prompt`` (the
task's name), ``coco_image_id`` and ``image_id = task_id * 10**7 + coco_image_id`` (unique
per pair, as evaluators need). ``annotations`` holds only the preferred objects, with the
single class "object" (``category_id`` 0) and the object's COCO class in ``coco_category_id``.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..errors import DatasetNotFoundError
from .synthetic import SHAPE_CLASSES, generate_synthetic_shapes

__all__ = [
    "COCO_TASKS",
    "COCO_TASKS_SPLITS",
    "load_coco_tasks_json",
    "register_coco_tasks",
    "write_coco_tasks_layout",
]

logger = logging.getLogger(__name__)

COCO_TASKS: Dict[int, str] = {
    1: "step on something",
    2: "sit comfortably",
    3: "place flowers",
    4: "get potatoes out of fire",
    5: "water plant",
    6: "get lemon out of tea",
    7: "dig hole",
    8: "open bottle of beer",
    9: "open parcel",
    10: "serve wine",
    11: "pour sugar",
    12: "smear butter",
    13: "extinguish fire",
    14: "pound carpet",
}
"""The 14 COCO-Tasks task ids and names (Table 1 of the paper), used as text prompts."""

COCO_TASKS_SPLITS = ("train", "test")

_PAIR_ID_STRIDE = 10**7  # above every COCO image id (< 600,000)
_COCO_2014_FOLDERS = {"COCO_train2014_": "train2014", "COCO_val2014_": "val2014"}
# Generated layouts only: the COCO classes that stand in for the shapes (sports ball, tv,
# kite, frisbee).
_STAND_IN_COCO_IDS = {"circle": 37, "square": 72, "triangle": 38, "star": 34}


def _datasets_root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _image_path(image_root: str, file_name: str) -> str:
    """COCO 2014 names live in ``image_root/{train2014,val2014}/``; others in ``image_root``."""
    for prefix, folder in _COCO_2014_FOLDERS.items():
        if file_name.startswith(prefix):
            return os.path.join(image_root, folder, file_name)
    return os.path.join(image_root, file_name)


def load_coco_tasks_json(json_file: str, image_root: str, task_id: int) -> List[Dict[str, Any]]:
    """
    Load one COCO-Tasks file ``task_{task_id}_{split}.json`` as Detectron2 dataset dicts.

    Every image of the file gives one record (images without a preferred object give an
    empty ``annotations`` list); crowd objects, objects with an empty box and objects without
    a valid mask (polygons or RLE) are dropped.

    Raises:
        DatasetNotFoundError: the json file or an image folder it needs does not exist.
    """
    if not os.path.isfile(json_file):
        raise DatasetNotFoundError(
            f"COCO-Tasks annotation file {os.path.abspath(json_file)} does not exist; put the "
            "dataset's annotations/ folder (github.com/coco-tasks/dataset) in "
            "$DETECTRON2_DATASETS/coco-tasks"
        )
    with open(json_file) as f:
        data = json.load(f)
    by_image: Dict[int, List[Dict[str, Any]]] = {img["id"]: [] for img in data["images"]}
    num_dropped = 0
    for ann in data["annotations"]:
        if ann["category_id"] != 1 or ann.get("iscrowd", 0):
            continue
        segmentation = ann.get("segmentation") or []
        if isinstance(segmentation, list):  # polygons; RLE dicts are kept as they are
            segmentation = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if not segmentation or ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
            num_dropped += 1
            continue
        by_image[ann["image_id"]].append(
            {
                "bbox": list(ann["bbox"]),
                "bbox_mode": BoxMode.XYWH_ABS,
                "segmentation": segmentation,
                "category_id": 0,
                "iscrowd": 0,
                "coco_category_id": ann["COCO_category_id"],
                "coco_annotation_id": ann["id"],
            }
        )
    if num_dropped:
        logger.warning(f"{json_file}: dropped {num_dropped} preferred objects without a valid mask")

    records = []
    checked_folders = set()
    for img in data["images"]:
        file_name = _image_path(image_root, img["file_name"])
        folder = os.path.dirname(file_name)
        if folder not in checked_folders:
            if not os.path.isdir(folder):
                raise DatasetNotFoundError(
                    f"COCO-Tasks images: folder {os.path.abspath(folder)} does not exist; "
                    "put the COCO 2014 images in $DETECTRON2_DATASETS/coco/{train2014,val2014}"
                )
            checked_folders.add(folder)
        records.append(
            {
                "file_name": file_name,
                "height": img["height"],
                "width": img["width"],
                "image_id": task_id * _PAIR_ID_STRIDE + img["id"],
                "coco_image_id": img["id"],
                "task_id": task_id,
                "prompt": COCO_TASKS[task_id],
                "annotations": by_image[img["id"]],
            }
        )
    return records


def _load_tasks(
    annotation_root: str, image_root: str, split: str, task_ids: Sequence[int]
) -> List[Dict[str, Any]]:
    if not os.path.isdir(annotation_root):
        raise DatasetNotFoundError(
            f"COCO-Tasks folder {os.path.abspath(annotation_root)} does not exist; put the "
            "dataset's annotations/ folder (github.com/coco-tasks/dataset) in "
            "$DETECTRON2_DATASETS/coco-tasks"
        )
    records = []
    for t in task_ids:
        json_file = os.path.join(annotation_root, f"task_{t}_{split}.json")
        records.extend(load_coco_tasks_json(json_file, image_root, t))
    return records


def register_coco_tasks(datasets_root: Optional[str] = None, prefix: str = "coco_tasks") -> None:
    """
    Register ``{prefix}_{split}`` (all 14 tasks) and ``{prefix}_task{t}_{split}`` for split in
    ``COCO_TASKS_SPLITS``, reading ``<datasets_root>/coco-tasks/annotations`` and
    ``<datasets_root>/coco`` (default datasets_root: ``$DETECTRON2_DATASETS``, else
    ``datasets``). Nothing is read here; a missing folder raises
    :class:`DatasetNotFoundError` on ``DatasetCatalog.get``. Registered names are kept.
    """
    root = datasets_root or _datasets_root()
    annotation_root = os.path.join(root, "coco-tasks", "annotations")
    image_root = os.path.join(root, "coco")
    for split in COCO_TASKS_SPLITS:
        groups = {f"{prefix}_{split}": list(COCO_TASKS)}
        groups.update({f"{prefix}_task{t}_{split}": [t] for t in COCO_TASKS})
        for name, task_ids in groups.items():
            if name in DatasetCatalog:
                continue
            DatasetCatalog.register(
                name,
                lambda s=split, ids=task_ids: _load_tasks(annotation_root, image_root, s, ids),
            )
            MetadataCatalog.get(name).set(
                thing_classes=["object"],
                thing_dataset_id_to_contiguous_id={1: 0},
                image_root=image_root,
                task_prompts={t: COCO_TASKS[t] for t in task_ids},
            )


def write_coco_tasks_layout(
    datasets_root: str,
    splits: Sequence[str] = COCO_TASKS_SPLITS,
    task_ids: Sequence[int] = tuple(COCO_TASKS),
    num_images: int = 6,
    seed: int = 0,
    image_size: int = 128,
) -> str:
    """
    Write a small generated dataset in the exact COCO-Tasks format and layout under
    ``datasets_root`` (see the module docstring): synthetic shapes images as COCO 2014 JPEGs
    (train -> ``coco/train2014``, test -> ``coco/val2014``) and ``task_{t}_{split}.json``
    for each task, every file listing all images of its split and all their objects.
    Generated task t prefers the shape ``SHAPE_CLASSES[(t - 1) % 4]`` (``category_id`` 1);
    the other objects get 0. Objects carry stand-in COCO classes in ``COCO_category_id``.
    Masks are the generator's: polygons, or RLE for circles and occluded shapes (so train
    on it with ``INPUT.MASK_FORMAT="bitmask"``).

    Returns:
        the ``coco-tasks`` folder.
    """
    tasks_root = os.path.join(datasets_root, "coco-tasks")
    os.makedirs(os.path.join(tasks_root, "annotations"), exist_ok=True)
    for split in splits:
        folder = "train2014" if split == "train" else "val2014"
        with tempfile.TemporaryDirectory() as tmp:
            shapes_json = generate_synthetic_shapes(
                os.path.join(tmp, "shapes.json"),
                os.path.join(datasets_root, "coco", folder),
                num_images,
                seed if split == "train" else seed + 1,
                image_size,
                file_name_format=f"COCO_{folder}_{{:012d}}.jpg",
            )
            with open(shapes_json) as f:
                shapes = json.load(f)
        for t in task_ids:
            preferred = SHAPE_CLASSES[(t - 1) % len(SHAPE_CLASSES)]
            annotations = [
                {
                    "segmentation": ann["segmentation"],
                    "area": ann["area"],
                    "iscrowd": ann["iscrowd"],
                    "image_id": ann["image_id"],
                    "bbox": ann["bbox"],
                    "COCO_category_id": _STAND_IN_COCO_IDS[ann["shape"]],
                    "category_id": int(ann["shape"] == preferred),
                    "id": ann["id"],
                }
                for ann in shapes["annotations"]
            ]
            task_json = {
                "images": shapes["images"],
                "annotations": annotations,
                "categories": [{"id": 0, "name": "not preferred"}, {"id": 1, "name": "preferred"}],
            }
            with open(os.path.join(tasks_root, "annotations", f"task_{t}_{split}.json"), "w") as f:
                json.dump(task_json, f)
    return tasks_root
