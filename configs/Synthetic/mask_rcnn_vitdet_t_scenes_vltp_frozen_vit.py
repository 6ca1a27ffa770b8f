"""VLTP on the task scenes in the paper's setting: the ViT frozen, the decoders trained.

The model and schedule of mask_rcnn_vitdet_t_vltp.py (guided pruning decoders at blocks
3-11, keep-ratio targets 0.75 / 0.56 / 0.42, inherit mode, top-k at inference) on the task
scenes, started from the unpruned task model of mask_rcnn_vitdet_t_scenes_task_dense.py.
Trained: the pruning decoders (``backbone.net.gates``, at 1e-3) and everything after the ViT,
i.e. the feature pyramid, the Mask R-CNN heads, the guidance module and the FiLM layers (at
1e-4). Not trained: the ViT image encoder's own weights (patch embedding, position
embedding, blocks), frozen at the unpruned task model by a zero learning rate.
``model.backbone.net.gate=mlp`` gives unguided gates; ``model.guidance.name=text`` the text
guidance, with ``dataloader.test.mapper.held_out_prompts=True`` evaluated on the held-out
paraphrases.
"""
from tokenprune.data import SCENE_TASKS
from tokenprune.engine.lr import freeze_vit

from .mask_rcnn_vitdet_t_scenes_task_dense import dataloader
from .mask_rcnn_vitdet_t_vltp import lr_multiplier, model, optimizer, train

model.guidance.num_tasks = len(SCENE_TASKS)

train.init_checkpoint = "output/synthetic_scenes_task_dense/model_final.pth"
train.output_dir = "output/synthetic_scenes_vltp_frozen_vit"
freeze_vit(optimizer, gate_factor=10.0)
