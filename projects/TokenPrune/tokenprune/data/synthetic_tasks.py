"""A synthetic task-oriented segmentation dataset on the synthetic shapes images.

Each record is one (image, task) pair (:mod:`.tasks`): the image, a task from
:data:`SYNTHETIC_TASKS` with its text prompt, as ``annotations`` only the objects relevant to
that task and as ``objects`` every object of the image, all of the single class "object"
(``category_id`` 0), so a detector trained on it predicts the relevant objects. Relevance
follows from each object's generated attributes ("shape", "color", visible "area", box),
which the annotations keep. Pairs with no relevant object are kept (empty target).

Pair ids: ``image_id = 100 * shapes_image_id + task_id`` (``source_image_id`` keeps the
shapes image id). A COCO json of the pairs' ground truth (category id 1 = "object") is
written next to the data and set as ``metadata.json_file``, so Detectron2's COCOEvaluator
scores box / mask AP of the relevant objects. Training recomputes relevance after the flip
(:class:`.task_mapper.TaskDatasetMapper`): "the shapes in the left half" of a mirrored image
are the ones its pixels show on the left.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from detectron2.data import MetadataCatalog

from .synthetic import SYNTHETIC_SPLITS, default_data_root, generate_synthetic_shapes
from .tasks import (Rule, Task, TaskSet, each_object_rule, ranked_rule, register_task_pairs,
                    task_pair_records, task_pairs_from_file)

__all__ = [
    "SYNTHETIC_TASKS",
    "SYNTHETIC_TASK_SET",
    "SYNTHETIC_TASK_SPLITS",
    "relevant_objects",
    "synthetic_task_records",
    "register_synthetic_tasks",
]


def _extreme_area(largest: bool) -> Rule:
    """A rule that marks the one object of largest (or smallest) visible area (ties: the
    first object)."""
    return ranked_rule(lambda a: True, lambda a: a["area"], 1, largest)


SYNTHETIC_TASKS: Tuple[Task, ...] = (
    Task("the red shapes", each_object_rule(lambda a, w: a["color"] == "red")),
    Task("shapes with corners", each_object_rule(lambda a, w: a["shape"] != "circle")),
    Task("the largest object", _extreme_area(True)),
    Task("the smallest object", _extreme_area(False)),
    Task("the yellow star", each_object_rule(lambda a, w: a["shape"] == "star" and a["color"] == "yellow")),
    Task("something with three corners", each_object_rule(lambda a, w: a["shape"] == "triangle")),
    Task("the shapes in the left half",
         each_object_rule(lambda a, w: a["bbox"][0] + a["bbox"][2] / 2 < w / 2)),
    Task("the green or blue shapes", each_object_rule(lambda a, w: a["color"] in ("green", "blue"))),
)
"""Task ids 0..7. A rule maps an image's shapes annotations (with "shape", "color", "area" =
visible pixels, "bbox" [x, y, w, h]) and the image width to relevance flags. "largest" /
"smallest" compare visible areas and pick one object (the first on ties); "left half" means
the box centre lies left of the image's vertical midline."""

SYNTHETIC_TASK_SET = TaskSet("synthetic_tasks", SYNTHETIC_TASKS)

SYNTHETIC_TASK_SPLITS: Dict[str, str] = {
    "train": "synthetic_shapes_train",
    "val": "synthetic_shapes_val",
    "minival": "synthetic_shapes_minival",  # quick evaluations in tests
}
"""Split of the registered ``synthetic_tasks_{split}`` -> the shapes dataset whose images
(same files, number and seed) it uses."""


def relevant_objects(task_id: int, annotations: List[Dict[str, Any]], width: int) -> List[bool]:
    """Relevance of each shapes annotation of an image of ``width`` pixels for ``task_id``."""
    return SYNTHETIC_TASKS[task_id].rule(annotations, width)


def synthetic_task_records(
    shapes: Dict[str, Any], image_root: str
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """
    Expand a synthetic shapes COCO dict (as loaded from its json) into (image, task) pairs.

    Returns:
        (records, coco): Detectron2 dataset dicts, one per pair, ordered by image then task;
        and the COCO dict of the same ground truth (one image entry per pair).
    """
    return task_pair_records(shapes, image_root, SYNTHETIC_TASK_SET)


def _load_synthetic_tasks(name: str) -> List[Dict[str, Any]]:
    """DatasetCatalog function: generate the images and the pairs' json on first use."""
    meta = MetadataCatalog.get(name)
    generate_synthetic_shapes(meta.shapes_json_file, meta.image_root, **meta.shapes_params)
    return task_pairs_from_file(name, meta.shapes_json_file, SYNTHETIC_TASK_SET)


def register_synthetic_tasks(root: Optional[str] = None, prefix: str = "synthetic_tasks") -> None:
    """
    Register ``{prefix}_{train,val,minival}`` on the shapes images under
    ``<root>/synthetic_shapes`` (the files of ``synthetic_shapes_{split}``; default root:
    :func:`default_data_root`); their ground-truth json goes to
    ``<root>/synthetic_tasks/{split}.json``. Nothing is generated until the first
    ``DatasetCatalog.get``. Names that are already registered are left as they are.
    """
    root = root or default_data_root()
    shapes_base = os.path.join(root, "synthetic_shapes")
    for split, shapes_name in SYNTHETIC_TASK_SPLITS.items():
        folder, num_images, seed = SYNTHETIC_SPLITS[shapes_name]
        register_task_pairs(
            f"{prefix}_{split}", _load_synthetic_tasks,
            os.path.join(root, "synthetic_tasks", f"{folder}.json"),
            os.path.join(shapes_base, folder), SYNTHETIC_TASKS,
            shapes_json_file=os.path.join(shapes_base, "annotations", f"{folder}.json"),
            shapes_params={"num_images": num_images, "seed": seed, "image_size": 256})
