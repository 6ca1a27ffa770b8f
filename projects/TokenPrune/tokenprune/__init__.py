"""TokenPrune: token pruning (SViT, VLTP and baselines) for ViTDet in Detectron2."""

__version__ = "0.1.0"
