"""The SViT study: SViT's four findings and the baseline token reducers, paired over seeds.

    python -m tokenprune.tools.ablation --output DIR [--scale quick|pilot|full] [--jobs N]
                                        [--dense-checkpoint FILE]

Rows and recipe: :mod:`tokenprune.study.variants`; the resumable run:
:mod:`tokenprune.study.runner`; statistics and verdicts: :mod:`tokenprune.study.statistics`;
``table.md``, ``results.csv``, ``ap_vs_flops.png``: :mod:`tokenprune.study.report`.
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
                        help="quick: a smoke test (minutes); pilot: the recipe's own data and "
                             "seeds; full: the reported run, fresh data, 6 seeds (about 1.5 h "
                             "on 2 CPU cores with --jobs 2)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="worker processes of one thread each for the fine-tune seeds "
                             "(one per CPU core; default 1)")
    parser.add_argument("--dense-checkpoint", default=None, metavar="FILE",
                        help="use this dense model (trained with the study's dense config on "
                             "the scale's data) instead of training one")
    parser.add_argument("--worker-seeds", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dense-config", default=None, metavar="FILE",
                        help="default: the project's configs/Study/"
                             "mask_rcnn_vit_study_dense.py")
    parser.add_argument("--svit-config", default=None, metavar="FILE",
                        help="default: the project's configs/Study/"
                             "mask_rcnn_vit_study_svit.py")
    return parser


def main(args: argparse.Namespace) -> Dict[str, Any]:
    seeds = None
    if args.worker_seeds is not None:
        seeds = [int(s) for s in args.worker_seeds.split(",")]
    return run_ablation(args.output, args.scale, args.jobs, args.dense_checkpoint,
                        args.dense_config, args.svit_config, worker_seeds=seeds)


def cli(argv: Optional[Sequence[str]] = None) -> Any:
    return run_tool(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
