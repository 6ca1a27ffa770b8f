"""Turn a dense ViTDet Mask R-CNN config into SViT: PrunedViT backbone + keep-ratio loss."""
from functools import partial

from tokenprune.engine.lr import new_module_lr_factor
from tokenprune.modeling import PrunedViT, TokenPruningRCNN, svit_schedule


def make_svit(model, depth: int = 12) -> None:
    """In place: PrunedViT with SViT's schedule, MLP gates, all four findings on."""
    if not (isinstance(model._target_, type) and issubclass(model._target_, TokenPruningRCNN)):
        model._target_ = TokenPruningRCNN
    net = model.backbone.net
    net._target_ = PrunedViT
    net.update(svit_schedule(depth))
    net.gate = "mlp"
    net.preserve = True
    net.reactivate = True
    net.dynamic = True
    net.fixed_keep_ratio = None
    net.keep_ratio_loss_weight = 4.0


def train_gates_only(optimizer, lr: float) -> None:
    """In place: the gates learn at ``lr``, every other parameter is frozen (factor 0)."""
    optimizer.lr = lr
    optimizer.params.lr_factor_func = partial(new_module_lr_factor, modules=("gates",),
                                              factor=1.0, rest=0.0)
