"""SViT fine-tune of the study's dense model (train configs/Study/mask_rcnn_vit_study_dense.py
first): blocks 3-11 pruned with SViT's targets 0.7 / 0.49 / 0.343, MLP gates, keep-ratio loss
weight 4, 100 iterations at the fine-tune learning rate 1e-4. The study adds its recipe (gate
learning rate x10, Gumbel noise annealed) and each row's switches as overrides.
"""
from ..common.svit import make_svit
from .mask_rcnn_vit_study_dense import dataloader, lr_multiplier, model, optimizer, train

make_svit(model, depth=12)

train.init_checkpoint = "output/study_dense/model_final.pth"
train.output_dir = "output/study_svit"
train.max_iter = 100
train.eval_period = 100
optimizer.lr = 1e-4
