"""The shape every command shares: ``tool_parser`` (``--config-file`` and trailing
``key=value`` overrides, like ``train_net.py``), ``run_tool`` (a bad input is one line,
exit status 2) and ``load_tool_config``.

A command module holds ``PROG``, ``build_parser()``, ``main(args)`` and ``cli(argv=None)``
(its console-script entry point); its work is library code below it.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig

from ..config import load_config
from ..errors import TokenPruneError
from .warnings_filter import (VERBOSE_FLAG, hide_third_party_warnings, show_third_party_warnings,
                              verbose_among_overrides)

__all__ = ["EXIT_BAD_INPUT", "OneLineErrorParser", "fail", "tool_parser", "run_tool",
           "load_tool_config"]

EXIT_BAD_INPUT = 2


def fail(prog: str, message: str) -> None:
    """Print ``prog: error: message`` as one line and exit with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: message``), exit status 2."""

    def error(self, message: str):
        fail(self.prog, message)


def tool_parser(prog: str, description: str, config: bool = True,
                precision: bool = False) -> argparse.ArgumentParser:
    """An argument parser; with ``config``, ``--config-file`` and trailing overrides; with
    ``precision`` (tools that pass ``args.precision`` to
    :func:`~tokenprune.checkpoint.load_model`), ``--precision``."""
    parser = OneLineErrorParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="also show the dependencies' warnings (hidden by default)")
    if precision:
        parser.add_argument("--precision", choices=["float32", "bfloat16", "float16"],
                            default="float32",
                            help="inference precision: autocast to bfloat16 (CPU or GPU) or "
                                 "float16 (GPU only); default float32")
    if config:
        parser.add_argument("--config-file", required=True, metavar="FILE",
                            help="LazyConfig file")
        parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                            help="config overrides: key=value ... (LazyConfig syntax)")
    return parser


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
    if getattr(args, "opts", None) and args.opts[0] == "--":  # "--keep-ratios 0.7 -- k=v"
        args.opts = args.opts[1:]
    try:
        return main(args)
    except TokenPruneError as e:
        fail(prog, str(e))


def load_tool_config(args: argparse.Namespace, need_data: bool = True,
                     splits: Sequence[str] = ("train", "test")) -> DictConfig:
    """The tool's config with its overrides, the datasets of ``splits`` checked or generated.

    ``need_data=False`` (tools that feed the model generated inputs, like the benchmark):
    the dataset names must be registered, but their files need not exist.
    """
    from detectron2.data import DatasetCatalog

    from ..data import dataset_names, prepare_dataset

    cfg = load_config(args.config_file, args.opts)
    for name in dataset_names(cfg, splits):
        if need_data or name not in DatasetCatalog:
            prepare_dataset(name)  # generates, checks files, or raises "not registered"
    return cfg
