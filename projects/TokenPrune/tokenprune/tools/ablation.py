"""The studies: SViT's findings and the baselines (``--study svit``), or VLTP's claims on the
task scenes (``--study vltp``), paired over seeds.

    python -m tokenprune.tools.ablation --output DIR [--study svit|vltp]
                                        [--scale quick|pilot|full] [--jobs N]
                                        [--dense-checkpoint FILE] [--pretrained FILE]

SViT: rows and recipe :mod:`tokenprune.study.variants`, the run :mod:`tokenprune.study.runner`,
the report :mod:`tokenprune.study.report`. VLTP: :mod:`tokenprune.study.vltp`,
:mod:`tokenprune.study.vltp_runner`, :mod:`tokenprune.study.vltp_report`. Statistics and
verdicts, shared: :mod:`tokenprune.study.statistics`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

from ..errors import InputError
from ..study.runner import run_ablation
from ..study.variants import SCALES
from ..study.vltp_runner import run_vltp_study
from .common import run_tool, tool_parser

__all__ = ["build_parser", "main", "cli"]

PROG = "python -m tokenprune.tools.ablation"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__.split("\n\n")[0], config=False)
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--study", default="svit", choices=("svit", "vltp"),
                        help="svit: SViT's findings and the baselines (docs/study.md); vltp: "
                             "VLTP's claims on the task scenes, frozen ViT and whole model "
                             "(docs/study.md, 'The VLTP study')")
    parser.add_argument("--scale", default="quick", choices=sorted(SCALES),
                        help="quick: a smoke test (minutes); pilot: the recipe's own data and "
                             "seeds; full: the reported run, fresh data, 6 seeds for svit, 5 "
                             "for vltp (about 1.5 h on 2 CPU cores with --jobs 2)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="worker processes of one thread each for the fine-tune seeds "
                             "(one per CPU core; default 1)")
    parser.add_argument("--dense-checkpoint", default=None, metavar="FILE",
                        help="use this dense model (trained with the study's dense config on "
                             "the scale's data; for vltp the unpruned task model) instead of "
                             "training one")
    parser.add_argument("--worker-units", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dense-config", default=None, metavar="FILE",
                        help="default: the project's configs/Study/"
                             "mask_rcnn_vit_study_dense.py (svit) or "
                             "mask_rcnn_vit_study_task_dense.py (vltp)")
    parser.add_argument("--svit-config", default=None, metavar="FILE",
                        help="default: the project's configs/Study/"
                             "mask_rcnn_vit_study_svit.py (svit only)")
    parser.add_argument("--pretrained", default=None, metavar="FILE",
                        help="vltp only: the detector the unpruned task model starts from "
                             "(the pretraining is the same at every scale, so a pilot's "
                             "runs/pretrain/model_final.pth serves), instead of training it")
    parser.add_argument("--vltp-config", default=None, metavar="FILE",
                        help="default: the project's configs/Study/"
                             "mask_rcnn_vit_study_vltp.py (vltp only)")
    return parser


def main(args: argparse.Namespace) -> Dict[str, Any]:
    units = args.worker_units.split(",") if args.worker_units is not None else None
    others = ("--svit-config",) if args.study == "vltp" else ("--vltp-config", "--pretrained")
    for wrong in others:
        if getattr(args, wrong[2:].replace("-", "_")) is not None:
            raise InputError(f"{wrong} does not apply to --study {args.study}")
    if args.study == "vltp":
        return run_vltp_study(args.output, args.scale, args.jobs, args.dense_checkpoint,
                              args.dense_config, args.vltp_config, args.pretrained,
                              worker_units=units)
    seeds = [int(s) for s in units] if units is not None else None
    return run_ablation(args.output, args.scale, args.jobs, args.dense_checkpoint,
                        args.dense_config, args.svit_config, worker_seeds=seeds)


def cli(argv: Optional[Sequence[str]] = None) -> Any:
    return run_tool(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
