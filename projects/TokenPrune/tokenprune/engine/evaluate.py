"""Evaluating a model for a study or a sweep (the ablation, the trade-off): the configured
evaluators' results with the mean kept fraction of the tokens
(:class:`~.eval_pruning.KeepRatioMeter`), quietly."""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Dict, Iterator, Tuple

import torch
from omegaconf import DictConfig

from .eval_pruning import KeepRatioMeter, mean_keep_ratio
from .train_loop import do_test

__all__ = ["result_metric", "evaluate_with_keep", "warnings_quiet"]


def result_metric(results: Dict[str, Any], task: str, key: str = "AP") -> float:
    """``results[task][key]`` of Detectron2's evaluators (percent), NaN when absent."""
    value = results.get(task, {}).get(key)
    return float(value) if value is not None else float("nan")


def evaluate_with_keep(cfg: DictConfig, model: torch.nn.Module,
                       log_path: str) -> Tuple[Dict[str, Any], float]:
    """(:func:`do_test` results, mean kept fraction over pruned blocks and images, 1.0 for a
    dense model) of one pass over the test set, what the evaluators print (pycocotools)
    appended to ``log_path``. ``do_test`` counts no FLOPs here (``train.flops_num_images``
    set to 0): the callers count their own."""
    cfg.train.flops_num_images = 0
    meter = KeepRatioMeter(model)
    try:
        with open(log_path, "a") as log, contextlib.redirect_stdout(log), torch.no_grad():
            results = do_test(cfg, model)
    finally:
        keep = mean_keep_ratio(meter.close())
    return results, keep


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    """Dependency warnings and torch.fx tracing notes off (the log stays readable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
        yield
