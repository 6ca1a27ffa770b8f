"""Learning-rate factors for fine-tuning a pretrained model that gained new modules."""
from __future__ import annotations

from functools import partial
from typing import Sequence

__all__ = ["new_module_lr_factor", "frozen_vit_lr_factor", "gate_lr", "freeze_vit",
           "train_gates_only"]


def new_module_lr_factor(name: str, *, modules: Sequence[str], factor: float,
                         rest: float = 1.0) -> float:
    """``lr_factor_func`` for Detectron2's ``get_default_optimizer_params``.

    Args:
        name: a parameter's full name, e.g. ``"backbone.net.gates.3.fc1.weight"``.
        modules: name components of the new modules, e.g. ``("gates",)``.
        factor: learning-rate multiplier for their parameters.
        rest: multiplier for every other parameter (0 freezes them: with a zero rate AdamW
            changes nothing, weight decay included).
    Returns:
        ``factor`` if a component of ``name`` is in ``modules``, else ``rest``. Freshly
        initialised gates need a larger rate than the pretrained weights around them.
    """
    return factor if set(name.split(".")) & set(modules) else rest


def frozen_vit_lr_factor(name: str, *, factor: float, vit: str = "backbone.net.") -> float:
    """``lr_factor_func``: the gates (pruning decoders) at ``factor``, every other parameter
    of the ViT (names starting with ``vit``) at 0, the rest of the model (neck, heads,
    guidance, FiLM) at 1."""
    rest = 0.0 if name.startswith(vit) else 1.0
    return new_module_lr_factor(name, modules=("gates",), factor=factor, rest=rest)


def gate_lr(optimizer, factor: float, rest: float = 1.0) -> None:
    """In place, on a LazyConfig optimizer node: the gates learn at ``factor`` x
    ``optimizer.lr``, every other parameter at ``rest`` x (0 freezes it)."""
    optimizer.params.lr_factor_func = partial(new_module_lr_factor, modules=("gates",),
                                              factor=factor, rest=rest)


def train_gates_only(optimizer, lr: float) -> None:
    """In place, on a LazyConfig optimizer node: the gates learn at ``lr``, every other
    parameter is frozen."""
    optimizer.lr = lr
    gate_lr(optimizer, factor=1.0, rest=0.0)


def freeze_vit(optimizer, gate_factor: float) -> None:
    """In place, on a LazyConfig optimizer node: the ViT's own weights frozen, its gates at
    ``gate_factor`` x ``optimizer.lr``, the neck and heads at ``optimizer.lr``."""
    optimizer.params.lr_factor_func = partial(frozen_vit_lr_factor, factor=gate_factor)
