"""The mapper of the generated task datasets: relevance after the augmentation, and the
held-out prompts at evaluation.

A pair record (:mod:`.tasks`) holds its relevant objects as the image was generated, and
every object of the image. A task that reads positions ("the shapes in the left half", "the
leftmost triangle") has other targets on a flipped image, so at training this mapper moves
every object's box with the image's transforms, applies the task's rule to the moved objects
and hands the relevant ones to Detectron2's DatasetMapper as the annotations. Without a
geometric change, or for a task that ignores positions, they are the record's annotations.
Evaluation needs none of this: it sees the images as generated, whose targets the records and
the pairs' COCO json hold. Records without "objects" (COCO-Tasks) are mapped as DatasetMapper
maps them.

``held_out_prompts=True`` (for the test loader) gives each input its task's first held-out
paraphrase (the record's ``paraphrases[0]``) as its ``prompt``: the ``text`` guidance is then
evaluated on wording it never trained on. Task ids and targets are unchanged.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from detectron2.data import DatasetMapper
from detectron2.data.transforms import TransformList

from ..errors import InputError
from .synthetic_task_scenes import TASK_SCENE_SET
from .synthetic_tasks import SYNTHETIC_TASK_SET
from .tasks import TaskSet, objects_after

__all__ = ["TASK_SETS", "TaskDatasetMapper"]

TASK_SETS: Dict[str, TaskSet] = {s.name: s for s in (SYNTHETIC_TASK_SET, TASK_SCENE_SET)}
"""A record's "task_set" -> its tasks."""


def _held_out_prompt(record: Dict[str, Any]) -> str:
    """The record's first held-out paraphrase; an :class:`InputError` if it has none."""
    paraphrases = record.get("paraphrases")
    if not paraphrases:
        raise InputError(f"held_out_prompts: the pair {record.get('image_id')} (task "
                         f"{record.get('task_id')}) has no held-out paraphrase")
    return paraphrases[0]


class TaskDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper (same arguments) whose training targets are the task's
    relevant objects on the augmented image: the rule of the record's task
    (``TASK_SETS[record["task_set"]]``) applied to every object's transformed box.

    Args:
        held_out_prompts: feed each record's ``paraphrases[0]`` as its ``prompt`` (meant
            for the test loader; records without paraphrases are refused).
        *args, **kwargs: DatasetMapper's.
    """

    def __init__(self, *args: Any, held_out_prompts: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held_out_prompts = held_out_prompts

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        if self.held_out_prompts:
            dataset_dict = {**dataset_dict, "prompt": _held_out_prompt(dataset_dict)}
        return super().__call__(dataset_dict)

    def _transform_annotations(
        self, dataset_dict: Dict[str, Any], transforms: TransformList, image_shape: Tuple[int, int]
    ) -> None:
        objects = dataset_dict.pop("objects", None)
        if objects is not None:
            task = TASK_SETS[dataset_dict["task_set"]].tasks[dataset_dict["task_id"]]
            relevant = task.rule(objects_after(transforms, objects), image_shape[1])
            dataset_dict["annotations"] = [o for o, r in zip(objects, relevant) if r]
        super()._transform_annotations(dataset_dict, transforms, image_shape)
