"""Checkpoint loading for token-pruned models.

:class:`TokenPruneCheckpointer` is Detectron2's ``DetectionCheckpointer`` plus one rule:
relative-position tables (``*.rel_pos_h`` / ``*.rel_pos_w``, shape (2 * size - 1, head_dim))
whose length differs from the model's are linearly resized instead of skipped. This lets a
windowed ViTDet checkpoint (tables for 14x14 windows) initialise a model whose blocks use
global attention (SViT's setting), the same way ViTDet resizes the tables at run time.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["TokenPruneCheckpointer", "is_resizable_rel_pos"]


def is_resizable_rel_pos(key: str, saved: torch.Size, wanted: torch.Size) -> bool:
    """True for a relative-position table that differs from the model's only in length."""
    return (key.endswith(("rel_pos_h", "rel_pos_w")) and len(saved) == len(wanted) == 2
            and saved[1] == wanted[1])


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) -> (length, C) by linear interpolation along L."""
    return F.interpolate(table.t()[None].float(), size=length, mode="linear")[0].t().to(table.dtype)


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
                state[key] = resize_rel_pos(value, own[key].shape[0])
        return super()._load_model(checkpoint)
