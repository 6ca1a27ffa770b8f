"""The ablation study: SViT's four findings and the baseline token reducers, as one table.

    python -m tokenprune.tools.ablation --output DIR [--scale quick|full] [--seeds N]
                                        [--dense-checkpoint FILE]

Rows and recipe: :mod:`tokenprune.study.variants`; the resumable run:
:mod:`tokenprune.study.runner`; ``table.md``, ``results.csv``, ``ap_vs_flops.png``:
:mod:`tokenprune.study.report`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

from ..study.runner import run_ablation
from ..study.variants import SCALES
from .common import run_tool, tool_parser

__all__ = ["build_parser", "main", "cli"]

PROG = "python -m tokenprune.tools.ablation"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__.split("\n\n")[0], config=False)
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--scale", default="quick", choices=sorted(SCALES),
                        help="quick: minutes, a smoke test; full: about an hour on 2 CPU cores, "
                             "real numbers")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="seeds for the rows marked all_seeds (dense, dense_ft, random, SViT "
                             "and its controls, ToMe; default: 1 quick, 2 full)")
    parser.add_argument("--dense-checkpoint", default=None, metavar="FILE",
                        help="use this dense model (trained with the scale's dense config "
                             "on the mixed-colour shapes) for seed 0 instead of training one")
    parser.add_argument("--dense-config", default=None, metavar="FILE",
                        help="default: the project's configs/Synthetic/"
                             "mask_rcnn_vitdet_t_dense.py")
    parser.add_argument("--svit-config", default=None, metavar="FILE",
                        help="default: the project's configs/Synthetic/"
                             "mask_rcnn_vitdet_t_svit.py")
    return parser


def main(args: argparse.Namespace) -> Dict[str, Any]:
    return run_ablation(args.output, args.scale, args.seeds, args.dense_checkpoint,
                        args.dense_config, args.svit_config)


def cli(argv: Optional[Sequence[str]] = None) -> Any:
    return run_tool(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
