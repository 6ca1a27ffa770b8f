"""Training loop, evaluation and trainer hooks (Detectron2 engine based)."""
from .hooks import FlopsHook, GateNoiseHook, KeepRatioHook, keep_ratio_scalars
from .train_loop import (
    build_model, checkpoint_to_load, do_test, do_train, prepare_datasets, verify_checkpoint,
)

__all__ = [
    "FlopsHook", "GateNoiseHook", "KeepRatioHook", "keep_ratio_scalars", "build_model",
    "checkpoint_to_load", "do_test", "do_train", "prepare_datasets", "verify_checkpoint",
]
