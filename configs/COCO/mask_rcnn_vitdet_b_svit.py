"""SViT on COCO: ViTDet-B with global attention in every block, SViT's schedule.

Blocks 3-11 pruned with targets 0.7 / 0.49 / 0.343 (MLP gates, preserve, reactivation,
dynamic rate), short fine-tune (5 epochs) from the dense ViTDet-B COCO model. The dense
checkpoint has windowed blocks; its 14x14-window relative-position tables are resized to the
global 64x64 grid on loading (TokenPruneCheckpointer), as the public SViT code removes
ViTDet's windows.
"""
from fvcore.common.param_scheduler import CosineParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from ..common.svit import make_svit
from .mask_rcnn_vitdet_b_dense import dataloader, model, optimizer, train

model.backbone.net.window_block_indexes = []
make_svit(model, depth=12)

train.init_checkpoint = (
    "detectron2://ViTDet/COCO/mask_rcnn_vitdet_b/f325346929/model_final_61ccd1.pkl"
)
train.output_dir = "output/coco_vitdet_b_svit"
# 5 epochs: 9220 iterations of 64 images over COCO's 118k training images
train.max_iter = 9220
train.eval_period = 9220
train.checkpointer.period = 1000
train.flops_period = 1000

optimizer.lr = 2e-5
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.01),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)
