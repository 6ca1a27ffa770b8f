"""Evaluators for TokenPrune models (Detectron2 DatasetEvaluator interface)."""
from .task_miou import TaskMaskIoUEvaluator, union_mask

__all__ = ["TaskMaskIoUEvaluator", "union_mask"]
