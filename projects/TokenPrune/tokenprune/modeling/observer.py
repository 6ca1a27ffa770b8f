"""What a :class:`~.pruned_vit.PrunedViT` hands its inference decisions and pruned blocks
to (:meth:`PrunedViT.observed`): FLOP counting overrides it."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

from torch import Tensor

__all__ = ["PruningObserver"]


class PruningObserver:
    """What :meth:`PrunedViT.observed` hands the inference path of the pruned blocks; this
    base class changes nothing. FLOP counting (:mod:`tokenprune.analysis.flops`) overrides
    it to trace the decisions as constants and to scope the gathered blocks.
    """

    def decide(self, block: int, decide: Callable[[], Tensor], log_probs: Tensor) -> Tensor:
        """The (B, N) bool keep mask of ``block``: ``decide()`` on the gate's ``log_probs``."""
        return decide()

    def before_dense_block(self, block: int, x: Tensor) -> Tensor:
        """The input of ``block`` when its decision keeps every token (it runs densely)."""
        return x

    def block_scope(self, block: int) -> ContextManager:
        """A context around the functional execution of ``block`` (gathered, masked, or
        dense through the fused kernel; not around Detectron2's own ``Block.forward``)."""
        return nullcontext()
