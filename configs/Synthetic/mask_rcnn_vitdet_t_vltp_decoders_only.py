"""VLTP on the synthetic task data, training only the pruning decoders.

The recipe of mask_rcnn_vitdet_t_vltp.py with every parameter outside ``gates`` frozen at
the unpruned task model's weights (learning-rate factor 0); the decoders learn at 1e-3, as
there. The rest of the model cannot adapt to the pruning, so the accuracy at a keep ratio
measures the decoders' choice of tokens alone: the setting that compares guided and
unguided decoders (``model.backbone.net.gate=mlp``) most directly.
"""
from tokenprune.engine.lr import train_gates_only

from .mask_rcnn_vitdet_t_vltp import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "output/synthetic_vltp_decoders_only"
train_gates_only(optimizer, lr=1e-3)
