"""Compiled inference for users: the Predictor's ``compile`` and ``train.compile`` of
``train_net.py --eval-only``.

:func:`compile_mode` checks the setting (a mode of
:data:`~tokenprune.modeling.compiled.COMPILE_MODES`, or True / False);
:func:`compiled_for_inference` compiles a model with
:func:`~tokenprune.modeling.compiled.compile_model` for the length of an evaluation. The
first call pays the compile; where inductor cannot run (no C++ compiler) the model runs
eagerly after one warning line.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Union

import torch.nn as nn
from omegaconf import DictConfig

from ..errors import ConfigError
from ..modeling.compiled import checked_compile_mode, compile_model, set_block_compile

__all__ = ["compile_mode", "train_compile_mode", "compiled_for_inference"]


def compile_mode(value: Union[bool, str], name: str = "compile") -> str:
    """The mode of :data:`COMPILE_MODES` that ``value`` names (True: "default", False:
    "none"); anything else is a ConfigError naming the setting ``name`` and the modes."""
    if isinstance(value, bool):
        return "default" if value else "none"
    try:
        return checked_compile_mode(value, name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def train_compile_mode(cfg: DictConfig) -> str:
    """``train.compile`` of ``cfg`` checked (:func:`compile_mode`); "none" if it has none."""
    return compile_mode(cfg.train.get("compile", "none"), "train.compile")


@contextmanager
def compiled_for_inference(model: nn.Module, mode: str, device: str) -> Iterator[nn.Module]:
    """Within the context, ``model`` compiled for inference in ``mode``
    (:func:`~tokenprune.modeling.compiled.compile_model`; ``model`` itself for "none" or
    when compiling is unavailable here). After it, ``model``'s PrunedViT blocks are eager
    again, so that FLOP counting (a ``torch.jit`` trace, which cannot trace compiled code)
    and training see the eager model."""
    try:
        yield compile_model(model, mode, device)
    finally:
        if mode != "none":
            set_block_compile(model, "none")
