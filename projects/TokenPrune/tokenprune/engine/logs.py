"""Plain-text log files. Detectron2's ``default_setup`` logs the config file highlighted by
pygments (its ``_highlight``: ANSI colour codes inside the message itself), and on a
terminal termcolor colours some messages (the dataset's class histogram, the checkpoint's
missing keys); its file handler writes messages as they are, so ``log.txt`` held the codes.
The console keeps its colours; the files get :class:`PlainFormatter`.
"""
from __future__ import annotations

import logging
import re
import sys

__all__ = ["PlainFormatter", "default_setup_plain"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class PlainFormatter(logging.Formatter):
    """Detectron2's file format (``[time] logger LEVEL: message``) without ANSI codes."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s] %(name)s %(levelname)s: %(message)s",
                         datefmt="%m/%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


def default_setup_plain(cfg, args) -> None:
    """Detectron2's ``default_setup`` (logging, environment, config.yaml, seeds) with plain
    log files: the loggers it sets up are set up first, with the same arguments (Detectron2's
    ``setup_logger`` is cached on them, so ``default_setup`` reuses these handlers), and
    their file handlers given :class:`PlainFormatter`."""
    from detectron2.engine import default_setup
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    output_dir, rank = cfg.train.output_dir, comm.get_rank()
    # the very calls of default_setup (Detectron2 02b5c4e2), so that the cache matches
    loggers = [setup_logger(output_dir, distributed_rank=rank, name="fvcore"),
               setup_logger(output_dir, distributed_rank=rank)]
    for logger in loggers:
        for handler in logger.handlers:
            if (isinstance(handler, logging.StreamHandler)
                    and handler.stream not in (sys.stdout, sys.stderr)):
                handler.setFormatter(PlainFormatter())
    default_setup(cfg, args)
