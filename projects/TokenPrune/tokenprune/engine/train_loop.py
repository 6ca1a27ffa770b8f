"""Training and evaluation with Detectron2's trainers, hooks, checkpointer and evaluators."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

import torch
from omegaconf import DictConfig

from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..analysis import count_model_flops
from ..checkpoint import TokenPruneCheckpointer, build_model, verify_checkpoint
from ..data import dataset_names, prepare_dataset
from ..modeling.meta_arch import find_pruned_vit
from .hooks import KeepRatioHook, build_flops_hook, build_gate_noise_hook

__all__ = ["do_train", "do_test", "build_model", "verify_checkpoint", "prepare_datasets",
           "checkpoint_to_load"]

logger = logging.getLogger("detectron2")


def prepare_datasets(cfg: DictConfig) -> None:
    """Generate (synthetic) or check (real) every dataset the config needs."""
    for name in dataset_names(cfg):
        prepare_dataset(name)


def checkpoint_to_load(cfg: DictConfig, resume: bool) -> str:
    """The file ``DetectionCheckpointer.resume_or_load`` will read ('' for none)."""
    last = os.path.join(cfg.train.output_dir, "last_checkpoint")
    if resume and os.path.isfile(last):
        with open(last) as f:
            return os.path.join(cfg.train.output_dir, f.read().strip())
    return cfg.train.init_checkpoint or ""


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


def _ddp(model: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    if comm.get_world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    kwargs = dict(cfg.train.ddp)
    kwargs.pop("fp16_compression", None)
    device_ids = [comm.get_local_rank()] if cfg.train.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=device_ids, **kwargs)


def do_train(cfg: DictConfig, model: torch.nn.Module, resume: bool = False) -> Dict[str, Any]:
    """Train ``model`` as configured (Detectron2 trainer + hooks); return the last eval."""
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    ddp_model = _ddp(model, cfg)
    use_amp = cfg.train.amp.enabled and cfg.train.device.startswith("cuda")
    trainer = (AMPTrainer if use_amp else SimpleTrainer)(ddp_model, train_loader, optimizer)
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
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        KeepRatioHook() if pruned else None,
        build_gate_noise_hook(cfg) if pruned else None,
        build_flops_hook(cfg, count_model_flops) if pruned and comm.is_main_process() else None,
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
