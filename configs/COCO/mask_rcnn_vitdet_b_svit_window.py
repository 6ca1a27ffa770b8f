"""SViT on COCO keeping ViTDet-B's windowed blocks (14x14 windows, global blocks 2/5/8/11).

Same schedule and fine-tune as mask_rcnn_vitdet_b_svit.py; pruned windowed blocks attend
among the kept tokens of each window (packed per image-window). The dense ViTDet-B
checkpoint loads unchanged.
"""
from .mask_rcnn_vitdet_b_svit import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.window_block_indexes = [0, 1, 3, 4, 6, 7, 9, 10]
train.output_dir = "output/coco_vitdet_b_svit_window"
