"""Training loop, evaluation and trainer hooks (Detectron2 engine based)."""
from .amp import AMP_PRECISIONS, AutocastModel, autocast_model, build_trainer
from .eval_pruning import KeepRatioMeter, mean_keep_ratio, report_eval_pruning
from .evaluate import evaluate_with_keep, result_metric, warnings_quiet
from .hooks import FlopsHook, GateNoiseHook, KeepRatioHook, flops_scalars, keep_ratio_scalars
from .logs import PlainFormatter, default_setup_plain
from .train_loop import (
    build_model, check_train_config, checkpoint_to_load, configure_run, do_eval_only, do_test,
    do_train, local_checkpoint_file, prepare_datasets, verify_checkpoint,
)
from .writers import KeepRatioPrinter, training_writers

__all__ = [
    "FlopsHook", "GateNoiseHook", "KeepRatioHook", "keep_ratio_scalars", "flops_scalars",
    "KeepRatioMeter", "mean_keep_ratio", "report_eval_pruning", "KeepRatioPrinter",
    "training_writers", "AMP_PRECISIONS", "build_model", "check_train_config",
    "checkpoint_to_load", "configure_run", "do_eval_only", "do_test", "do_train",
    "local_checkpoint_file", "prepare_datasets", "verify_checkpoint",
    "AutocastModel", "autocast_model", "build_trainer", "PlainFormatter", "default_setup_plain",
    "evaluate_with_keep", "result_metric", "warnings_quiet",
]
