"""VLTP on the synthetic task data: guided pruning decoders at blocks 3-11 of ViTDet-Tiny.

Fine-tunes the unpruned task model (mask_rcnn_vitdet_t_task_dense.py). Keep-ratio targets
0.75 / 0.56 / 0.42 (SViT's schedule with base 0.75, mean 0.58: 23% fewer backbone FLOPs,
decoders included, by ``tokenprune.tools.flops``); inherit mode as in VLTP (a token pruned by a
decoder skips the following blocks), reactivated in the output map. The targets are
fractions of all tokens, so in inherit mode each decoder drops only a few of the tokens
still active (keep probability about 0.9): inference keeps the top-k at the targets
(``dynamic=False``) rather than thresholding at 0.5, which would keep them all.
``model.backbone.net.gate=mlp`` gives the unguided SViT gate for comparison;
``model.guidance.name=text|vector`` switch the guidance source.
"""
from tokenprune.engine.lr import gate_lr
from ..common.vltp import make_vltp
from .mask_rcnn_vitdet_t_task_dense import dataloader, lr_multiplier, model, optimizer, train

make_vltp(model, depth=12, base=0.75)

train.init_checkpoint = "output/synthetic_task_dense/model_final.pth"
train.output_dir = "output/synthetic_vltp"
train.max_iter = 300
train.eval_period = 300
train.flops_period = 150
optimizer.lr = 1e-4
# the new decoders learn at 10x the rate of the pretrained model around them
gate_lr(optimizer, factor=10.0)
