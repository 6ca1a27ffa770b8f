"""Trainer hooks that write token-pruning figures to Detectron2's EventStorage.

Scalar names: ``keep_ratio/layer{i}``, ``keep_ratio/mean`` (plus
``keep_ratio_min/layer{i}`` and ``keep_ratio_max/layer{i}`` over the images of a batch),
``flops/backbone_gflops``, ``flops/total_gflops``, ``flops/backbone_ratio``, and
``gate_noise`` (the Gumbel noise scale while :class:`GateNoiseHook` anneals it).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data import first_test_inputs
from ..errors import ConfigError
from ..modeling.autocast import unwrap_model
from ..modeling.meta_arch import find_pruned_vit

__all__ = ["KeepRatioHook", "FlopsHook", "GateNoiseHook", "keep_ratio_scalars", "flops_scalars",
           "gate_noise_anneal", "build_gate_noise_hook", "build_flops_hook"]

logger = logging.getLogger("detectron2")


def keep_ratio_scalars(keep_ratios: Dict[int, Tensor]) -> Dict[str, float]:
    """{block index: (B,) kept fraction} -> scalar dict (batch mean, min, max; overall mean)."""
    scalars: Dict[str, float] = {}
    for i, r in sorted(keep_ratios.items()):
        r = r.detach().float()
        scalars[f"keep_ratio/layer{i}"] = r.mean().item()
        scalars[f"keep_ratio_min/layer{i}"] = r.min().item()
        scalars[f"keep_ratio_max/layer{i}"] = r.max().item()
    if keep_ratios:
        scalars["keep_ratio/mean"] = sum(
            scalars[f"keep_ratio/layer{i}"] for i in keep_ratios) / len(keep_ratios)
    return scalars


def flops_scalars(pruned: Any, dense: Any) -> Dict[str, float]:
    """Two :func:`~tokenprune.analysis.count_model_flops` counts (the model as it prunes,
    every token kept) -> ``flops/backbone_gflops``, ``flops/total_gflops`` (of ``pruned``)
    and ``flops/backbone_ratio`` (pruned over dense backbone)."""
    return {"flops/backbone_gflops": pruned.backbone / 1e9,
            "flops/total_gflops": pruned.total / 1e9,
            "flops/backbone_ratio": pruned.backbone / max(dense.backbone, 1.0)}


class KeepRatioHook(HookBase):
    """After every step, puts the kept fraction of each pruned block (smoothed) in storage."""

    def after_step(self) -> None:
        vit = find_pruned_vit(self.trainer.model)
        if vit is None or not vit.last_keep_ratios:
            return
        self.trainer.storage.put_scalars(**keep_ratio_scalars(vit.last_keep_ratios),
                                         smoothing_hint=True)


class GateNoiseHook(HookBase):
    """Anneals the Gumbel noise of the gates' training decisions from 1 to 0.

    The noise scale falls linearly over the first ``anneal`` fraction of the run and stays
    0 after it, so training ends on the decisions the model takes at inference
    (p_keep > p_drop) instead of samples. SViT trains with the noise at 1 throughout; after
    a short fine-tune its gates are still unsure, their samples are close to random choices,
    and the deterministic inference decision then meets features the model never saw.
    """

    def __init__(self, anneal: float):
        """anneal: fraction of ``max_iter`` in (0, 1] over which the noise reaches 0
        (:func:`gate_noise_anneal` reads it from a config)."""
        self.anneal = anneal

    def noise_at(self, iteration: int) -> float:
        """The noise scale at ``iteration`` (0-based) of the trainer's run."""
        return max(0.0, 1.0 - iteration / (self.anneal * self.trainer.max_iter))

    def before_train(self) -> None:
        self._vit = find_pruned_vit(self.trainer.model)

    def before_step(self) -> None:
        if self._vit is None:
            return
        self._vit.gumbel_noise = self.noise_at(self.trainer.iter)
        self.trainer.storage.put_scalar("gate_noise", self._vit.gumbel_noise,
                                        smoothing_hint=False)


def gate_noise_anneal(cfg) -> float:
    """``train.gate_noise_anneal``: 0 (the default: SViT's constant noise) or the fraction of
    the run over which :class:`GateNoiseHook` anneals the noise; ConfigError unless a number
    in [0, 1]."""
    anneal = cfg.train.get("gate_noise_anneal", 0.0)
    if not isinstance(anneal, (int, float)) or isinstance(anneal, bool) \
            or not 0.0 <= anneal <= 1.0:
        raise ConfigError(f"train.gate_noise_anneal must lie in [0, 1] (0 = off), got {anneal!r}")
    return float(anneal)


def build_gate_noise_hook(cfg) -> Optional[GateNoiseHook]:
    """A GateNoiseHook if :func:`gate_noise_anneal` is above 0."""
    anneal = gate_noise_anneal(cfg)
    return GateNoiseHook(anneal) if anneal else None


class FlopsHook(HookBase):
    """Every ``period`` iterations (and after the last), counts FLOPs with fvcore.

    The probe batch is fixed (the first ``num_images`` of the test loader), the model runs
    in eval mode with its real (dynamic) pruning, and the same count with every token kept
    (which does not depend on the weights, so it is made once) gives
    ``flops/backbone_ratio``. The time spent is logged.

    ``count_flops(model, inputs, keep_all=False)`` returns an object with ``backbone`` and
    ``total`` flops (:func:`tokenprune.analysis.count_model_flops`).
    """

    def __init__(self, period: int, probe_inputs: List[dict], count_flops: Callable[..., Any]):
        self._period = period
        self._probe = probe_inputs
        self._count = count_flops
        self._dense = None
        self.seconds = 0.0

    def _measure(self) -> None:
        start = time.perf_counter()
        model = unwrap_model(self.trainer.model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                pruned = self._count(model, self._probe)
                if self._dense is None:
                    self._dense = self._count(model, self._probe, keep_all=True)
        finally:
            model.train(was_training)
        self.trainer.storage.put_scalars(**flops_scalars(pruned, self._dense),
                                         smoothing_hint=False)
        self.seconds += time.perf_counter() - start

    def after_step(self) -> None:
        if not comm.is_main_process():
            return
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            self._measure()

    def after_train(self) -> None:
        if comm.is_main_process() and self.seconds:
            steps = self.trainer.storage.histories().get("time")
            total = sum(v for v, _ in steps.values()) if steps else float("nan")
            logger.info(f"FlopsHook: {self.seconds:.1f} s spent counting FLOPs "
                        f"({100 * self.seconds / total:.1f}% of the training steps' time)")


def build_flops_hook(cfg, count_flops: Callable[..., Any]) -> Optional[FlopsHook]:
    """A FlopsHook every ``train.flops_period`` iterations over the first images of the
    configured test set, counting with ``count_flops``, or None if the period is 0."""
    period = cfg.train.get("flops_period", 0)
    if not period:
        return None
    return FlopsHook(period, first_test_inputs(cfg, cfg.train.get("flops_num_images", 2)),
                     count_flops)
