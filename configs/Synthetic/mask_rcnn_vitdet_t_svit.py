"""SViT fine-tune of the dense synthetic ViTDet-Tiny (train the dense config first).

Blocks 3-11 of 12 pruned with targets 0.7 / 0.49 / 0.343 (mean 0.51); MLP gates,
keep-ratio loss weight 4; 400 iterations; FLOPs logged every 200 iterations.
"""
from ..common.svit import make_svit
from .mask_rcnn_vitdet_t_dense import dataloader, lr_multiplier, model, optimizer, train

make_svit(model, depth=12)

train.init_checkpoint = "output/synthetic_dense/model_final.pth"
train.output_dir = "output/synthetic_svit"
train.max_iter = 400
train.eval_period = 400
train.flops_period = 200
optimizer.lr = 1e-4
