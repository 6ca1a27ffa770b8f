"""Training and evaluation with Detectron2's trainers, hooks, checkpointer and evaluators."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from detectron2.config import instantiate
from detectron2.engine import hooks
from detectron2.evaluation import (
    DatasetEvaluators, inference_on_dataset, print_csv_format,
)
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm
from detectron2.utils.events import EventStorage, JSONWriter

from ..analysis import count_model_flops
from ..checkpoint import (
    TokenPruneCheckpointer, build_model, check_device, local_checkpoint_file, verify_checkpoint,
)
from ..data import dataset_names, first_test_inputs, prepare_dataset
from ..errors import ConfigError
from ..modeling.meta_arch import find_pruned_vit
from .amp import AMP_PRECISIONS, amp_dtype, build_trainer
from .compiling import compiled_for_inference, train_compile_mode
from .determinism import check_determinism_config, configure_run, rng_preserving
from .eval_pruning import KeepRatioMeter, report_eval_pruning
from .hooks import KeepRatioHook, build_flops_hook, build_gate_noise_hook, gate_noise_anneal
from .writers import training_writers

__all__ = ["do_train", "do_test", "do_eval_only", "build_model", "verify_checkpoint", "prepare_datasets",
           "checkpoint_to_load", "local_checkpoint_file", "check_train_config", "configure_run"]

logger = logging.getLogger("detectron2")


def prepare_datasets(cfg: DictConfig) -> None:
    """Generate (synthetic) or check (real) every dataset the config needs."""
    for name in dataset_names(cfg):
        prepare_dataset(name)


def check_train_config(cfg: DictConfig) -> None:
    """Raise ConfigError for training options out of their range, DeviceError for a device
    this machine lacks (before anything runs)."""
    check_device(cfg.train.device, "train.device")
    batch = OmegaConf.select(cfg, "dataloader.train.total_batch_size")
    world = comm.get_world_size()
    if batch is not None and (batch < 1 or batch % world):
        raise ConfigError(f"dataloader.train.total_batch_size={batch}: must be a positive "
                          f"multiple of the number of processes ({world})")
    check_determinism_config(cfg)
    gate_noise_anneal(cfg)
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
    train_compile_mode(cfg)


def checkpoint_to_load(cfg: DictConfig, resume: bool) -> str:
    """The file ``DetectionCheckpointer.resume_or_load`` will read ('' for none)."""
    last = os.path.join(cfg.train.output_dir, "last_checkpoint")
    if resume and os.path.isfile(last):
        with open(last) as f:
            return os.path.join(cfg.train.output_dir, f.read().strip())
    return cfg.train.init_checkpoint or ""


def do_test(cfg: DictConfig, model: torch.nn.Module, compile: str = "none") -> Dict[str, Any]:
    """Run the configured evaluator(s) on the test loader; print and return the results.
    ``compile``: the evaluation runs ``model`` compiled in that mode
    (:func:`~.compiling.compiled_for_inference`; "none": eager).

    For a pruned model also the kept fraction per block and its mean over the evaluated
    images, and the GFLOPs on the first ``train.flops_num_images`` (default 2; 0: not
    counted) test images: logged, and put in the active EventStorage
    (:func:`~.eval_pruning.report_eval_pruning`).
    """
    return test_with_keep_ratios(cfg, model, cfg.train.get("flops_num_images", 2), compile)[0]


def test_with_keep_ratios(cfg: DictConfig, model: torch.nn.Module, flops_images: int,
                          compile: str = "none"
                          ) -> Tuple[Dict[str, Any], Dict[int, torch.Tensor]]:
    """:func:`do_test` with the GFLOPs counted on the first ``flops_images`` test images (0:
    none; on the eager model); also returns the kept fractions it measured ({block:
    (images,)}, {} when dense)."""
    if "evaluator" not in cfg.dataloader:
        return {}, {}
    evaluator = instantiate(cfg.dataloader.evaluator)
    if isinstance(evaluator, (list, tuple)):
        evaluator = DatasetEvaluators(list(evaluator))
    meter = KeepRatioMeter(model)
    try:
        with compiled_for_inference(model, compile, cfg.train.device) as runner:
            results = inference_on_dataset(runner, instantiate(cfg.dataloader.test), evaluator)
    finally:
        ratios = meter.close()
    if comm.is_main_process():
        print_csv_format(results)
        if ratios:
            report_eval_pruning(model, ratios,
                                first_test_inputs(cfg, flops_images) if flops_images else [])
    return results, ratios


def do_eval_only(cfg: DictConfig, model: torch.nn.Module) -> Dict[str, Any]:
    """:func:`do_test` once (``train_net.py --eval-only``), ``model`` compiled as
    ``train.compile`` says (default "none"; training stays eager); its results and pruning
    figures appended to ``train.output_dir``/metrics.json, as the training's evaluations
    are."""
    with EventStorage() as storage:
        results = do_test(cfg, model, train_compile_mode(cfg))
        if comm.is_main_process():
            storage.put_scalars(**flatten_results_dict(results), smoothing_hint=False)
            JSONWriter(os.path.join(cfg.train.output_dir, "metrics.json")).write()
    return results


def do_train(cfg: DictConfig, model: torch.nn.Module, resume: bool = False) -> Dict[str, Any]:
    """Train ``model`` as configured (Detectron2 trainer + hooks); return the last eval.

    Starts from :func:`configure_run` (seeds, threads, deterministic kernels), so that the
    training draws follow from ``train.seed`` alone, whatever ran since the model was built.
    """
    configure_run(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    trainer = build_trainer(cfg, model, train_loader, optimizer)
    checkpointer = TokenPruneCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    results: Dict[str, Any] = {}

    @rng_preserving  # an evaluation every eval_period iterations leaves the training draws alone
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
        rng_preserving(build_flops_hook)(cfg, rng_preserving(count_model_flops))
        if pruned and comm.is_main_process() else None,
        hooks.PeriodicWriter(training_writers(cfg.train.output_dir, cfg.train.max_iter),
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
