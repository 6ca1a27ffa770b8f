"""A synthetic task-oriented segmentation dataset on the synthetic shapes images.

Each record is one (image, task) pair: the image, a task from :data:`SYNTHETIC_TASKS` with its
text prompt, and as ``annotations`` only the objects relevant to that task, all of the single
class "object" (``category_id`` 0), so a detector trained on it predicts the relevant objects.
Relevance follows from each object's generated attributes ("shape", "color", visible "area",
box), which the annotations keep. Pairs with no relevant object are kept (empty target).

Pair ids: ``image_id = 100 * shapes_image_id + task_id`` (``source_image_id`` keeps the
shapes image id). A COCO json of the pairs' ground truth (category id 1 = "object") is
written next to the data and set as ``metadata.json_file``, so Detectron2's COCOEvaluator
scores box / mask AP of the relevant objects.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..fileio import atomic_write_text
from .synthetic import SYNTHETIC_SPLITS, default_data_root, generate_synthetic_shapes

__all__ = [
    "SYNTHETIC_TASKS",
    "SYNTHETIC_TASK_SPLITS",
    "relevant_objects",
    "task_guidance_vector",
    "GUIDANCE_VECTOR_DIM",
    "synthetic_task_records",
    "register_synthetic_tasks",
]

_Rule = Callable[[List[Dict[str, Any]], int], List[bool]]


def _each(test: Callable[[Dict[str, Any], int], bool]) -> _Rule:
    """A rule that judges every object on its own: test(annotation, image_width)."""
    return lambda anns, width: [test(a, width) for a in anns]


def _extreme_area(pick: Callable[..., Any]) -> _Rule:
    """A rule that marks the one object of largest (pick=max) or smallest (min) visible area."""

    def rule(anns: List[Dict[str, Any]], width: int) -> List[bool]:
        if not anns:
            return []
        best = pick(range(len(anns)), key=lambda i: anns[i]["area"])  # ties: first object
        return [i == best for i in range(len(anns))]

    return rule


SYNTHETIC_TASKS: Tuple[Tuple[str, _Rule], ...] = (
    ("the red shapes", _each(lambda a, w: a["color"] == "red")),
    ("shapes with corners", _each(lambda a, w: a["shape"] != "circle")),
    ("the largest object", _extreme_area(max)),
    ("the smallest object", _extreme_area(min)),
    ("the yellow star", _each(lambda a, w: a["shape"] == "star" and a["color"] == "yellow")),
    ("something with three corners", _each(lambda a, w: a["shape"] == "triangle")),
    ("the shapes in the left half", _each(lambda a, w: a["bbox"][0] + a["bbox"][2] / 2 < w / 2)),
    ("the green or blue shapes", _each(lambda a, w: a["color"] in ("green", "blue"))),
)
"""(prompt, rule) per task id 0..7. A rule maps an image's shapes annotations (with "shape",
"color", "area" = visible pixels, "bbox" [x, y, w, h]) and the image width to relevance
flags. "largest" / "smallest" compare visible areas and pick one object (the first on ties);
"left half" means the box centre lies left of the image's vertical midline."""

SYNTHETIC_TASK_SPLITS: Dict[str, str] = {
    "train": "synthetic_shapes_train",
    "val": "synthetic_shapes_val",
    "minival": "synthetic_shapes_minival",  # quick evaluations in tests
}
"""Split of the registered ``synthetic_tasks_{split}`` -> the shapes dataset whose images
(same files, number and seed) it uses."""

_PAIR_ID_STRIDE = 100  # > number of tasks


GUIDANCE_VECTOR_DIM = 384


def task_guidance_vector(task_id: int, dim: int = GUIDANCE_VECTOR_DIM) -> np.ndarray:
    """A fixed unit vector per task, (dim,) float32: the stand-in for an external model's
    embedding of the task (e.g. a multimodal LLM's SEG token), carried as ``"guidance"``."""
    v = np.random.default_rng(1000 + task_id).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def relevant_objects(task_id: int, annotations: List[Dict[str, Any]], width: int) -> List[bool]:
    """Relevance of each shapes annotation of an image of ``width`` pixels for ``task_id``."""
    return SYNTHETIC_TASKS[task_id][1](annotations, width)


