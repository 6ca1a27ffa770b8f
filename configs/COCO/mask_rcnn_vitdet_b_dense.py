"""ViTDet-B Mask R-CNN on COCO, the standard 100-epoch recipe (Li et al., ECCV 2022).

Model: Detectron2's model-zoo ``common/models/mask_rcnn_vitdet.py`` (ViT-B, window 14
with global blocks 2/5/8/11, relative positions, simple feature pyramid).
Data: large-scale jitter at 1024x1024, batch 64. Optimiser: AdamW, lr 1e-4,
layer-wise decay 0.7, MAE ImageNet initialisation. Needs ``$DETECTRON2_DATASETS/coco``.
"""
from functools import partial

import detectron2.data.transforms as T
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler

import tokenprune.data  # noqa: F401  (dataset checks with one-line errors)

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

image_size = 1024
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size,
                     target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.recompute_boxes = True
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.amp.precision = "float16"  # or "bfloat16" (GPUs from Ampere on, or a CPU)
train.ddp.fp16_compression = True
train.init_checkpoint = (
    "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_base.pth?matching_heuristics=True"
)
train.output_dir = "output/coco_vitdet_b_dense"
train.flops_period = 0
train.flops_num_images = 2  # FLOPs (FlopsHook, evaluation) on the first N test images
train.gate_noise_anneal = 0.0  # SViT: Gumbel noise 1 throughout (GateNoiseHook)
train.compile = "none"  # --eval-only: "default" or "freeze" runs the evaluation torch.compiled
# a fresh seed each run, PyTorch's fastest kernels and thread count; for a reproducible run
# (slower on a GPU) set train.seed=0 train.deterministic=True train.num_threads=N
train.seed = -1
train.deterministic = False
train.num_threads = 0
# 100 epochs: 184375 iterations of 64 images over COCO's 118k training images
train.max_iter = 184375

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
