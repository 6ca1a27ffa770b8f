"""Accuracy against measured speed for one trained model: every reducer at every keep ratio.

    python -m tokenprune.tools.tradeoff --config-file configs/Synthetic/mask_rcnn_vitdet_t_svit.py \\
        --checkpoint output/synthetic_svit/model_final.pth --keep-ratios 1.0 0.8 0.6 0.4 0.2 \\
        --reducers gates topk random evit tome --max-ap-drop 1.0

Reducers: gates = the learned gates' own dynamic rate (one point: in this code base the
gates with a forced ratio are the top-k of their scores, which is topk); topk = the learned
gates' scores, top-k at each ratio; random, evit (attention), tome (merging): training-free,
on the checkpoint's weights. Dense (every block dense, no gate) is the reference. With gates
or topk among the reducers, a checkpoint without the learned gates (SViT) or pruning decoders
(VLTP) is refused unless --allow-untrained-gates.

Per point, one evaluation pass of the config's test set (its first --num-images images):
box AP, mask AP (task mIoU for task models), fvcore backbone and total GFLOPs, backbone and
whole-model latency (the point and dense interleaved in this process, medians), mean kept
fraction. Resumable: a point with a file in DIR/results is not measured again; a folder
made with another config or checkpoint is refused. Outputs in --output (default
<train.output_dir>/tradeoff): tradeoff.csv, tradeoff.md, tradeoff.png. How it measures:
:mod:`tokenprune.study.tradeoff`; the report: :mod:`tokenprune.analysis.tradeoff`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

from ..analysis.tradeoff import DEFAULT_KEEP_RATIOS, REDUCERS
from ..study.tradeoff import TradeoffOptions, run_tradeoff
from .common import add_shared_option, load_tool_config, run_tool, tool_parser

__all__ = ["build_parser", "options_from", "main", "cli"]

PROG = "tokenprune.tools.tradeoff"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[2],
                         options=("--checkpoint", "--allow-untrained-gates", "--precision"))
    parser.add_argument("--keep-ratios", type=float, nargs="+", metavar="R",
                        default=list(DEFAULT_KEEP_RATIOS),
                        help="forced keep ratios in (0, 1], one point each (default: 1.0 0.9 "
                             "... 0.2)")
    parser.add_argument("--reducers", nargs="+", metavar="NAME", default=list(REDUCERS),
                        help="of " + "; ".join(f"{k}: {v}" for k, v in REDUCERS.items())
                             + " (default: all)")
    parser.add_argument("--num-images", type=int, default=None, metavar="N",
                        help="the first N images of the test set (default: all)")
    add_shared_option(parser, "--batch-size",
                      help="images per call, in the evaluation and the timing")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="default: <train.output_dir>/tradeoff (resumable)")
    parser.add_argument("--max-ap-drop", type=float, default=None, metavar="D",
                        help="print the fastest point whose box AP is within D of dense, and "
                             "the override that runs it")
    parser.add_argument("--latency-images", type=int, default=4, metavar="K",
                        help="FLOPs and latency on the first K of the images")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds per point (median; one untimed round first)")
    return parser


def options_from(args: argparse.Namespace) -> TradeoffOptions:
    """The sweep's options from the parsed flags."""
    return TradeoffOptions(
        config_file=args.config_file, overrides=tuple(args.opts), checkpoint=args.checkpoint,
        keep_ratios=tuple(args.keep_ratios), reducers=tuple(args.reducers),
        num_images=args.num_images, batch_size=args.batch_size, precision=args.precision,
        output=args.output, max_ap_drop=args.max_ap_drop,
        latency_images=args.latency_images, repeats=args.repeats,
        allow_untrained_gates=args.allow_untrained_gates)


def main(args: argparse.Namespace) -> Dict[str, Any]:
    options = options_from(args)
    options.check()
    cfg = load_tool_config(args, splits=("test",))
    res = run_tradeoff(cfg, options, PROG)
    print(res["markdown"])
    print(f"{PROG}: measured {res['measured']} of {len(res['rows'])} points; wrote "
          f"{res['output']}/tradeoff.csv, tradeoff.md, tradeoff.png", flush=True)
    if res["choice"] is not None:
        print(res["choice"], flush=True)
    return res


def cli(argv: Optional[Sequence[str]] = None) -> Any:
    return run_tool(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
