"""Evaluating a model for a study or a sweep (the ablation, the trade-off): the configured
evaluators' results with the mean kept fraction of the tokens, quietly."""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Dict, Iterator, List, Tuple

import torch
from omegaconf import DictConfig

from ..modeling.meta_arch import find_pruned_vit
from .train_loop import do_test

__all__ = ["KeepRatioMeter", "result_metric", "evaluate_with_keep", "warnings_quiet"]


class KeepRatioMeter:
    """Mean kept fraction of the tokens over pruned blocks and images, while it is open
    (a forward hook on the model's PrunedViT; 1.0 for a dense model)."""

    def __init__(self, model: torch.nn.Module):
        self.values: List[float] = []
        self.vit = find_pruned_vit(model)
        self.handle = None if self.vit is None else self.vit.register_forward_hook(self._hook)

    def _hook(self, module, inputs, outputs) -> None:
        if module.last_keep_ratios:
            ratios = torch.stack([r.float() for r in module.last_keep_ratios.values()])
            self.values.extend(ratios.mean(dim=0).tolist())

    def close(self) -> float:
        """Remove the hook; the mean kept fraction seen (1.0 if none)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        return float(sum(self.values) / len(self.values)) if self.values else 1.0


def result_metric(results: Dict[str, Any], task: str, key: str = "AP") -> float:
    """``results[task][key]`` of Detectron2's evaluators (percent), NaN when absent."""
    value = results.get(task, {}).get(key)
    return float(value) if value is not None else float("nan")


def evaluate_with_keep(cfg: DictConfig, model: torch.nn.Module,
                       log_path: str) -> Tuple[Dict[str, Any], float]:
    """(:func:`do_test` results, mean kept fraction) of one pass over the test set, what
    the evaluators print (pycocotools) appended to ``log_path``."""
    meter = KeepRatioMeter(model)
    try:
        with open(log_path, "a") as log, contextlib.redirect_stdout(log), torch.no_grad():
            results = do_test(cfg, model)
    finally:
        keep = meter.close()
    return results, keep


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    """Dependency warnings and torch.fx tracing notes off (the log stays readable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
        yield
