"""Mixed precision and data-parallel wrapping for training and for the tools.

``train.amp.enabled`` with ``train.amp.precision`` (``float16`` or ``bfloat16``):

* on CUDA, Detectron2's :class:`AMPTrainer` (autocast + gradient scaler) at that dtype;
* on a CPU, ``bfloat16`` autocast of the forward pass (:class:`AutocastModel`; bf16 has
  float32's exponent range, so no gradient scaler is needed); ``float16`` autocast needs
  CUDA and is refused.

DDP goes through Detectron2's ``create_ddp_model``, so ``train.ddp.fp16_compression``
(compressed gradient all-reduce) is honoured, on gloo as on NCCL.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from omegaconf import DictConfig

from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model

from ..errors import ConfigError

__all__ = ["AMP_PRECISIONS", "AutocastModel", "amp_dtype", "build_trainer", "autocast_model"]

AMP_PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_dtype(precision: str, device: str) -> torch.dtype:
    """The autocast dtype for ``precision`` on ``device``; ConfigError if it cannot run there."""
    if precision not in AMP_PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(AMP_PRECISIONS)}, "
                          f"got {precision!r}")
    if precision == "float16" and not device.startswith("cuda"):
        raise ConfigError(f"float16 autocast needs CUDA (device is {device}); "
                          f"use bfloat16 on a CPU")
    return AMP_PRECISIONS[precision]


class AutocastModel(nn.Module):
    """Runs ``module``'s forward under ``torch.autocast(device_type, dtype)``; the backward
    pass runs outside it, as PyTorch recommends. Attributes not found on the wrapper are
    looked up on ``module`` (``model.backbone`` keeps working)."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


def autocast_model(model: nn.Module, precision: Optional[str], device: str) -> nn.Module:
    """``model`` itself for float32 (``precision`` None or "float32"), else wrapped in
    :class:`AutocastModel` at that precision."""
    if precision in (None, "float32"):
        return model
    return AutocastModel(model, torch.device(device).type, amp_dtype(precision, device))


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
