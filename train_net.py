#!/usr/bin/env python
"""TokenPrune training / evaluation entry point (Detectron2 LazyConfig conventions).

    python train_net.py --config-file configs/Synthetic/mask_rcnn_vitdet_t_dense.py \
        train.max_iter=20 train.output_dir=output/dense
    python train_net.py --config-file CFG --eval-only train.init_checkpoint=PATH
        # a pruned model's checkpoint must hold its gates (--allow-untrained-gates: it may not)
    python train_net.py --config-file CFG --resume          # continue from last checkpoint
    python train_net.py --config-file CFG --num-gpus 2      # 2 processes (gloo on a CPU)

Bad input (config, overrides, datasets, checkpoints) stops with a one-line error and exit
status 2 before anything is written to the output folder. The dependencies' warnings are
hidden unless ``--verbose`` is given (or ``PYTHONWARNINGS`` is set).
"""
import logging
import os
import sys

from tokenprune.tools.warnings_filter import (VERBOSE_FLAG, hide_third_party_warnings,
                                              verbose_among_overrides)

hide_third_party_warnings(sys.argv[1:])  # before Detectron2's imports, some of which warn

from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from tokenprune.config import load_config
from tokenprune.engine import (
    build_model, check_train_config, checkpoint_to_load, configure_run, default_setup_plain,
    do_eval_only, do_train, prepare_datasets, verify_checkpoint,
)
from tokenprune.errors import CheckpointError, TokenPruneError
from tokenprune.tools.common import add_shared_option, fail

logger = logging.getLogger("detectron2")


def _fail(message: str) -> None:
    fail("train_net.py", message)


def main(args) -> None:
    try:
        cfg = load_config(args.config_file, args.opts)
        check_train_config(cfg)
        prepare_datasets(cfg)
        configure_run(cfg)  # seeds before the model's initial weights are drawn
        model = build_model(cfg)
        ckpt = checkpoint_to_load(cfg, args.resume)
        if args.eval_only and not ckpt:
            raise CheckpointError("--eval-only needs a checkpoint: set train.init_checkpoint=PATH "
                                  "(or --resume with a last_checkpoint in train.output_dir)")
        report = verify_checkpoint(model, ckpt, strict=args.eval_only,  # loads the weights
                                   require_gates=args.eval_only and not args.allow_untrained_gates)
    except TokenPruneError as e:
        _fail(str(e))
    default_setup_plain(cfg, args)  # logging, seeds, config.yaml: input is valid from here on
    if report is not None:
        logger.info(report.summary())
    if args.eval_only:
        do_eval_only(cfg, model)
        return
    do_train(cfg, model, resume=args.resume)
    if comm.is_main_process():
        out = cfg.train.output_dir
        print(f"Done. metrics: {os.path.join(out, 'metrics.json')}  "
              f"checkpoint: {os.path.join(out, 'model_final.pth')}  "
              f"config: {os.path.join(out, 'config.yaml')}", flush=True)


EPILOG = """Examples (LazyConfig: key=value overrides after the options):

Train the synthetic dense model, then fine-tune SViT from it:
    python train_net.py --config-file configs/Synthetic/mask_rcnn_vitdet_t_dense.py \\
        train.max_iter=100 train.output_dir=output/synthetic_dense
    python train_net.py --config-file configs/Synthetic/mask_rcnn_vitdet_t_svit.py \\
        train.init_checkpoint=output/synthetic_dense/model_final.pth \\
        "model.backbone.net.keep_ratios=[0.7,0.7,0.7,0.49,0.49,0.49,0.343,0.343,0.343]"

Evaluate a checkpoint (AP, kept fractions and GFLOPs appended to metrics.json; a pruned
model's checkpoint must hold its gates unless --allow-untrained-gates is given):
    python train_net.py --config-file configs/Synthetic/mask_rcnn_vitdet_t_svit.py \\
        --eval-only train.init_checkpoint=output/synthetic_svit/model_final.pth

Continue an interrupted run, or train on 8 GPUs:
    python train_net.py --config-file CFG --resume train.output_dir=DIR
    python train_net.py --config-file configs/COCO/mask_rcnn_vitdet_b_svit.py --num-gpus 8

Several machines (on each, its rank):
    python train_net.py --config-file CFG --num-gpus 8 --num-machines 2 \\
        --machine-rank 0 --dist-url tcp://HOST:PORT
"""


def argument_parser():
    """Detectron2's ``default_argument_parser`` with LazyConfig examples, ``--verbose`` and
    ``--allow-untrained-gates`` (the tools' shared option)."""
    parser = default_argument_parser(epilog=EPILOG)
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="also show the dependencies' warnings (hidden by default)")
    add_shared_option(parser, "--allow-untrained-gates",
                      help="--eval-only: evaluate a pruned model whose gates (SViT) or "
                           "pruning decoders (VLTP) the checkpoint lacks (default: refused)")
    return parser


def invoke_main() -> None:
    args = argument_parser().parse_args()
    verbose_among_overrides(args)
    try:
        check_train_config(load_config(args.config_file, args.opts))  # before any process starts
    except TokenPruneError as e:
        _fail(str(e))
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except ProcessExitedException as e:  # a worker already printed its one-line error
        raise SystemExit(e.exit_code or 1)


if __name__ == "__main__":
    invoke_main()
