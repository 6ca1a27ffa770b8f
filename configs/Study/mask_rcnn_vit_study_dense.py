"""The SViT study's dense model: a plain 12-block, 128-wide ViT (global attention) Mask R-CNN
on the study's generated scenes (``synthetic_study_*``: 6 classes, shape x texture).

    python train_net.py --config-file configs/Study/mask_rcnn_vit_study_dense.py

The study (``python -m tokenprune.tools.ablation``, docs/study.md) trains it once, then
fine-tunes every row of its table from it with the SViT config next to this one.
"""
from ..common.synthetic_data import dataloader
from ..common.synthetic_schedule import lr_multiplier, optimizer, train
from ..common.vit_study_model import model

dataloader.train.dataset.names = "synthetic_study_train"
dataloader.test.dataset.names = "synthetic_study_val"
train.max_iter = 2000
train.eval_period = 500
train.output_dir = "output/study_dense"
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"
