"""Evaluating a model for a study or a sweep (the ablation, the trade-off): the configured
evaluators' results with the mean kept fraction of the tokens
(:class:`~.eval_pruning.KeepRatioMeter`, measured by the evaluation pass), quietly."""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Dict, Iterator, Tuple

import torch
from omegaconf import DictConfig

from .eval_pruning import mean_keep_ratio
from .train_loop import test_with_keep_ratios

__all__ = ["result_metric", "evaluate_with_keep", "warnings_quiet"]


def result_metric(results: Dict[str, Any], task: str, key: str = "AP") -> float:
    """``results[task][key]`` of Detectron2's evaluators (percent), NaN when absent."""
    value = results.get(task, {}).get(key)
    return float(value) if value is not None else float("nan")


def evaluate_with_keep(cfg: DictConfig, model: torch.nn.Module, log_path: str
                       ) -> Tuple[Dict[str, Any], float, Dict[int, float]]:
    """(:func:`do_test` results, mean kept fraction over pruned blocks and images (1.0 for a
    dense model), {pruned block: its mean kept fraction over the images}) of one pass over
    the test set, what the evaluators print (pycocotools) appended to ``log_path``. No FLOPs
    are counted in the pass: the callers count their own."""
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), torch.no_grad():
        results, ratios = test_with_keep_ratios(cfg, model, flops_images=0)
    per_block = {int(i): float(r.mean()) for i, r in ratios.items()}
    return results, mean_keep_ratio(ratios), per_block


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    """Dependency warnings and torch.fx tracing notes off (the log stays readable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
        yield
