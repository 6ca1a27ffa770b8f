"""Models and their weights: building a config's model, checking and loading checkpoints.

:class:`TokenPruneCheckpointer` is Detectron2's ``DetectionCheckpointer`` plus one rule:
relative-position tables (``*.rel_pos_h`` / ``*.rel_pos_w``, shape (2 * size - 1, head_dim))
whose length differs from the model's are linearly resized instead of skipped. This lets a
windowed ViTDet checkpoint (tables for 14x14 windows) initialise a model whose blocks use
global attention (SViT's setting), the same way ViTDet resizes the tables at run time.
:func:`load_model` is the one way the tools and the study build a model with its weights.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate

from .errors import CheckpointError
from .modeling.sparse_block import resize_rel_pos

__all__ = ["TokenPruneCheckpointer", "is_resizable_rel_pos", "build_model", "verify_checkpoint",
           "load_model"]


def is_resizable_rel_pos(key: str, saved: torch.Size, wanted: torch.Size) -> bool:
    """True for a relative-position table that differs from the model's only in length."""
    return (key.endswith(("rel_pos_h", "rel_pos_w")) and len(saved) == len(wanted) == 2
            and saved[1] == wanted[1])


class TokenPruneCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that resizes relative-position tables of a different length."""

    def _load_model(self, checkpoint: Dict[str, Any]):
        state = checkpoint["model"]
        own = self.model.state_dict()
        for key, value in list(state.items()):
            if key in own and isinstance(value, torch.Tensor) and value.shape != own[key].shape \
                    and is_resizable_rel_pos(key, value.shape, own[key].shape):
                self.logger.info(f"Resizing {key} from {tuple(value.shape)} to "
                                 f"{tuple(own[key].shape)}")
                state[key] = resize_rel_pos(value.float(), own[key].shape[0]).to(value.dtype)
        return super()._load_model(checkpoint)


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """Instantiate ``cfg.model`` on ``cfg.train.device`` (random weights)."""
    model = instantiate(cfg.model)
    return model.to(cfg.train.device)


def verify_checkpoint(model: torch.nn.Module, path: str, *, strict: bool) -> List[str]:
    """Check that ``path`` exists and fits ``model``; return the model keys it does not set.

    Raises CheckpointError for a missing or unreadable file, a file none of whose tensors
    fits the model, or (``strict``, e.g. for evaluation) any model tensor that the file lacks
    or holds in another shape. Without ``strict`` (initialising a fine-tune), tensors of
    another shape are skipped like Detectron2 does (e.g. heads for another class count) and
    returned with the missing ones. Relative-position tables of another length are resized
    on loading (:class:`TokenPruneCheckpointer`). Remote checkpoints (``scheme://``) are left
    to Detectron2's checkpointer.
    """
    if not path or "://" in path:
        return []
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    checkpointer = TokenPruneCheckpointer(model)
    checkpointer._parsed_url_during_load = urlparse(path)  # _load_file expects load()'s state
    try:
        loaded = checkpointer._load_file(path)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    state = loaded.get("model", loaded)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds no model state dict")
    own = model.state_dict()

    def fits(k: str) -> bool:
        saved = getattr(state[k], "shape", None)
        return saved is None or tuple(saved) == tuple(own[k].shape) or \
            is_resizable_rel_pos(k, saved, own[k].shape)

    shared = [k for k in state if k in own]
    wrong = [k for k in shared if not fits(k)]
    if len(wrong) == len(shared):
        raise CheckpointError(f"checkpoint {path} does not match the model: none of its "
                              f"{len(state)} tensors fits {type(model).__name__}")
    missing = [k for k in own if k not in state]
    if strict and (wrong or missing):
        example = (f"{wrong[0]} {tuple(state[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}"
                   if wrong else f"{missing[0]} is missing")
        raise CheckpointError(f"checkpoint {path} does not match the model: {len(wrong)} tensors "
                              f"differ in shape and {len(missing)} are missing, e.g. {example}")
    return wrong + missing


def load_model(cfg: DictConfig, device: Optional[str] = None) -> torch.nn.Module:
    """The config's model in eval mode, with ``train.init_checkpoint`` loaded if it is set.

    ``device`` overrides ``cfg.train.device``. Without a checkpoint the weights are random
    (fine for FLOPs and latency).
    """
    if device:
        cfg.train.device = device
    model = build_model(cfg)
    ckpt = cfg.train.init_checkpoint
    if ckpt:
        verify_checkpoint(model, ckpt, strict=False)
        TokenPruneCheckpointer(model).load(ckpt)
    return model.eval()
