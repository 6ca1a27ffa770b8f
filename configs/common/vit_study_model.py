"""The ablation study's Mask R-CNN: a plain 12-block, 128-wide ViT with global attention in
every block (as in SViT's public code, which removed ViTDet's windows), on 256x256 images.

The backbone is what the study is about; the neck and heads are cut to what the study's
data needs so that 5 seeds of every row train on 2 CPU cores: a three-level pyramid
(strides 8, 16, 32, plus the max-pooled stride 64) of 64 channels instead of ViTDet's four
of 256 (its stride-4 level alone cost more than the ViT here), and lighter RoI heads.
Measured on 2 CPU cores, batch 4: the synthetic ViTDet-T heads took about 1.0 s of a
1.2 s training iteration with this backbone.
"""
from .vitdet_tiny_model import model

net = model.backbone.net
net.embed_dim = 128
net.num_heads = 4
net.window_block_indexes = []  # global attention in every block

LEVELS = ["p3", "p4", "p5"]
model.backbone.scale_factors = (2.0, 1.0, 0.5)
model.backbone.out_channels = 64

rpn = model.proposal_generator
rpn.in_features = [*LEVELS, "p6"]
rpn.head.in_channels = 64
rpn.anchor_generator.sizes = [[16], [32], [64], [128]]
rpn.anchor_generator.strides = [8, 16, 32, 64]

heads = model.roi_heads
heads.num_classes = 6
heads.batch_size_per_image = 64
heads.box_in_features = heads.mask_in_features = LEVELS
heads.box_pooler.scales = heads.mask_pooler.scales = (1.0 / 8, 1.0 / 16, 1.0 / 32)
heads.box_head.input_shape.channels = 64
heads.box_head.fc_dims = [256, 256]
heads.mask_head.input_shape.channels = 64
heads.mask_head.conv_dims = [64, 64]
