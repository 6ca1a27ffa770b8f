"""Shared plumbing of the ``python -m tokenprune.X`` tools: arguments, errors, models, files.

Every tool takes ``--config-file CFG`` and trailing ``key=value`` overrides like
``train_net.py``, reports bad input as one line (exit status 2), and writes its outputs
atomically so that an interrupted run leaves nothing that looks complete.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from typing import Any, Callable, List, Optional, Sequence

import torch
from omegaconf import DictConfig

from .checkpoint import load_model
from .config import load_config
from .data.catalog import first_test_inputs
from .fileio import (atomic_write_bytes, atomic_write_json, atomic_write_text, figure_png,
                     make_output_dir)
from .errors import InputError, TokenPruneError

__all__ = ["tool_parser", "run_tool", "load_tool_config", "build_eval_model", "make_output_dir",
           "first_test_inputs", "figure_png", "atomic_write_text", "atomic_write_bytes",
           "atomic_write_json"]

EXIT_BAD_INPUT = 2


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: message``), exit status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_INPUT)


def tool_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--config-file`` and trailing ``key=value`` overrides."""
    parser = _OneLineErrorParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides: key=value ... (LazyConfig syntax)")
    return parser


def run_tool(prog: str, main: Callable[[argparse.Namespace], Any],
             parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> Any:
    """Parse ``argv`` and run ``main``; a TokenPruneError becomes one line and exit 2."""
    quiet_third_party_warnings()
    args = parser.parse_args(argv)
    if getattr(args, "opts", None) and args.opts[0] == "--":  # "--keep-ratios 0.7 -- k=v"
        args.opts = args.opts[1:]
    try:
        return main(args)
    except TokenPruneError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_INPUT)


def quiet_third_party_warnings() -> None:
    """Hide dependency deprecation notices that say nothing about the user's input, so that
    a bad input is reported as exactly one line."""
    import warnings

    for message in (".*pkg_resources is deprecated.*",
                    ".*Importing from timm.models.layers is deprecated.*",
                    ".*torch.meshgrid: in an upcoming release.*"):
        warnings.filterwarnings("ignore", message=message)


def load_tool_config(args: argparse.Namespace, need_data: bool = True,
                     splits: Sequence[str] = ("train", "test")) -> DictConfig:
    """The tool's config with its overrides, the datasets of ``splits`` checked or generated.

    ``need_data=False`` (tools that feed the model generated inputs, like the benchmark):
    the dataset names must be registered, but their files need not exist.
    """
    from detectron2.data import DatasetCatalog

    from .data import prepare_dataset
    from .data import dataset_names

    cfg = load_config(args.config_file, args.opts)
    for name in dataset_names(cfg, splits):
        if need_data or name not in DatasetCatalog:
            prepare_dataset(name)  # generates, checks files, or raises "not registered"
    return cfg


def build_eval_model(cfg: DictConfig, device: Optional[str] = None) -> torch.nn.Module:
    return load_model(cfg, device)


