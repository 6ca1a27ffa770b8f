"""SViT on the synthetic data, training only the gates of the dense model.

The recipe of mask_rcnn_vitdet_t_svit.py (targets 0.7 / 0.49 / 0.343, keep-ratio loss) with
every parameter outside ``gates`` frozen at the dense weights (learning-rate factor 0) and
the gates learning at 1e-3 for 300 iterations. The rest of the model cannot adapt to the
pruning, so the AP at a keep ratio measures the gates' choice of tokens alone; compare with
random keep on the dense weights (``model.backbone.net.gate=random``, training-free).
"""
from functools import partial

from tokenprune.engine.lr import new_module_lr_factor

from .mask_rcnn_vitdet_t_svit import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "output/synthetic_svit_gates_only"
train.max_iter = 300
train.eval_period = 300
train.flops_period = 150
optimizer.lr = 1e-3
optimizer.params.lr_factor_func = partial(new_module_lr_factor, modules=("gates",), factor=1.0,
                                          rest=0.0)
