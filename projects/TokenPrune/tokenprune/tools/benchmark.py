"""Latency, throughput and peak memory of a token-pruned ViTDet: dense vs pruned.

    python -m tokenprune.tools.benchmark --config-file configs/COCO/mask_rcnn_vitdet_b_svit.py \\
        --schedule svit --device cpu --input-size 1024 --repeats 3
    python -m tokenprune.tools.benchmark --config-file CFG --sweep 1.0 0.7 0.5 \\
        --input-size 512 --batch-size 1 2 4 8 --precision bfloat16 --output out/bench
    python -m tokenprune.tools.benchmark --config-file CFG --checkpoint model_final.pth \\
        --keep-ratio 0.7 0.7 0.7 0.49 0.49 0.49 0.343 0.343 0.343

``--sweep`` measures one variant per uniform keep ratio; ``--keep-ratio`` (as in the other
commands: one number for every pruned block, or one per pruned block) one variant at that
forced schedule. ``--checkpoint`` implies ``--weights checkpoint``.

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
from ..errors import InputError
from ..modeling.attention import ATTENTION_KERNELS, DEFAULT_ATTENTION
from ..modeling.compiled import COMPILE_MODES
from .common import add_shared_option, load_tool_config, run_tool, tool_parser

__all__ = ["build_parser", "options_from", "main", "cli"]

PROG = "tokenprune.tools.benchmark"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__.split("\n\n")[0],
                         options=("--checkpoint", "--allow-untrained-gates", "--keep-ratio",
                                  "--device", "--precision"))
    add_shared_option(parser, "--batch-size", nargs="+", default=[1],
                      help="batch sizes, each measured in turn")
    parser.add_argument("--sweep", type=float, nargs="+", default=None, metavar="R",
                        help="uniform forced keep ratios in (0, 1], one variant each")
    parser.add_argument("--schedule", choices=["svit", "none"], default=None,
                        help="svit: also force the config's per-block target keep ratios "
                             "(the default when neither --sweep nor --keep-ratio is given); "
                             "none: not")
    parser.add_argument("--input-size", type=int, default=None, metavar="S",
                        help="square input side in pixels (default: the model's square_pad)")
    parser.add_argument("--attention", choices=ATTENTION_KERNELS, nargs="+",
                        default=[DEFAULT_ATTENTION],
                        help="attention kernels of the pruned variants, one row each")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch.set_num_threads(N) (default: PyTorch's choice)")
    parser.add_argument("--repeats", type=int, default=BenchmarkOptions.repeats, metavar="N",
                        help="timed rounds (min / median / max reported)")
    parser.add_argument("--warmup", type=int, default=BenchmarkOptions.warmup, metavar="N",
                        help="untimed rounds first")
    parser.add_argument("--weights", choices=["random", "checkpoint"], default=None,
                        help="random (seeded) weights or train.init_checkpoint (default: "
                             "checkpoint with --checkpoint, else random)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="folder of the results (default: <train.output_dir>/benchmark)")
    parser.add_argument("--backbone-only", action="store_true",
                        help="time the ViT backbone only, not the whole model")
    parser.add_argument("--memory", choices=["tensors", "rss", "off"], default="tensors",
                        help="peak memory: live tensors (default), resident set in a fresh "
                             "process per variant (CPU), or off")
    parser.add_argument("--profile", action="store_true",
                        help="also write profile.md (torch.profiler, one forward per variant)")
    parser.add_argument("--prompt", default=None,
                        help="input 'prompt' (task-guided models)")
    parser.add_argument("--task-id", type=int, default=None, help="input 'task_id'")
    parser.add_argument("--compile", nargs="+", choices=COMPILE_MODES, default=["none"],
                        metavar="MODE",
                        help="every variant in each mode: none (eager), default "
                             "(torch.compile), freeze (torch.compile with inductor's "
                             "freezing); choices: %(choices)s")
    parser.add_argument("--images", type=int, default=1, metavar="N",
                        help="N distinct seeded images; round r runs image r %% N (learned "
                             "gates: different kept counts per round)")
    return parser


def options_from(args: argparse.Namespace) -> BenchmarkOptions:
    """The benchmark's options from the parsed flags (no ``--sweep``, ``--keep-ratio`` nor
    ``--schedule``: the SViT schedule; ``--checkpoint``: the checkpoint's weights, put
    into the overrides as ``train.init_checkpoint``)."""
    if args.checkpoint is not None and args.weights == "random":
        raise InputError("--checkpoint loads weights: drop --weights random")
    schedule = args.schedule or (None if args.sweep or args.keep_ratio else "svit")
    schedule = None if schedule == "none" else schedule
    overrides = tuple(args.opts)
    if args.checkpoint is not None:
        overrides += (f"train.init_checkpoint={args.checkpoint}",)
    return BenchmarkOptions(
        config_file=args.config_file, overrides=overrides, sweep=tuple(args.sweep or ()),
        keep_ratio=tuple(args.keep_ratio or ()), schedule=schedule, device=args.device,
        precision=args.precision, input_size=args.input_size,
        batch_sizes=tuple(args.batch_size), attention=tuple(args.attention),
        threads=args.threads, repeats=args.repeats, warmup=args.warmup,
        weights=args.weights or ("checkpoint" if args.checkpoint else "random"),
        backbone_only=args.backbone_only, memory=args.memory, profile=args.profile,
        prompt=args.prompt, task_id=args.task_id,
        allow_untrained_gates=args.allow_untrained_gates, compile=tuple(args.compile),
        images=args.images)


def main(args: argparse.Namespace) -> dict:
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quiet torch.profiler's C++ logging
    options = options_from(args)
    options.check()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    cfg = load_tool_config(args, need_data=False, force_keep_ratio=False)  # variants force
    out_dir = make_output_dir(args.output or os.path.join(cfg.train.output_dir, "benchmark"))
    return run_benchmark(cfg, options, out_dir, PROG)


def cli(argv: Optional[Sequence[str]] = None) -> Any:
    return run_tool(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
