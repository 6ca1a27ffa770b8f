"""Data loaders and evaluators for the synthetic task-oriented dataset (image, task) pairs.

Each record carries ``task_id`` and ``prompt``; its instances are the task-relevant objects
(one class, "object"). Evaluation: box/mask AP of the relevant instances (COCOEvaluator on
the task-split ground truth) and mask mIoU / cIoU of their union (VLTP's measure).
``dataloader.test.mapper.held_out_prompts=True`` evaluates on the held-out prompt paraphrases.
"""
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator

from tokenprune.data import TaskDatasetMapper
from tokenprune.evaluation import TaskMaskIoUEvaluator

from .synthetic_data import dataloader

dataloader.train.dataset.names = "synthetic_tasks_train"
# the targets of position tasks ("the shapes in the left half") follow the random flip
dataloader.train.mapper._target_ = TaskDatasetMapper
dataloader.test.dataset.names = "synthetic_tasks_val"
# True: each input's prompt is its task's held-out paraphrase (records' "paraphrases"[0]),
# to evaluate the text guidance on wording never trained on; task ids and targets unchanged
dataloader.test.mapper._target_ = TaskDatasetMapper
dataloader.test.mapper.held_out_prompts = False
dataloader.evaluator = [
    L(COCOEvaluator)(dataset_name="${...test.dataset.names}"),
    L(TaskMaskIoUEvaluator)(dataset_name="${...test.dataset.names}"),
]
