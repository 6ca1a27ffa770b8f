"""Mixed precision and data-parallel wrapping for training.

``train.amp.enabled`` with ``train.amp.precision`` (``float16`` or ``bfloat16``):

* on CUDA, Detectron2's :class:`AMPTrainer` (autocast + gradient scaler) at that dtype;
* on a CPU, ``bfloat16`` autocast of the forward pass (:class:`AutocastModel`; bf16 has
  float32's exponent range, so no gradient scaler is needed); ``float16`` autocast needs
  CUDA and is refused.

DDP goes through Detectron2's ``create_ddp_model``, so ``train.ddp.fp16_compression``
(compressed gradient all-reduce) is honoured, on gloo as on NCCL.
"""
from __future__ import annotations

import torch.nn as nn
from omegaconf import DictConfig

from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model

from ..modeling.autocast import AMP_PRECISIONS, AutocastModel, amp_dtype, autocast_model

__all__ = ["AMP_PRECISIONS", "AutocastModel", "amp_dtype", "build_trainer", "autocast_model"]


def build_trainer(cfg: DictConfig, model: nn.Module, data_loader, optimizer) -> SimpleTrainer:
    """Detectron2's trainer for ``model``: DDP-wrapped when there are several processes,
    with the configured mixed precision (see the module docstring)."""
    device = cfg.train.device
    ddp = dict(cfg.train.get("ddp", {}))
    if not device.startswith("cuda"):
        ddp["device_ids"] = None  # CPU processes (gloo)
    ddp_model = create_ddp_model(model, **ddp)
    amp = cfg.train.get("amp", {})
    if not amp.get("enabled", False):
        return SimpleTrainer(ddp_model, data_loader, optimizer)
    dtype = amp_dtype(amp.get("precision", "float16"), device)
    if device.startswith("cuda"):
        return AMPTrainer(ddp_model, data_loader, optimizer, precision=dtype)
    return SimpleTrainer(AutocastModel(ddp_model, "cpu", dtype), data_loader, optimizer)
