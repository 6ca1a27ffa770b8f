"""Task scenes: task-oriented segmentation where each task picks 1-3 objects among many.

VLTP's claim is that guidance lets a pruner keep the tokens of what the task needs. On the
shapes tasks (:mod:`.synthetic_tasks`) keeping every object token keeps every task's
relevant tokens, so guidance cannot help. These scenes make the task matter; each property
is there for one reason:

* Clutter: the study's generator (:mod:`.synthetic_study`, its :class:`SceneLayout` here with
  stars added): textured background, unannotated textured distractors, camouflaged objects,
  colour drawn independently of everything, sizes log-uniform from 14 px to 0.7 x the image.
  So neither colour nor saliency tells which objects a task needs.
* 10-25 objects per image (an image whose placement kept fewer than 10 is drawn again), so
  the objects cover much of the image and "keep every object" is not a cheap way to keep the
  relevant ones: the unguided gates' best guess costs tokens.
* Tasks (:data:`SCENE_TASKS`) are conjunctions of shape and texture, extremes ("the largest
  square", "the two smallest stars") and relations ("the circle just left of the largest
  square", "the dotted object nearest the largest circle"): exact functions of the objects'
  attributes and boxes, answered by 1-3 objects, different objects for different tasks on
  the same image.
* A task is posed on an image only when it has 1-3 relevant objects both on the image as
  generated and on its mirror image (the training flip): the targets stay 1-3 objects after
  the augmentation, and no pair has nothing relevant. Chosen over planting the required
  objects, which would make the planted ones differ (in size, order or place) from the rest.
* Every task has a prompt (for the ``text`` guidance) and held-out paraphrases (records'
  "paraphrases", metadata ``task_paraphrases``) to evaluate prompts never trained on.

Relevance reads box centres ("left of" = the centre left of the anchor's centre) and visible
areas; ties go to the object drawn first. Training recomputes it after the flip
(:class:`.task_mapper.TaskDatasetMapper`). The scenes' stamp (:func:`generate_study_scenes`)
records every scene constant and the layout; the pairs' json is rebuilt from the scenes on
each load, so it follows the task rules.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from detectron2.data import MetadataCatalog
from detectron2.data.transforms import HFlipTransform, TransformList

from .synthetic import default_data_root
from .synthetic_study import SceneLayout, generate_study_scenes
from .tasks import (Rule, Task, TaskSet, each_object_rule, objects_after, ranked_rule,
                    register_task_pairs, task_pairs_from_file)

__all__ = ["SCENE_TASKS", "TASK_SCENE_LAYOUT", "TASK_SCENE_SET", "TASK_SCENE_SPLITS",
           "register_synthetic_task_scenes"]

TASK_SCENE_LAYOUT = SceneLayout(("circle", "square", "triangle", "star"), (("task", 10, 25),),
                                10, "TokenPrune synthetic task scenes")
_MAX_RELEVANT = 3

TASK_SCENE_SPLITS: Dict[str, Tuple[int, int]] = {
    # the reported run
    "train": (800, 60),
    "val": (300, 61),
    "minival": (8, 62),  # quick evaluations in tests
    # the pilot that fixes the recipe: its own data seed and its own validation scenes
    "pilot_train": (800, 70),
    "pilot_val": (300, 71),
    # the VLTP study's evaluation images (about 9 pairs each): a study evaluates some 90 rows
    "study_val": (64, 63),
    "pilot_study_val": (64, 73),
}
"""Split of the registered ``synthetic_task_scenes_{split}`` -> (number of scenes, seed)."""

_Test = Callable[[Dict[str, Any]], bool]
_Relation = Callable[[Dict[str, Any], Dict[str, Any]], bool]  # (object, anchor) -> bool


def _is(shape: Optional[str] = None, texture: Optional[str] = None) -> _Test:
    """A test of an object's shape and / or texture."""
    return lambda o: shape in (None, o["shape"]) and texture in (None, o["texture"])


def _cx(o: Dict[str, Any]) -> float:
    return o["bbox"][0] + o["bbox"][2] / 2


def _cy(o: Dict[str, Any]) -> float:
    return o["bbox"][1] + o["bbox"][3] / 2


def _anchor(rule: Rule, objects: List[Dict[str, Any]], width: int) -> Optional[int]:
    """The index of the one object a single-object rule picks, or None."""
    return next((i for i, r in enumerate(rule(objects, width)) if r), None)


def _relative(test: _Test, anchor: Rule, relation: _Relation) -> Rule:
    """The objects passing ``test`` that stand in ``relation(object, anchor)`` to the
    object ``anchor`` picks; none without an anchor."""

    def rule(objects: List[Dict[str, Any]], width: int) -> List[bool]:
        a = _anchor(anchor, objects, width)
        return [a is not None and i != a and test(o) and relation(o, objects[a])
                for i, o in enumerate(objects)]

    return rule


