"""Autocast of a model's forward pass: ``float32`` (off), ``bfloat16`` (CPU or CUDA) or
``float16`` (CUDA only), for training (:mod:`tokenprune.engine.amp`) and inference (the
tools' ``--precision``, :func:`tokenprune.checkpoint.load_model`)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..errors import ConfigError

__all__ = ["AMP_PRECISIONS", "AutocastModel", "amp_dtype", "autocast_model", "unwrap_model"]

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


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside its wrappers (:class:`AutocastModel`, DistributedDataParallel,
    DataParallel, in any nesting); ``model`` itself when it is not wrapped."""
    while isinstance(model, (AutocastModel, nn.parallel.DistributedDataParallel,
                             nn.DataParallel)):
        model = model.module
    return model
