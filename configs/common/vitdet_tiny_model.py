"""ViTDet Mask R-CNN (Detectron2's model-zoo config) shrunk to a ViT-Tiny that trains on a CPU.

Same architecture family as ViTDet-B: plain ViT with windowed + global blocks and
decomposed relative positions, SimpleFeaturePyramid, Mask R-CNN heads with LayerNorm.
Smaller widths, a 16x16 token grid (256x256 input), lighter heads.
"""
from detectron2 import model_zoo

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

net = model.backbone.net
net.img_size = 256
net.embed_dim = 192
net.depth = 12
net.num_heads = 3
net.drop_path_rate = 0.0
net.window_size = 8  # 2x2 windows on the 16x16 grid; blocks 2, 5, 8, 11 global
net.pretrain_img_size = 256
net.pretrain_use_cls_token = False

model.backbone.out_channels = 128
model.proposal_generator.head.in_channels = 128
model.roi_heads.box_head.input_shape.channels = 128
model.roi_heads.mask_head.input_shape.channels = 128
model.backbone.square_pad = 256

model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (500, 250)
model.proposal_generator.batch_size_per_image = 128

model.roi_heads.num_classes = 4
model.roi_heads.batch_size_per_image = 128
model.roi_heads.box_head.conv_dims = []
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape.channels = 256
model.roi_heads.mask_head.conv_dims = [128, 128]
