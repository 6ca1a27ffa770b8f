"""Latency, throughput and peak memory of a token-pruned ViTDet: dense vs pruned.

    python -m tokenprune.tools.benchmark --config-file configs/COCO/mask_rcnn_vitdet_b_svit.py \\
        --schedule svit --device cpu --input-size 1024 --repeats 3
    python -m tokenprune.tools.benchmark --config-file CFG --keep-ratios 1.0 0.7 0.5 \\
        --input-size 512 --batch-size 1 2 4 8 --precision bfloat16 --output out/bench

What is measured and how: :mod:`tokenprune.analysis.benchmark`. Outputs (``--output``,
default ``<train.output_dir>/benchmark``), each written atomically: ``speedup.png``,
``results.md``, then ``results.json`` (present only after a complete run).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

import torch

from ..analysis.benchmark_options import BenchmarkOptions
from ..analysis.benchmark_report import run_benchmark
from ..fileio import make_output_dir
from ..modeling.attention import ATTENTION_KERNELS, DEFAULT_ATTENTION
from .common import load_tool_config, run_tool, tool_parser

__all__ = ["build_parser", "options_from", "main", "cli"]

PROG = "tokenprune.tools.benchmark"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__.split("\n\n")[0], precision=True, weights=True)
    parser.add_argument("--keep-ratios", type=float, nargs="+", metavar="R",
                        help="forced keep ratios, one variant each, in (0, 1]")
    parser.add_argument("--schedule", choices=["svit"], default=None,
                        help="also force the config's per-block target keep ratios")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--input-size", type=int, default=None, metavar="S",
                        help="square input side in pixels (default: the model's square_pad)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1], metavar="B",
                        help="batch sizes, each measured in turn (default 1)")
    parser.add_argument("--attention", choices=ATTENTION_KERNELS, nargs="+",
                        default=[DEFAULT_ATTENTION],
                        help="attention kernels of the pruned variants, one row each "
                             f"(default {DEFAULT_ATTENTION})")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch.set_num_threads(N) (default: PyTorch's choice)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--weights", choices=["random", "checkpoint"], default="random",
                        help="random (seeded) weights or train.init_checkpoint")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="default: <train.output_dir>/benchmark")
    parser.add_argument("--backbone-only", action="store_true",
                        help="time the ViT backbone only, not the whole model")
    parser.add_argument("--memory", choices=["tensors", "rss", "off"], default="tensors",
                        help="peak memory: live tensors (default), resident set in a fresh "
                             "process per variant (CPU), or off")
    parser.add_argument("--profile", action="store_true",
                        help="also write profile.md (torch.profiler, one forward per variant)")
    parser.add_argument("--prompt", default=None, help="input 'prompt' (task-guided models)")
    parser.add_argument("--task-id", type=int, default=None, help="input 'task_id'")
    return parser


def options_from(args: argparse.Namespace) -> BenchmarkOptions:
    """The benchmark's options from the parsed flags (no ``--keep-ratios`` and no
    ``--schedule``: the SViT schedule)."""
    schedule = args.schedule or (None if args.keep_ratios else "svit")
    return BenchmarkOptions(
        config_file=args.config_file, overrides=tuple(args.opts),
        keep_ratios=tuple(args.keep_ratios or ()), schedule=schedule, device=args.device,
        precision=args.precision, input_size=args.input_size,
        batch_sizes=tuple(args.batch_size), attention=tuple(args.attention),
        threads=args.threads, repeats=args.repeats, warmup=args.warmup, weights=args.weights,
        backbone_only=args.backbone_only, memory=args.memory, profile=args.profile,
        prompt=args.prompt, task_id=args.task_id,
        allow_untrained_gates=args.allow_untrained_gates)


def main(args: argparse.Namespace) -> dict:
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quiet torch.profiler's C++ logging
    options = options_from(args)
    options.check()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    cfg = load_tool_config(args, need_data=False)
    out_dir = make_output_dir(args.output or os.path.join(cfg.train.output_dir, "benchmark"))
    return run_benchmark(cfg, options, out_dir, PROG)


def cli(argv: Optional[Sequence[str]] = None) -> Any:
    return run_tool(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
