"""(image, task) pairs from objects with attributes: what the generated task datasets share.

A task is a text prompt, held-out paraphrases of it and a rule. A rule maps one image's
objects and the image width (px) to relevance flags; it reads an object's geometry only
through its "bbox" ([x, y, w, h] px, ``BoxMode.XYWH_ABS``, in the image as it is seen) and
"area" (visible pixels), besides attributes such as "shape". So relevance can be computed
again on an augmented image's geometry (:func:`objects_after`), which is what the training
mapper does (:class:`.task_mapper.TaskDatasetMapper`).

A pair record (Detectron2 dataset dict) has file_name, height, width, image_id
(``100 * source image id + task id``), source_image_id, task_set (the :class:`TaskSet`'s
name), task_id, prompt, paraphrases, guidance (:func:`task_guidance_vector`), annotations
(the relevant objects, as the image was generated) and objects (every object of the image).
Objects and annotations are Detectron2 annotations of the single class "object"
(``category_id`` 0) that keep their generated attributes. The COCO dict of the pairs holds the
annotations (category id 1 = "object"), one image entry per pair, for Detectron2's
COCOEvaluator.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.transforms import TransformList
from detectron2.structures import BoxMode

from ..fileio import atomic_write_text

__all__ = [
    "GUIDANCE_VECTOR_DIM",
    "Rule",
    "Task",
    "TaskSet",
    "each_object_rule",
    "ranked_rule",
    "objects_after",
    "register_task_pairs",
    "task_guidance_vector",
    "task_pair_records",
    "task_pairs_from_file",
]

Rule = Callable[[List[Dict[str, Any]], int], List[bool]]
"""(objects of one image, image width in px) -> one relevance flag per object."""

Posed = Callable[["Task", List[Dict[str, Any]], int], bool]
"""(task, objects of one image, image width) -> whether the pair is made."""


class Task(NamedTuple):
    prompt: str
    rule: Rule
    paraphrases: Tuple[str, ...] = ()  # held out from training: for evaluation only


class TaskSet(NamedTuple):
    name: str  # the records' "task_set": how a mapper finds the rules again
    tasks: Tuple[Task, ...]  # task id = index


def each_object_rule(test: Callable[[Dict[str, Any], int], bool]) -> Rule:
    """A rule that judges every object on its own: ``test(object, image_width)``."""
    return lambda objects, width: [test(o, width) for o in objects]


def ranked_rule(test: Callable[[Dict[str, Any]], bool], key: Callable[[Dict[str, Any]], float],
                k: int, largest: bool) -> Rule:
    """The ``k`` objects passing ``test`` with the largest (or smallest) ``key``; none when
    fewer than ``k`` pass. Ties: the object drawn first."""

    def rule(objects: List[Dict[str, Any]], width: int) -> List[bool]:
        candidates = [i for i, o in enumerate(objects) if test(o)]
        sign = -1.0 if largest else 1.0
        chosen = set(sorted(candidates, key=lambda i: sign * key(objects[i]))[:k])
        return [i in chosen and len(candidates) >= k for i in range(len(objects))]

    return rule


GUIDANCE_VECTOR_DIM = 384
_PAIR_ID_STRIDE = 100  # > number of tasks of a set
_COCO_FIELDS = ("id", "image_id", "category_id", "bbox", "segmentation", "iscrowd")


def task_guidance_vector(task_id: int, dim: int = GUIDANCE_VECTOR_DIM) -> np.ndarray:
    """A fixed unit vector per task, (dim,) float32: the stand-in for an external model's
    embedding of the task (e.g. a multimodal LLM's SEG token), carried as ``"guidance"``."""
    v = np.random.default_rng(1000 + task_id).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def objects_after(transforms: TransformList, objects: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The objects as the transformed image shows them: shallow copies whose "bbox" is the
    transformed box ([x, y, w, h] px, XYWH_ABS). "area" stays the generated visible area: the
    flips and resizes of the configs keep the order of areas, which is all a rule compares."""
    if not objects:
        return []
    boxes = np.array([BoxMode.convert(o["bbox"], o["bbox_mode"], BoxMode.XYXY_ABS)
                      for o in objects], dtype=np.float64)
    moved = transforms.apply_box(boxes)
    return [{**o, "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
             "bbox_mode": BoxMode.XYWH_ABS} for o, (x0, y0, x1, y1) in zip(objects, moved)]


def _object(ann: Dict[str, Any]) -> Dict[str, Any]:
    """A source COCO annotation -> a Detectron2 annotation of class 0 with its attributes."""
    attributes = {k: v for k, v in ann.items() if k not in _COCO_FIELDS}
    return {"bbox": list(ann["bbox"]), "bbox_mode": BoxMode.XYWH_ABS,
            "segmentation": ann["segmentation"], "category_id": 0, "iscrowd": 0, **attributes}


def _coco_annotation(obj: Dict[str, Any], ann_id: int, pair_id: int) -> Dict[str, Any]:
    """A relevant object -> the pairs' COCO annotation (category 1 = "object")."""
    attributes = {k: v for k, v in obj.items() if k not in _COCO_FIELDS + ("bbox_mode",)}
    return {"id": ann_id, "image_id": pair_id, "category_id": 1,
            "segmentation": obj["segmentation"], "bbox": obj["bbox"], "iscrowd": 0,
            **attributes}


def task_pair_records(
    source: Dict[str, Any], image_root: str, task_set: TaskSet, posed: Optional[Posed] = None
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """
    Expand a generated COCO dict (as loaded from its json; annotations with attributes) into
    (image, task) pairs: every task on every image, or those for which ``posed`` is true.

    Returns:
        (records, coco): the pair records, ordered by image then task; and the COCO dict of
        their ground truth (the relevant objects of each pair as generated).
    """
    objects_of: Dict[int, List[Dict[str, Any]]] = {img["id"]: [] for img in source["images"]}
    for ann in source["annotations"]:
        objects_of[ann["image_id"]].append(_object(ann))
    guidance = [task_guidance_vector(i).tolist() for i in range(len(task_set.tasks))]
    records, coco_images, coco_anns = [], [], []
    for img in source["images"]:
        objects, width = objects_of[img["id"]], img["width"]
        for task_id, task in enumerate(task_set.tasks):
            if posed is not None and not posed(task, objects, width):
                continue
            pair_id = _PAIR_ID_STRIDE * img["id"] + task_id
            relevant = [o for o, r in zip(objects, task.rule(objects, width)) if r]
            pair = {"height": img["height"], "width": width, "task_id": task_id,
                    "prompt": task.prompt, "paraphrases": list(task.paraphrases)}
            records.append({
                "file_name": os.path.join(image_root, img["file_name"]), "image_id": pair_id,
                "source_image_id": img["id"], "task_set": task_set.name, **pair,
                "guidance": guidance[task_id],  # one list per task, shared by its pairs
                "annotations": relevant, "objects": objects,
            })
            coco_images.append({"id": pair_id, "file_name": img["file_name"], **pair})
            first_id = len(coco_anns) + 1
            coco_anns.extend(_coco_annotation(o, first_id + i, pair_id)
                             for i, o in enumerate(relevant))
    coco = {
        "info": {"description": f"TokenPrune task pairs: {task_set.name}",
                 "tasks": [t.prompt for t in task_set.tasks]},
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


def task_pairs_from_file(
    name: str, source_json: str, task_set: TaskSet, posed: Optional[Posed] = None
) -> List[Dict[str, Any]]:
    """The pair records of the registered ``name`` from its generated ``source_json`` (images
    under its ``image_root``); writes their COCO json to its ``json_file`` when it changed."""
    meta = MetadataCatalog.get(name)
    with open(source_json) as f:
        records, coco = task_pair_records(json.load(f), meta.image_root, task_set, posed)
    _write_if_changed(coco, meta.json_file)
    return records


def register_task_pairs(
    name: str, load: Callable[[str], List[Dict[str, Any]]], json_file: str, image_root: str,
    tasks: Sequence[Task], **metadata: Any,
) -> None:
    """Register the task dataset ``name`` lazily (``load(name)`` on first use) with the pairs'
    ``json_file``, its ``image_root``, one class "object" (json id 1), ``task_prompts`` and
    ``task_paraphrases`` (task id -> ...) and ``metadata``. A name already registered is
    left as it is."""
    if name in DatasetCatalog:
        return
    DatasetCatalog.register(name, lambda: load(name))
    MetadataCatalog.get(name).set(
        thing_classes=["object"], thing_dataset_id_to_contiguous_id={1: 0},
        json_file=json_file, image_root=image_root, generated_on_load=True,
        task_prompts={i: t.prompt for i, t in enumerate(tasks)},
        task_paraphrases={i: list(t.paraphrases) for i, t in enumerate(tasks)}, **metadata)
