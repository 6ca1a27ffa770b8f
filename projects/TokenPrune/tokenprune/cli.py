"""Shared plumbing of the ``python -m tokenprune.X`` tools: arguments, errors, models, files.

Every tool takes ``--config-file CFG`` and trailing ``key=value`` overrides like
``train_net.py``, reports bad input as one line (exit status 2), and writes its outputs
atomically so that an interrupted run leaves nothing that looks complete.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig

from .config import load_config
from .errors import InputError, TokenPruneError

__all__ = ["tool_parser", "run_tool", "load_tool_config", "build_eval_model", "make_output_dir",
           "atomic_write_text", "atomic_write_json"]

EXIT_BAD_INPUT = 2


def tool_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--config-file`` and trailing ``key=value`` overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides: key=value ... (LazyConfig syntax)")
    return parser


def run_tool(prog: str, main: Callable[[argparse.Namespace], Any],
             parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> Any:
    """Parse ``argv`` and run ``main``; a TokenPruneError becomes one line and exit 2."""
    args = parser.parse_args(argv)
    try:
        return main(args)
    except TokenPruneError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_INPUT)


def load_tool_config(args: argparse.Namespace) -> DictConfig:
    """The tool's config with its overrides, its test dataset checked or generated."""
    from .engine.train_loop import prepare_datasets

    cfg = load_config(args.config_file, args.opts)
    prepare_datasets(cfg)
    return cfg


def build_eval_model(cfg: DictConfig, device: Optional[str] = None) -> torch.nn.Module:
    """Instantiate the model in eval mode and load ``train.init_checkpoint`` if it is set.

    Without a checkpoint the weights are random (fine for FLOPs and latency).
    """
    from detectron2.checkpoint import DetectionCheckpointer

    from .engine.train_loop import build_model, verify_checkpoint

    if device:
        cfg.train.device = device
    model = build_model(cfg)
    ckpt = cfg.train.init_checkpoint
    if ckpt:
        verify_checkpoint(model, ckpt, strict=False)
        DetectionCheckpointer(model).load(ckpt)
    return model.eval()


def make_output_dir(path: str) -> str:
    """Create ``path`` (and parents) and check that it is writable."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise InputError(f"cannot write to output folder {path}: {e.strerror or e}") from e
    return path


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
