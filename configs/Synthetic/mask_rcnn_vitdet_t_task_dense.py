"""Unpruned task-conditioned ViTDet-Tiny on the synthetic task data (the VLTP reference).

Predicts the instances relevant to the input's task (``task_id`` / ``prompt``): the
guidance embedding modulates the feature pyramid (FiLM). Initialised from the dense
shapes model. ``model.guidance.name=text`` or ``=vector`` switch the guidance source.
"""
from tokenprune.modeling import PrunedViT, TaskConditionedRCNN

from ..common.guidance import GUIDANCE_DIM, guidance_node
from ..common.synthetic_tasks_data import dataloader
from .mask_rcnn_vitdet_t_dense import lr_multiplier, model, optimizer, train

model._target_ = TaskConditionedRCNN
model.guidance = guidance_node(num_tasks=8)
model.guidance_dim = GUIDANCE_DIM
model.relevance_loss_weight = 0.0
model.roi_heads.num_classes = 1
# a PrunedViT without pruned blocks is Detectron2's ViT; the VLTP config adds the gates
model.backbone.net._target_ = PrunedViT
model.backbone.net.pruned_blocks = []
model.backbone.net.keep_ratios = []

train.init_checkpoint = "output/synthetic_dense/model_final.pth"
train.output_dir = "output/synthetic_task_dense"
train.max_iter = 500
train.eval_period = 500
dataloader.evaluator[0].output_dir = "${....train.output_dir}/inference"
