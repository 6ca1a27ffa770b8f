"""SViT on the synthetic data, training only the gates of the dense model.

The recipe of mask_rcnn_vitdet_t_svit.py (targets 0.7 / 0.49 / 0.343, keep-ratio loss) with
every parameter outside ``gates`` frozen at the dense weights (learning-rate factor 0) and
the gates learning at 1e-3 for 300 iterations. The rest of the model cannot adapt to the
pruning, so the AP at a keep ratio measures the gates' choice of tokens alone; compare with
random keep on the dense weights (``model.backbone.net.gate=random``, training-free).
"""
from tokenprune.engine.lr import train_gates_only

from .mask_rcnn_vitdet_t_svit import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "output/synthetic_svit_gates_only"
train.max_iter = 300
train.eval_period = 300
train.flops_period = 150
train_gates_only(optimizer, lr=1e-3)
