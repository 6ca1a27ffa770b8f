"""Evaluators for TokenPrune models (Detectron2 DatasetEvaluator interface)."""
from .subset_ap import images_by_count, subset_ap
from .task_miou import TaskMaskIoUEvaluator, union_mask

__all__ = ["TaskMaskIoUEvaluator", "union_mask", "images_by_count", "subset_ap"]