def synthetic_task_records(
    shapes: Dict[str, Any], image_root: str
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """
    Expand a synthetic shapes COCO dict (as loaded from its json) into (image, task) pairs.

    Returns:
        (records, coco): Detectron2 dataset dicts, one per pair, ordered by image then task;
        and the COCO dict of the same ground truth (one image entry per pair).
    """
    anns_of: Dict[int, List[Dict[str, Any]]] = {img["id"]: [] for img in shapes["images"]}
    for ann in shapes["annotations"]:
        anns_of[ann["image_id"]].append(ann)
    records, coco_images, coco_anns = [], [], []
    for img in shapes["images"]:
        anns = anns_of[img["id"]]
        for task_id, (prompt, _) in enumerate(SYNTHETIC_TASKS):
            pair_id = _PAIR_ID_STRIDE * img["id"] + task_id
            relevant = [a for a, r in zip(anns, relevant_objects(task_id, anns, img["width"])) if r]
            records.append(
                {
                    "file_name": os.path.join(image_root, img["file_name"]),
                    "height": img["height"],
                    "width": img["width"],
                    "image_id": pair_id,
                    "source_image_id": img["id"],
                    "task_id": task_id,
                    "prompt": prompt,
                    "guidance": task_guidance_vector(task_id).tolist(),
                    "annotations": [
                        {
                            "bbox": list(a["bbox"]),
                            "bbox_mode": BoxMode.XYWH_ABS,
                            "segmentation": a["segmentation"],
                            "category_id": 0,
                            "iscrowd": 0,
                            "shape": a["shape"],
                            "color": a["color"],
                            "area": a["area"],
                        }
                        for a in relevant
                    ],
                }
            )
            coco_images.append(
                {
                    "id": pair_id,
                    "file_name": img["file_name"],
                    "height": img["height"],
                    "width": img["width"],
                    "task_id": task_id,
                    "prompt": prompt,
                }
            )
            for a in relevant:
                coco_anns.append(
                    {
                        "id": len(coco_anns) + 1,
                        "image_id": pair_id,
                        "category_id": 1,
                        "segmentation": a["segmentation"],
                        "area": a["area"],
                        "bbox": a["bbox"],
                        "iscrowd": 0,
                        "shape": a["shape"],
                        "color": a["color"],
                    }
                )
    coco = {
        "info": {
            "description": "TokenPrune synthetic tasks",
            "tasks": [prompt for prompt, _ in SYNTHETIC_TASKS],
        },
        "images": coco_images,
        "annotations": coco_anns,
        "categories": [{"id": 1, "name": "object"}],
    }
    return records, coco


def _write_if_changed(obj: Any, path: str) -> None:
    """Atomically write ``obj`` as json unless ``path`` already holds exactly that text."""
    text = json.dumps(obj, separators=(",", ":"))
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, text)


def _load_synthetic_tasks(name: str) -> List[Dict[str, Any]]:
    """DatasetCatalog function: generate the images and the pairs' json on first use."""
    meta = MetadataCatalog.get(name)
    generate_synthetic_shapes(meta.shapes_json_file, meta.image_root, **meta.shapes_params)
    with open(meta.shapes_json_file) as f:
        records, coco = synthetic_task_records(json.load(f), meta.image_root)
    _write_if_changed(coco, meta.json_file)
    return records


def register_synthetic_tasks(root: Optional[str] = None, prefix: str = "synthetic_tasks") -> None:
    """
    Register ``{prefix}_train`` and ``{prefix}_val`` on the shapes images under
    ``<root>/synthetic_shapes`` (the files of ``synthetic_shapes_{train,val}``; default root:
    :func:`default_data_root`); their ground-truth json goes to
    ``<root>/synthetic_tasks/{split}.json``. Nothing is generated until the first
    ``DatasetCatalog.get``. Names that are already registered are left as they are.
    """
    root = root or default_data_root()
    shapes_base = os.path.join(root, "synthetic_shapes")
    for split, shapes_name in SYNTHETIC_TASK_SPLITS.items():
        name = f"{prefix}_{split}"
        if name in DatasetCatalog:
            continue
        folder, num_images, seed = SYNTHETIC_SPLITS[shapes_name]
        DatasetCatalog.register(name, lambda name=name: _load_synthetic_tasks(name))
        MetadataCatalog.get(name).set(
            thing_classes=["object"],
            thing_dataset_id_to_contiguous_id={1: 0},
            json_file=os.path.join(root, "synthetic_tasks", f"{folder}.json"),
            shapes_json_file=os.path.join(shapes_base, "annotations", f"{folder}.json"),
            image_root=os.path.join(shapes_base, folder),
            generated_on_load=True,
            shapes_params={"num_images": num_images, "seed": seed, "image_size": 256},
            task_prompts={i: prompt for i, (prompt, _) in enumerate(SYNTHETIC_TASKS)},
        )
