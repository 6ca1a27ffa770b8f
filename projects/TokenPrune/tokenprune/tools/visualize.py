"""Which tokens a pruned ViTDet keeps, block by block, and what it detects.

    python -m tokenprune.tools.visualize --config-file configs/Synthetic/mask_rcnn_vitdet_t_svit.py \\
        --input img1.png img2.jpg --output out/vis [--checkpoint FILE] \\
        [--allow-untrained-gates] [--confidence-threshold 0.5] [--keep-ratio 0.5] \\
        [--prompt "red shapes" "the largest object" | --task-id 0 2] [-- key=value ...]

One PNG per input image (:mod:`tokenprune.engine.visualize`): the detections and, per
pruned block, the image with the pruned token cells darkened. A pruned model's checkpoint
must hold its gates, and one must be set, unless ``--allow-untrained-gates``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional, Sequence

import torch

from ..checkpoint import check_device
from ..engine.predictor import Predictor, TestPreprocessing
from ..engine.visualize import VisualizeOptions, visualize
from ..errors import InputError
from ..fileio import make_output_dir
from .common import load_tool_config, run_tool, tool_parser

__all__ = ["build_parser", "main", "cli"]

PROG = "tokenprune.tools.visualize"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__.split("\n\n")[0],
                         options=("--checkpoint", "--allow-untrained-gates", "--keep-ratio",
                                  "--confidence-threshold", "--device", "--precision"))
    parser.add_argument("--input", nargs="+", required=True, metavar="IMG",
                        help="JPEG/PNG images (one output PNG each)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the PNGs")
    parser.add_argument("--prompt", nargs="+", default=None, metavar="TEXT",
                        help="input 'prompt' (task-guided models); several: one row each")
    parser.add_argument("--task-id", nargs="+", type=int, default=None, metavar="ID",
                        help="input 'task_id'; several: one row each")
    return parser


def main(args: argparse.Namespace) -> List[str]:
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise InputError(f"--confidence-threshold must lie in [0, 1], "
                         f"got {args.confidence_threshold:g}")
    options = VisualizeOptions(prompts=tuple(args.prompt or ()),
                               task_ids=tuple(args.task_id or ()))
    options.check()
    check_device(args.device, "--device")
    cfg = load_tool_config(args, splits=("test",))  # its metadata names the classes
    preprocessing = TestPreprocessing(cfg)
    images = [(path, preprocessing.read(path)) for path in args.input]  # all readable first
    predictor = Predictor(cfg, device=args.device, precision=args.precision,
                          confidence_threshold=args.confidence_threshold,
                          allow_untrained_gates=args.allow_untrained_gates)
    out_dir = make_output_dir(args.output)  # nothing written before the model is accepted
    written = visualize(predictor, images, out_dir, options)
    print(f"{PROG}: wrote {len(written)} image(s) to {out_dir}", flush=True)
    return written


def cli(argv: Optional[Sequence[str]] = None) -> Any:
    return run_tool(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
