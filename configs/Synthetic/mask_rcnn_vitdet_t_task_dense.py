"""Unpruned task-conditioned ViTDet-Tiny on the synthetic task data (the VLTP reference).

Predicts the instances relevant to the input's task (``task_id`` / ``prompt``): the
guidance embedding modulates the feature pyramid (FiLM). Initialised from the dense
shapes model. ``model.guidance.name=text`` or ``=vector`` switch the guidance source.
"""
from ..common.synthetic_tasks_data import dataloader
from ..common.vltp import make_task_conditioned
from .mask_rcnn_vitdet_t_dense import lr_multiplier, model, optimizer, train

make_task_conditioned(model, num_tasks=8)

train.init_checkpoint = "output/synthetic_dense/model_final.pth"
train.output_dir = "output/synthetic_task_dense"
train.max_iter = 500
train.eval_period = 500
dataloader.evaluator[0].output_dir = "${....train.output_dir}/inference"
