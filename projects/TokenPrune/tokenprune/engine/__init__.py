"""Training loop, evaluation and trainer hooks (Detectron2 engine based)."""
from .amp import AMP_PRECISIONS, AutocastModel, autocast_model, build_trainer
from .evaluate import KeepRatioMeter, evaluate_with_keep, result_metric, warnings_quiet
from .hooks import FlopsHook, GateNoiseHook, KeepRatioHook, keep_ratio_scalars
from .logs import PlainFormatter, default_setup_plain
from .train_loop import (
    build_model, check_train_config, checkpoint_to_load, configure_run, do_test, do_train,
    local_checkpoint_file, prepare_datasets, verify_checkpoint,
)

__all__ = [
    "FlopsHook", "GateNoiseHook", "KeepRatioHook", "keep_ratio_scalars", "AMP_PRECISIONS",
    "build_model", "check_train_config", "checkpoint_to_load", "configure_run", "do_test",
    "do_train", "local_checkpoint_file", "prepare_datasets", "verify_checkpoint",
    "AutocastModel", "autocast_model", "build_trainer", "PlainFormatter", "default_setup_plain",
    "KeepRatioMeter", "evaluate_with_keep",
    "result_metric", "warnings_quiet",
]
