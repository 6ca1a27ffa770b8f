"""Turn a dense ViTDet Mask R-CNN config into SViT: PrunedViT backbone + keep-ratio loss."""
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
