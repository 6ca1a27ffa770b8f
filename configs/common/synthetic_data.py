"""Data loaders for the generated shapes dataset (256x256 images, 4 classes)."""
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

import tokenprune.data  # noqa: F401  (registers synthetic_shapes_{train,val})

image_size = 256

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = "synthetic_shapes_train"
dataloader.train.mapper.augmentations = [L(T.RandomFlip)(horizontal=True)]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.instance_mask_format = "bitmask"  # masks are polygons or RLE
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.dataset.names = "synthetic_shapes_val"
# the generated images are image_size square already (a no-op on them); other images, e.g.
# photographs given to tokenprune.tools.demo, are fitted into image_size like ViTDet's test resize
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)
]
dataloader.test.num_workers = 1
