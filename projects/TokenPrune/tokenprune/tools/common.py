"""The shape every command shares: ``tool_parser`` (``--config-file`` and trailing
``key=value`` overrides, like ``train_net.py``, and the model options each command names
from :data:`SHARED_OPTIONS`), ``run_tool`` (a bad input is one line, exit status 2) and
``load_tool_config`` (the config with its overrides and the shared options applied).

A command module holds ``PROG``, ``build_parser()``, ``main(args)`` and ``cli(argv=None)``
(its console-script entry point); its work is library code below it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from omegaconf import DictConfig

from ..config import apply_overrides, load_config
from ..engine.predictor import CONFIDENCE_THRESHOLD
from ..errors import InputError, TokenPruneError
from .warnings_filter import (VERBOSE_FLAG, hide_third_party_warnings, show_third_party_warnings,
                              verbose_among_overrides)

__all__ = ["EXIT_BAD_INPUT", "SHARED_OPTIONS", "OneLineErrorParser", "fail", "tool_parser",
           "add_shared_option", "run_tool", "load_tool_config"]

EXIT_BAD_INPUT = 2

# The options every command that has the setting spells the same way: (flag, argparse
# keywords); ``tool_parser(..., options=...)`` names those that apply to a command.
SHARED_OPTIONS: Dict[str, Dict[str, Any]] = {
    "--checkpoint": dict(
        default=None, metavar="FILE",
        help="model weights; sets train.init_checkpoint, over any override (default: the "
             "config's train.init_checkpoint)"),
    "--keep-ratio": dict(
        type=float, nargs="+", default=None, metavar="R",
        help="force a top-k keep ratio in (0, 1]: one number for every pruned block, or one "
             "per pruned block (default: the gates decide per image)"),
    "--confidence-threshold": dict(
        type=float, default=CONFIDENCE_THRESHOLD, metavar="T",
        help="minimum score of the detections kept, in [0, 1]"),
    "--device": dict(
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda[:N]; cuda when this machine has it"),
    "--precision": dict(
        choices=["float32", "bfloat16", "float16"], default="float32",
        help="inference precision: autocast to bfloat16 (CPU or GPU) or float16 (GPU only)"),
    "--batch-size": dict(type=int, default=1, metavar="N", help="images per forward"),
    "--allow-untrained-gates": dict(
        action="store_true",
        help="run a pruned model whose gates (SViT) or pruning decoders (VLTP) the checkpoint "
             "lacks (they prune at random), or random weights without a checkpoint (default: "
             "refused)"),
}


def fail(prog: str, message: str) -> None:
    """Print ``prog: error: message`` as one line and exit with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: message``), exit status 2."""

    def error(self, message: str):
        if "invalid" in message and "=" in message:  # "--keep-ratio 0.5 key=value"
            message += " (put config overrides after `--`)"
        fail(self.prog, message)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """Every optional option's default in its help ("none" for None), unless the help
    says it in words; the description as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or not action.option_strings:
            return text
        if action.default is None:
            return f"{text} (default: none)"
        return super()._get_help_string(action)


def tool_parser(prog: str, description: str, config: bool = True,
                options: Sequence[str] = ()) -> argparse.ArgumentParser:
    """An argument parser; with ``config``, ``--config-file`` and trailing overrides; the
    shared ``options`` (flags of :data:`SHARED_OPTIONS`) as they are."""
    parser = OneLineErrorParser(prog=prog, description=description,
                                formatter_class=HelpFormatter)
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="also show the dependencies' warnings (hidden by default)")
    for flag in options:
        add_shared_option(parser, flag)
    if config:
        parser.add_argument("--config-file", required=True, metavar="FILE",
                            help="LazyConfig file")
        parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                            help="config overrides: key=value ... (LazyConfig syntax; after "
                                 "`--` when the option before takes several values)")
    return parser


def add_shared_option(parser: argparse.ArgumentParser, flag: str, **changes: Any) -> None:
    """Add the shared option ``flag``, with ``changes`` to its argparse keywords (e.g. the
    benchmark's several ``--batch-size`` values)."""
    parser.add_argument(flag, **{**SHARED_OPTIONS[flag], **changes})


def run_tool(prog: str, main: Callable[[argparse.Namespace], Any],
             parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> Any:
    """Parse ``argv`` and run ``main``; a TokenPruneError becomes one line and exit 2.
    The dependencies' warnings are hidden unless ``--verbose`` is given."""
    args = parser.parse_args(argv)
    verbose_among_overrides(args)
    if args.verbose:
        show_third_party_warnings()
    else:
        hide_third_party_warnings()
    if getattr(args, "opts", None) and args.opts[0] == "--":  # "--keep-ratio 0.7 -- k=v"
        args.opts = args.opts[1:]
    for path in getattr(args, "input", None) or ():
        if "=" in path and not os.path.exists(path):
            fail(prog, f"input not found: {path} (a config override? --input takes every "
                       "word up to the next option: put overrides after `--`, as in "
                       "--input IMG ... -- key=value)")
    try:
        return main(args)
    except TokenPruneError as e:
        fail(prog, str(e))


def load_tool_config(args: argparse.Namespace, need_data: bool = True,
                     splits: Sequence[str] = ("train", "test"),
                     force_keep_ratio: bool = True) -> DictConfig:
    """The tool's config with its overrides, ``--checkpoint`` (``train.init_checkpoint``)
    and, with ``force_keep_ratio``, ``--keep-ratio`` (the model's ``fixed_keep_ratio``)
    where the command has them; the datasets of ``splits`` checked or generated.

    ``need_data=False`` (tools that feed the model generated inputs, like the benchmark):
    the dataset names must be registered, but their files need not exist.
    """
    from detectron2.data import DatasetCatalog

    from ..data import dataset_names, prepare_dataset

    cfg = load_config(args.config_file, args.opts)
    if getattr(args, "checkpoint", None) is not None:
        cfg.train.init_checkpoint = args.checkpoint
    ratios = getattr(args, "keep_ratio", None)
    if force_keep_ratio and ratios:
        _force_keep_ratio(cfg, ratios)
    for name in dataset_names(cfg, splits):
        if need_data or name not in DatasetCatalog:
            prepare_dataset(name)  # generates, checks files, or raises "not registered"
    return cfg


def _force_keep_ratio(cfg: DictConfig, ratios: Sequence[float]) -> None:
    """``model.backbone.net.fixed_keep_ratio``: one ratio, or one per pruned block."""
    for r in ratios:
        if not 0.0 < r <= 1.0:
            raise InputError(f"keep ratio {r:g} is outside (0, 1]")
    value = ratios[0] if len(ratios) == 1 else f"[{','.join(map(repr, ratios))}]"
    try:
        apply_overrides(cfg, [f"model.backbone.net.fixed_keep_ratio={value}"])
    except TokenPruneError as e:
        raise InputError(f"--keep-ratio needs a token-pruned model: {e}") from None
