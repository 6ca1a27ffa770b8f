"""A Mask R-CNN meta-architecture that trains and reports a token-pruned backbone."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Dict, Iterator, List, Optional

import torch.nn as nn
from torch import Tensor

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from .pruned_vit import PrunedViT

__all__ = ["TokenPruningRCNN", "find_pruned_vit"]


def find_pruned_vit(model: nn.Module) -> Optional[PrunedViT]:
    """The PrunedViT inside ``model`` (wrapped or not: a wrapper's modules include the
    wrapped model's), or None for a dense model."""
    return next((m for m in model.modules() if isinstance(m, PrunedViT)), None)


@META_ARCH_REGISTRY.register()
class TokenPruningRCNN(GeneralizedRCNN):
    """Detectron2's GeneralizedRCNN, plus:

    * ``loss_keep_ratio`` from the PrunedViT in the loss dict during training;
    * an optional ``guidance`` module: ``guidance(batched_inputs) -> (B, D)`` embeddings
      handed to the backbone's gates (VLTP's task / language guidance).
    """

    def __init__(self, *, guidance: Optional[nn.Module] = None, **kwargs):
        super().__init__(**kwargs)
        self.guidance = guidance
        self.current_guidance: Optional[Tensor] = None

    @property
    def pruned_vit(self) -> Optional[PrunedViT]:
        """The PrunedViT in the backbone (looked up, not stored: a stored reference would
        register its parameters a second time)."""
        return find_pruned_vit(self.backbone)

    def forward(self, batched_inputs: List[Dict]):
        with self._guidance_scope(batched_inputs):
            out = super().forward(batched_inputs)
        vit = self.pruned_vit
        if self.training and vit is not None:
            loss = vit.last_keep_ratio_loss
            if loss is not None:
                out["loss_keep_ratio"] = loss
        return out

    def inference(self, batched_inputs: List[Dict], *args, **kwargs):
        with self._guidance_scope(batched_inputs):
            return super().inference(batched_inputs, *args, **kwargs)

    @contextmanager
    def _guidance_scope(self, batched_inputs: List[Dict]) -> Iterator[None]:
        """Computes the (B, D) guidance once per forward: ``current_guidance`` and the gates'."""
        if self.guidance is None or self.current_guidance is not None:
            yield
            return
        self.current_guidance = self.guidance(batched_inputs)
        vit = self.pruned_vit
        try:
            with vit.guided(self.current_guidance) if vit is not None else nullcontext():
                yield
        finally:
            self.current_guidance = None
