"""Dense ViTDet-Tiny Mask R-CNN on the generated shapes dataset (trains on 2 CPU cores).

    python train_net.py --config-file configs/Synthetic/mask_rcnn_vitdet_t_dense.py
"""
from ..common.synthetic_data import dataloader
from ..common.synthetic_schedule import lr_multiplier, optimizer, train
from ..common.vitdet_tiny_model import model

train.output_dir = "output/synthetic_dense"
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"
