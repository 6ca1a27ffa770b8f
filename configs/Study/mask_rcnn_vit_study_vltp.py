"""VLTP in the paper's setting, on the VLTP study's unpruned task model (train
mask_rcnn_vit_study_task_dense.py first): guided pruning decoders at blocks 3-11 with the
targets 0.75 / 0.56 / 0.42, inherit mode (a token a decoder prunes skips the later blocks;
reactivated in the output map), top-k at inference; the ViT image encoder frozen (learning
rate 0), the decoders trained at 1e-3, the pyramid, heads, guidance and FiLM at 1e-4.

``model.backbone.net.gate=mlp`` gives the unguided gates, ``model.guidance.name=text`` the
text guidance. The study (docs/study.md, "The VLTP study") sets each row's switches, and for
its whole-model table replaces the frozen encoder by the gates-at-10x recipe.
"""
from tokenprune.engine.lr import freeze_vit

from ..common.vltp import make_vltp
from .mask_rcnn_vit_study_task_dense import dataloader, lr_multiplier, model, optimizer, train

make_vltp(model, depth=12, base=0.75)

train.init_checkpoint = "output/study_task_dense/model_final.pth"
train.output_dir = "output/study_vltp"
train.max_iter = 200
train.eval_period = 200
optimizer.lr = 1e-4
freeze_vit(optimizer, gate_factor=10.0)
