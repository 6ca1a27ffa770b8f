"""FLOPs of a Detectron2 model (dense or token-pruned) counted with fvcore.

    python -m tokenprune.tools.flops --config-file CFG [--checkpoint FILE] [--num-inputs N]
        [--allow-untrained-gates] [--depth D] [--keep-ratio R ...] [--output FILE.json]
        [-- key=value ...]

Counts (:mod:`tokenprune.analysis.flops`) on the first N test images, per module and per
region (backbone / neck / heads), fvcore's convention (one multiply-add = 1 flop); for a
pruned backbone side by side with every token kept (:mod:`tokenprune.analysis.flops_report`).
Without a checkpoint (random weights: fine for counting) or with one that lacks a pruned
model's gates it runs only with ``--allow-untrained-gates``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

from ..analysis.flops_report import flops_report, resolve_output
from ..checkpoint import load_model
from ..data import first_test_inputs
from ..errors import InputError
from ..fileio import atomic_write_json
from .common import load_tool_config, run_tool, tool_parser

__all__ = ["build_parser", "main", "cli"]

PROG = "python -m tokenprune.tools.flops"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, "Count the FLOPs of a model (fvcore: 1 multiply-add = 1 flop) "
                               "on the first images of its test set; for a pruned backbone "
                               "side by side with every token kept.",
                         options=("--checkpoint", "--allow-untrained-gates", "--keep-ratio"))
    parser.add_argument("--num-inputs", type=int, default=4, metavar="N",
                        help="analyse the first N test images")
    parser.add_argument("--depth", type=int, default=4, metavar="D",
                        help="module depth of the per-module table")
    parser.add_argument("--output", default=None, metavar="FILE.json",
                        help="JSON report (default: OUTPUT_DIR/flops.json, "
                             "OUTPUT_DIR = train.output_dir)")
    return parser


def main(args: argparse.Namespace) -> Dict[str, Any]:
    if args.num_inputs <= 0:
        raise InputError(f"--num-inputs must be a positive number of images, got {args.num_inputs}")
    if args.depth < 0:
        raise InputError(f"--depth must be 0 or more, got {args.depth}")
    cfg = load_tool_config(args)
    model = load_model(cfg, allow_untrained_gates=args.allow_untrained_gates)
    output = resolve_output(cfg.train.output_dir, args.output)
    inputs = first_test_inputs(cfg, args.num_inputs)
    report = {"config_file": args.config_file, "overrides": list(args.opts),
              **flops_report(model, inputs, args.config_file, args.num_inputs, args.depth)}
    atomic_write_json(output, report)
    print(f"wrote {output}")
    return report


def cli(argv: Optional[Sequence[str]] = None) -> Any:
    return run_tool(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
