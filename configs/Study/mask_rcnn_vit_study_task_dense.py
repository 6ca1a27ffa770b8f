"""The VLTP study's unpruned task model: the SViT study's plain 12-block, 128-wide ViT Mask
R-CNN, task-conditioned (a learned embedding per task id modulates the feature pyramid, FiLM),
trained from scratch on the task scenes (``synthetic_task_scenes_*``: 1-3 relevant objects
among 10-25, docs/datasets.md).

    python train_net.py --config-file configs/Study/mask_rcnn_vit_study_task_dense.py

The VLTP study (``python -m tokenprune.tools.ablation --study vltp``, docs/study.md) trains
it once, then fine-tunes every row from it with mask_rcnn_vit_study_vltp.py.
"""
from tokenprune.data import SCENE_TASKS

from ..common.synthetic_task_scenes_data import dataloader
from ..common.vltp import make_task_conditioned
from .mask_rcnn_vit_study_dense import lr_multiplier, model, optimizer, train

make_task_conditioned(model, num_tasks=len(SCENE_TASKS))

train.max_iter = 2000
train.eval_period = 1000
train.output_dir = "output/study_task_dense"
dataloader.evaluator[0].output_dir = "${....train.output_dir}/inference"