def _nearest(test: _Test, anchor: Rule, relation: _Relation = lambda o, a: True) -> Rule:
    """The one object passing ``test`` and in ``relation(object, anchor)`` to the object
    ``anchor`` picks whose box centre is nearest the anchor's (not the anchor itself)."""

    def rule(objects: List[Dict[str, Any]], width: int) -> List[bool]:
        a = _anchor(anchor, objects, width)
        if a is None:
            return [False] * len(objects)
        candidates = [i for i, o in enumerate(objects)
                      if i != a and test(o) and relation(o, objects[a])]
        if not candidates:
            return [False] * len(objects)
        ax, ay = _cx(objects[a]), _cy(objects[a])
        best = min(candidates, key=lambda i: (_cx(objects[i]) - ax) ** 2
                   + (_cy(objects[i]) - ay) ** 2)
        return [i == best for i in range(len(objects))]

    return rule


def _all(test: _Test) -> Rule:
    return each_object_rule(lambda o, width: test(o))


def _area(o: Dict[str, Any]) -> float:
    return o["area"]


_LARGEST_SQUARE = ranked_rule(_is("square"), _area, 1, largest=True)
_LARGEST_CIRCLE = ranked_rule(_is("circle"), _area, 1, largest=True)

SCENE_TASKS: Tuple[Task, ...] = (
    Task("the striped triangles", _all(_is("triangle", "striped")),
         ("every triangle with stripes",)),
    Task("the dotted circles", _all(_is("circle", "dotted")), ("all circles covered in dots",)),
    Task("the largest square", _LARGEST_SQUARE, ("the biggest square",)),
    Task("the two smallest stars", ranked_rule(_is("star"), _area, 2, largest=False),
         ("the pair of tiniest stars",)),
    Task("the leftmost triangle", ranked_rule(_is("triangle"), _cx, 1, largest=False),
         ("the triangle furthest to the left",)),
    Task("the two rightmost stars", ranked_rule(_is("star"), _cx, 2, largest=True),
         ("the pair of stars furthest to the right",)),
    Task("the circle just left of the largest square",
         _nearest(_is("circle"), _LARGEST_SQUARE, lambda o, a: _cx(o) < _cx(a)),
         ("the nearest circle on the left of the biggest square",)),
    Task("the triangles above the largest circle",
         _relative(_is("triangle"), _LARGEST_CIRCLE, lambda o, a: _cy(o) < _cy(a)),
         ("each triangle higher up than the biggest circle",)),
    Task("the dotted object nearest the largest circle",
         _nearest(_is(texture="dotted"), _LARGEST_CIRCLE),
         ("the dotted shape closest to the biggest circle",)),
    Task("the largest dotted object", ranked_rule(_is(texture="dotted"), _area, 1, largest=True),
         ("the biggest shape with dots",)),
    Task("the smallest striped object", ranked_rule(_is(texture="striped"), _area, 1, largest=False),
         ("the tiniest shape with stripes",)),
)
"""Task ids 0..10: (prompt, rule, paraphrases). "left of" / "above": the object's box centre
lies left of (above) the anchor's box centre; "just left of": of those, the nearest; "largest" /
"smallest": visible area; "leftmost" / "rightmost": box centre; "nearest": distance of box
centres."""

TASK_SCENE_SET = TaskSet("synthetic_task_scenes", SCENE_TASKS)


def posed(task: Task, objects: List[Dict[str, Any]], width: int) -> bool:
    """Whether ``task`` is asked of an image: 1-3 relevant objects both as generated and
    mirrored (the training flip, ``width`` px)."""
    mirrored = objects_after(TransformList([HFlipTransform(width)]), objects)
    return all(1 <= sum(task.rule(view, width)) <= _MAX_RELEVANT for view in (objects, mirrored))


def _load_task_scenes(name: str) -> List[Dict[str, Any]]:
    """DatasetCatalog function: generate the scenes and the pairs' json on first use."""
    meta = MetadataCatalog.get(name)
    generate_study_scenes(meta.scenes_json_file, meta.image_root, **meta.scene_params,
                          layout=TASK_SCENE_LAYOUT)
    return task_pairs_from_file(name, meta.scenes_json_file, TASK_SCENE_SET, posed)


def register_synthetic_task_scenes(
    root: Optional[str] = None, prefix: str = "synthetic_task_scenes"
) -> None:
    """
    Register ``{prefix}_{split}`` for the splits of :data:`TASK_SCENE_SPLITS` under
    ``<root>/synthetic_task_scenes`` (default root: :func:`default_data_root`): scenes in
    ``<split>/`` and
    ``annotations/<split>.json``, the pairs' COCO json in ``pairs/<split>.json``. Nothing is
    generated until the first ``DatasetCatalog.get``. Names already registered are left as
    they are. Metadata as :func:`.tasks.register_task_pairs`, plus ``scenes_json_file`` and
    ``scene_params`` (the generator's arguments).
    """
    base = os.path.join(root or default_data_root(), "synthetic_task_scenes")
    for split, (num_images, seed) in TASK_SCENE_SPLITS.items():
        register_task_pairs(
            f"{prefix}_{split}", _load_task_scenes, os.path.join(base, "pairs", f"{split}.json"),
            os.path.join(base, split), SCENE_TASKS,
            scenes_json_file=os.path.join(base, "annotations", f"{split}.json"),
            scene_params={"num_images": num_images, "seed": seed, "image_size": 256})
