"""Detectron2's event writers, the console line also showing ``keep_ratio/mean``.

Detectron2's ``CommonMetricPrinter`` prints the losses (``loss_keep_ratio`` among them), time
and learning rate, not the kept fraction; :class:`KeepRatioPrinter` appends it.
"""
from __future__ import annotations

import logging
from typing import List

from detectron2.engine import default_writers
from detectron2.utils.events import CommonMetricPrinter, EventWriter, get_event_storage

__all__ = ["KeepRatioPrinter", "training_writers"]


class _Suffix(logging.LoggerAdapter):
    """A logger that appends ``extra["suffix"]`` to every message."""

    def process(self, msg, kwargs):
        return f"{msg}{self.extra['suffix']}", kwargs


class KeepRatioPrinter(CommonMetricPrinter):
    """``CommonMetricPrinter`` whose line ends with ``keep_ratio/mean`` (median over the
    printer's window) while the storage holds it (a pruned model)."""

    def __init__(self, max_iter: int, window_size: int = 20):
        super().__init__(max_iter, window_size)
        self.logger = _Suffix(self.logger, {"suffix": ""})

    def write(self) -> None:
        storage = get_event_storage()
        history = storage.histories().get("keep_ratio/mean")
        self.logger.extra["suffix"] = "" if history is None else (
            f"  keep_ratio/mean: "
            f"{history.median(storage.count_samples('keep_ratio/mean', self._window_size)):.4g}")
        super().write()


def training_writers(output_dir: str, max_iter: int) -> List[EventWriter]:
    """Detectron2's ``default_writers`` (console, metrics.json, TensorBoard), the console
    one a :class:`KeepRatioPrinter`."""
    return [KeepRatioPrinter(max_iter) if isinstance(w, CommonMetricPrinter) else w
            for w in default_writers(output_dir, max_iter)]
