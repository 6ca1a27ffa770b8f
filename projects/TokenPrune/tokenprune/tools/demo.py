"""Run a TokenPrune model on your own images.

    python -m tokenprune.tools.demo --config-file configs/Synthetic/mask_rcnn_vitdet_t_svit.py \\
        --input photos/ more/*.jpg one.png --output out/demo [--checkpoint FILE] \\
        [--batch-size 4] [--confidence-threshold 0.5] [--keep-ratio 0.5] \\
        [--task-id 2 | --prompt "something to sit on"] [--compile [MODE]] [-- key=value ...]

Writes into ``--output``, per image, ``<name>_detections.png`` and ``<name>_keep.png`` (the
tokens each pruned block kept), and for all images ``results.json`` (COCO results) and
``keep_ratios.csv`` (keep ratios and latency per image); see
:mod:`tokenprune.engine.results`. Weights: ``train.init_checkpoint`` (or ``--checkpoint``);
a pruned model's checkpoint must hold its gates unless ``--allow-untrained-gates``.
``--compile`` compiles the model once (torch.compile, inductor), then runs every input; the
first batch pays the compile. Where inductor cannot run (no C++ compiler) one line on stderr
says so and the demo runs eagerly.
Bad arguments stop with one line (exit 2) before anything is written; unreadable images
are skipped and listed at the end (exit 1).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..checkpoint import check_device
from ..errors import InputError
from ..fileio import make_output_dir
from ..modeling.compiled import COMPILE_MODES
from .common import load_tool_config, run_tool, tool_parser

PROG = "tokenprune.tools.demo"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__.split("\n\n")[0],
                         options=("--checkpoint", "--allow-untrained-gates", "--keep-ratio",
                                  "--confidence-threshold", "--device", "--precision",
                                  "--batch-size"))
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="image files, folders of images, glob patterns")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for the PNGs, results.json and keep_ratios.csv")
    parser.add_argument("--task-id", type=int, default=None,
                        help="input 'task_id' (task-guided models)")
    parser.add_argument("--prompt", default=None,
                        help="input 'prompt' (task-guided models, text guidance)")
    parser.add_argument("--compile", nargs="?", const="default", default="none",
                        choices=COMPILE_MODES, metavar="MODE",
                        help="torch.compile the model once before the inputs: "
                             f"{', '.join(COMPILE_MODES)} (freeze: inductor with the weights "
                             "frozen); --compile alone: default")
    return parser


def main(args: argparse.Namespace) -> int:
    from ..engine.predictor import Predictor
    from ..engine.results import collect_inputs, predict_folder

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_device(args.device, "--device")
    paths = collect_inputs(args.input)
    cfg = load_tool_config(args, need_data=False, splits=("test",))  # metadata: class names
    predictor = Predictor(cfg, device=args.device, precision=args.precision,
                          confidence_threshold=args.confidence_threshold,
                          allow_untrained_gates=args.allow_untrained_gates,
                          compile=args.compile)
    out_dir = make_output_dir(args.output)
    guidance = {k: v for k, v in (("task_id", args.task_id), ("prompt", args.prompt))
                if v is not None}
    s = predict_folder(predictor, paths, out_dir, args.batch_size, guidance)
    done = len(s.done)
    print(f"{PROG}: {done} image(s) in {s.seconds:.1f} s "
          f"({1000 * s.seconds / max(done, 1):.0f} ms per image) -> {out_dir} "
          f"({s.results_json}, {s.keep_csv}, 2 PNGs per image)", flush=True)
    if s.skipped:
        print(f"{PROG}: skipped {len(s.skipped)} of {len(paths)} input(s):", file=sys.stderr)
        for path, reason in s.skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    return run_tool(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
