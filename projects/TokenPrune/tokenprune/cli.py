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

from .config import load_config
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


def tool_parser(prog: str, description: str, precision: bool = False) -> argparse.ArgumentParser:
    """An argument parser with ``--config-file`` and trailing ``key=value`` overrides, and
    (``precision=True``, for tools that pass ``args.precision`` to :func:`build_eval_model`)
    ``--precision``."""
    parser = _OneLineErrorParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig file")
    if precision:
        parser.add_argument("--precision", choices=["float32", "bfloat16", "float16"],
                            default="float32",
                            help="inference precision: autocast to bfloat16 (CPU or GPU) or "
                                 "float16 (GPU only); default float32")
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
                    ".*torch.meshgrid: in an upcoming release.*",
                    ".*`torch.jit.script` is deprecated.*"):
        warnings.filterwarnings("ignore", message=message)


def load_tool_config(args: argparse.Namespace, need_data: bool = True,
                     splits: Sequence[str] = ("train", "test")) -> DictConfig:
    """The tool's config with its overrides, the datasets of ``splits`` checked or generated.

    ``need_data=False`` (tools that feed the model generated inputs, like the benchmark):
    the dataset names must be registered, but their files need not exist.
    """
    from detectron2.data import DatasetCatalog

    from .data import prepare_dataset
    from .engine.train_loop import dataset_names

    cfg = load_config(args.config_file, args.opts)
    for name in dataset_names(cfg, splits):
        if need_data or name not in DatasetCatalog:
            prepare_dataset(name)  # generates, checks files, or raises "not registered"
    return cfg


def build_eval_model(cfg: DictConfig, device: Optional[str] = None,
                     precision: Optional[str] = None) -> torch.nn.Module:
    """Instantiate the model in eval mode and load ``train.init_checkpoint`` if it is set.

    Without a checkpoint the weights are random (fine for FLOPs and latency).
    ``precision`` ("bfloat16", "float16"; None or "float32": off) runs the forward pass
    under autocast (:class:`tokenprune.engine.AutocastModel`, which forwards attribute
    look-ups to the model).
    """
    from .engine import autocast_model
    from .engine.train_loop import build_model, verify_checkpoint

    if device:
        cfg.train.device = device
    model = build_model(cfg)
    verify_checkpoint(model, cfg.train.init_checkpoint, strict=False)  # loads it, if set
    return autocast_model(model.eval(), precision, cfg.train.device).eval()


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
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 -> the usual permissions of a new file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def first_test_inputs(cfg: DictConfig, num: int) -> List[dict]:
    """The first ``num`` mapped inputs of the config's test loader (Detectron2 input dicts)."""
    from detectron2.config import instantiate

    inputs: List[dict] = []
    for batch in instantiate(cfg.dataloader.test):
        inputs.extend(batch)
        if len(inputs) >= num:
            break
    if not inputs:
        raise InputError(f"the test dataset {cfg.dataloader.test.dataset.names} has no images")
    return inputs[:num]


def figure_png(fig, dpi: Optional[int] = None) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
