"""Training and evaluation with Detectron2's trainers, hooks, checkpointer and evaluators."""
from __future__ import annotations

import io
import logging
import os
from urllib.parse import urlparse
from contextlib import contextmanager, redirect_stderr
from typing import Any, Dict, List, Optional, Sequence

import torch
from omegaconf import DictConfig

from detectron2.config import instantiate
from detectron2.engine import default_writers, hooks
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..checkpoint import LoadReport, TokenPruneCheckpointer, check_backbone_loaded
from ..data import prepare_dataset
from ..errors import CheckpointError, ConfigError
from ..modeling.meta_arch import find_pruned_vit
from .amp import AMP_PRECISIONS, amp_dtype, build_trainer
from .hooks import KeepRatioHook, build_flops_hook, build_gate_noise_hook

__all__ = ["do_train", "do_test", "build_model", "verify_checkpoint", "prepare_datasets",
           "checkpoint_to_load", "local_checkpoint_file", "check_train_config"]

logger = logging.getLogger("detectron2")


def dataset_names(cfg: DictConfig, splits: Sequence[str] = ("train", "test")) -> List[str]:
    """Every dataset name the config's loaders of ``splits`` read."""
    names: List[str] = []
    for split in splits:
        node = cfg.get("dataloader", {}).get(split)
        value = node.dataset.names if node is not None and "dataset" in node else None
        if value is None:
            continue
        names.extend([value] if isinstance(value, str) else list(value))
    return names


def prepare_datasets(cfg: DictConfig) -> None:
    """Generate (synthetic) or check (real) every dataset the config needs."""
    for name in dataset_names(cfg):
        prepare_dataset(name)


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """Instantiate ``cfg.model`` on ``train.device``; a model argument out of its range
    (a ValueError of a constructor, e.g. ``keep_ratios=[1.5, ...]``) is a ConfigError."""
    try:
        model = instantiate(cfg.model)
    except ValueError as e:
        raise ConfigError(f"bad model argument: {' '.join(str(e).split())}") from e
    return model.to(cfg.train.device)


def check_train_config(cfg: DictConfig) -> None:
    """Raise ConfigError for training options out of their range (before anything runs)."""
    anneal = cfg.train.get("gate_noise_anneal", 0.0)
    if not isinstance(anneal, (int, float)) or isinstance(anneal, bool) \
            or not 0.0 <= anneal <= 1.0:
        raise ConfigError(f"train.gate_noise_anneal must lie in [0, 1] (0 = off), got {anneal!r}")
    amp = cfg.train.get("amp", {})
    precision = amp.get("precision", "float16")
    if precision not in AMP_PRECISIONS:
        raise ConfigError(f"train.amp.precision must be one of {', '.join(AMP_PRECISIONS)}, "
                          f"got {precision!r}")
    if amp.get("enabled", False):
        try:
            amp_dtype(precision, cfg.train.device)
        except ConfigError as e:
            raise ConfigError(f"train.amp.precision={precision}: {e}") from e


def checkpoint_to_load(cfg: DictConfig, resume: bool) -> str:
    """The file ``DetectionCheckpointer.resume_or_load`` will read ('' for none)."""
    last = os.path.join(cfg.train.output_dir, "last_checkpoint")
    if resume and os.path.isfile(last):
        with open(last) as f:
            return os.path.join(cfg.train.output_dir, f.read().strip())
    return cfg.train.init_checkpoint or ""


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def local_checkpoint_file(path: str) -> str:
    """The local file of checkpoint ``path``: its query (``?matching_heuristics=True``)
    stripped, a remote file (``detectron2://``, ``https://``) fetched into the cache.

    Raises CheckpointError if the file does not exist or cannot be fetched.
    """
    from detectron2.utils.file_io import PathManager

    file = urlparse(path)._replace(query="").geturl()
    if "://" in file:
        try:  # iopath's progress bar and error log would make a failure several lines
            with _quiet_logging(), redirect_stderr(io.StringIO()):
                file = PathManager.get_local_path(file)
        except Exception as e:
            raise CheckpointError(f"cannot fetch checkpoint {path}: {_one_line(e)}") from e
    if not os.path.isfile(file):
        raise CheckpointError(f"checkpoint not found: {path}")
    return file


