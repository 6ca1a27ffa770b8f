"""How much an evaluated pruned model pruned: :class:`KeepRatioMeter` (the kept fraction of
each pruned block over the images of a test run; :func:`mean_keep_ratio` its one number for
the studies) and :func:`report_eval_pruning` (those
fractions and the fvcore GFLOPs on the first test images, to the console and to
Detectron2's EventStorage under the names of :mod:`.hooks`)."""
from __future__ import annotations

import logging
from typing import Dict, List

import torch
from torch import Tensor

from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..analysis import count_model_flops
from ..modeling.meta_arch import find_pruned_vit
from .hooks import flops_scalars, keep_ratio_scalars

__all__ = ["KeepRatioMeter", "mean_keep_ratio", "report_eval_pruning"]

logger = logging.getLogger("detectron2")


class KeepRatioMeter:
    """Collects, while open, each pruned block's kept fraction of every image the model's
    PrunedViT sees (a forward hook; nothing for a dense model)."""

    def __init__(self, model: torch.nn.Module):
        self._ratios: Dict[int, List[Tensor]] = {}
        vit = find_pruned_vit(model)
        self._handle = None if vit is None else vit.register_forward_hook(self._hook)

    def _hook(self, module, inputs, outputs) -> None:
        for i, r in module.last_keep_ratios.items():
            self._ratios.setdefault(i, []).append(r.detach().float().cpu())

    def close(self) -> Dict[int, Tensor]:
        """Stop collecting; {block index: (images,) kept fractions} of every process
        ({} for a dense model)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        mine = {i: torch.cat(rs) for i, rs in self._ratios.items()}
        parts = comm.all_gather(mine) if comm.get_world_size() > 1 else [mine]
        return {i: torch.cat([p[i] for p in parts if i in p]) for i in sorted(mine)}


def mean_keep_ratio(ratios: Dict[int, Tensor]) -> float:
    """``keep_ratio/mean`` of :meth:`KeepRatioMeter.close`'s fractions (the mean over pruned
    blocks of each block's mean over the images); 1.0 for a dense model (no blocks)."""
    return keep_ratio_scalars(ratios).get("keep_ratio/mean", 1.0)


def _active_storage():
    """The EventStorage of the running trainer (or of ``train_net.py --eval-only``), or None."""
    try:
        return get_event_storage()
    except (AssertionError, IndexError):  # no "with EventStorage(...)" (IndexError: python -O)
        return None


def report_eval_pruning(model: torch.nn.Module, ratios: Dict[int, Tensor],
                        flops_inputs: List[dict]) -> Dict[str, float]:
    """Log one line with the kept fractions ``ratios`` (from :meth:`KeepRatioMeter.close`)
    and the fvcore GFLOPs of ``model`` on ``flops_inputs`` (none counted if empty), pruned
    and with every token kept; put them in the active EventStorage, if any; return them
    (:func:`~.hooks.keep_ratio_scalars` and :func:`~.hooks.flops_scalars`)."""
    keep = keep_ratio_scalars(ratios)
    flops: Dict[str, float] = {}
    if flops_inputs:
        with torch.no_grad():
            flops = flops_scalars(count_model_flops(model, flops_inputs),
                                  count_model_flops(model, flops_inputs, keep_all=True))
    images = len(next(iter(ratios.values())))
    layers = ", ".join(f"{i}: {keep[f'keep_ratio/layer{i}']:.3f}" for i in sorted(ratios))
    line = (f"Pruning over {images} evaluated images: keep_ratio/mean "
            f"{keep['keep_ratio/mean']:.3f} (per block {layers})")
    if flops:
        line += (f"; on the first {len(flops_inputs)} test images backbone "
                 f"{flops['flops/backbone_gflops']:.3f} GFLOPs "
                 f"({flops['flops/backbone_ratio']:.3f} x every token kept), total "
                 f"{flops['flops/total_gflops']:.3f} GFLOPs")
    logger.info(line)
    storage = _active_storage()
    if storage is not None:  # the smoothing hints of KeepRatioHook and FlopsHook
        storage.put_scalars(**keep, smoothing_hint=True)
        storage.put_scalars(**flops, smoothing_hint=False)
    return {**keep, **flops}
