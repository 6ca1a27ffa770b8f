"""Unpruned task-conditioned ViTDet-Tiny on the task scenes (the VLTP reference there).

The recipe of mask_rcnn_vitdet_t_task_dense.py on ``synthetic_task_scenes_*``
(configs/common/synthetic_task_scenes_data.py): 10-25 objects per image, 11 tasks each
answered by 1-3 of them. Initialised from the dense shapes model.
``dataloader.test.mapper.held_out_prompts=True`` (with ``model.guidance.name=text``)
evaluates on the held-out prompt paraphrases.
"""
from tokenprune.data import SCENE_TASKS

from ..common.synthetic_task_scenes_data import dataloader
from .mask_rcnn_vitdet_t_task_dense import lr_multiplier, model, optimizer, train

model.guidance.num_tasks = len(SCENE_TASKS)

train.output_dir = "output/synthetic_scenes_task_dense"
dataloader.evaluator[0].output_dir = "${....train.output_dir}/inference"