@contextmanager
def _quiet_logging():
    """No log records: before ``default_setup`` they would reach stderr unformatted."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def verify_checkpoint(model: torch.nn.Module, path: str, *,
                      strict: bool) -> Optional[LoadReport]:
    """Load checkpoint ``path`` into ``model`` (weights only) and check that it fits.

    Returns the :class:`~tokenprune.checkpoint.LoadReport` (None when ``path`` is empty).
    Raises CheckpointError for a missing, unfetchable or unreadable file, a file none of
    whose tensors fits the model, or (``strict``, e.g. for evaluation) any model tensor the
    file lacks or holds in another shape. Without ``strict`` (initialising a fine-tune from
    a dense model or a pretrain) tensors of another shape are skipped like Detectron2 does
    (e.g. heads for another class count), but no ViT backbone tensor other than the gates
    may be left at its initialisation (:func:`~tokenprune.checkpoint.check_backbone_loaded`).
    Position tables of another size are resized on loading.
    """
    if not path:
        return None
    local_checkpoint_file(path)
    checkpointer = TokenPruneCheckpointer(model)
    try:
        with _quiet_logging():
            checkpointer.load(path, checkpointables=[])
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {_one_line(e)}") from e
    report = checkpointer.last_report
    if report is None:
        raise CheckpointError(f"checkpoint {path} holds no model state dict")
    if not report.loaded:
        raise CheckpointError(f"checkpoint {path} does not match the model: none of its "
                              f"{len(report.unused)} tensors fits {type(model).__name__}")
    if strict and report.new:
        bad = report.mismatched[0] if report.mismatched else None
        example = (f"{bad[0]} {tuple(bad[1])} vs {tuple(bad[2])}" if bad
                   else f"{report.new[0]} is missing")
        raise CheckpointError(f"checkpoint {path} does not match the model: "
                              f"{len(report.mismatched)} tensors differ in shape and "
                              f"{len(report.new) - len(report.mismatched)} are missing, "
                              f"e.g. {example}")
    if not strict:
        check_backbone_loaded(model, report)
    return report


def do_test(cfg: DictConfig, model: torch.nn.Module) -> Dict[str, Any]:
    """Run the configured evaluator(s) on the test loader; print and return the results."""
    if "evaluator" not in cfg.dataloader:
        return {}
    evaluator = instantiate(cfg.dataloader.evaluator)
    if isinstance(evaluator, (list, tuple)):
        evaluator = DatasetEvaluators(list(evaluator))
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(cfg: DictConfig, model: torch.nn.Module, resume: bool = False) -> Dict[str, Any]:
    """Train ``model`` as configured (Detectron2 trainer + hooks); return the last eval."""
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    trainer = build_trainer(cfg, model, train_loader, optimizer)
    checkpointer = TokenPruneCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    results: Dict[str, Any] = {}

    def evaluate():
        results.clear()
        results.update(do_test(cfg, model))
        return results

    pruned = find_pruned_vit(model) is not None
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        KeepRatioHook() if pruned else None,  # before EvalHook: it logs the training step
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        build_gate_noise_hook(cfg) if pruned else None,
        build_flops_hook(cfg) if pruned and comm.is_main_process() else None,
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if start_iter:
        logger.info(f"Resuming from iteration {start_iter} (optimizer state restored for "
                    f"{len(optimizer.state)} parameters, learning-rate schedule at "
                    f"{optimizer.param_groups[0]['lr']:.3g})")
    trainer.train(start_iter, cfg.train.max_iter)
    return results
