"""Helpers for tests that run the project's command-line entry points: in subprocesses
(the real entry point, one test per command) or in-process (``cli(argv)``, every bad input)."""
import contextlib
import os
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Sequence

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DENSE_CFG = os.path.join(ROOT, "configs", "Synthetic", "mask_rcnn_vitdet_t_dense.py")
SVIT_CFG = os.path.join(ROOT, "configs", "Synthetic", "mask_rcnn_vitdet_t_svit.py")

# Shrinks the synthetic ViTDet-Tiny so a test trains in seconds on a CPU.
TINY = [
    "model.backbone.net.depth=4",
    "model.backbone.net.embed_dim=96",
    "model.backbone.net.window_block_indexes=[0,2]",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "dataloader.test.dataset.names=synthetic_shapes_minival",
    "train.log_period=1",
    "train.num_threads=1",  # make test: one thread per pytest worker, one worker per core
    "train.flops_num_images=1",  # FLOPs at evaluation (and FlopsHook) on one image, not two
]
# SViT schedule for the 4-block tiny model: block 1 dense... blocks 1-3 pruned.
TINY_SVIT = TINY + [
    "model.backbone.net.pruned_blocks=[1,2,3]",
    "model.backbone.net.keep_ratios=[0.7,0.49,0.343]",
    "train.init_checkpoint=",
]
# A model small enough that 20 iterations take seconds on 2 cores: a 2-block ViT of 48
# channels, a thin neck and heads, few proposals; the synthetic data, augmentation included.
SMALL = [
    "model.backbone.net.depth=2",
    "model.backbone.net.embed_dim=48",
    "model.backbone.net.num_heads=2",
    "model.backbone.net.window_block_indexes=[0]",
    "model.backbone.out_channels=32",
    "model.proposal_generator.head.in_channels=32",
    "model.proposal_generator.batch_size_per_image=64",
    "model.proposal_generator.pre_nms_topk=[200,100]",
    "model.proposal_generator.post_nms_topk=[50,50]",
    "model.roi_heads.batch_size_per_image=32",
    "model.roi_heads.box_head.input_shape.channels=32",
    "model.roi_heads.box_head.fc_dims=[64,64]",
    "model.roi_heads.box_predictor.input_shape.channels=64",
    "model.roi_heads.box_predictor.test_topk_per_image=10",
    "model.roi_heads.mask_head.input_shape.channels=32",
    "model.roi_heads.mask_head.conv_dims=[32]",
    "dataloader.train.total_batch_size=1",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "dataloader.test.dataset.names=synthetic_shapes_minival",
    "train.log_period=1",
    "train.eval_period=0",
    "train.checkpointer.period=1000",
    "train.flops_period=0",
    "train.num_threads=1",
    "train.flops_num_images=1",
]


def run(args: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: int = 600,
        cwd: str = ROOT) -> subprocess.CompletedProcess:
    """Run ``python args...`` (the project's interpreter) and capture text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout)


def one_line_error(returncode: int, stderr: str, prog: str) -> str:
    """Check a bad-input stop (exit status 2, exactly one line ``prog: error: ...`` on
    stderr) and return that line."""
    assert returncode == 2, stderr[-2000:]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def cli_error(cli: Callable, argv: Sequence[str], prog: str, capsys) -> str:
    """Run a command's ``cli(argv)`` in this process on a bad input: :func:`one_line_error`
    of its ``SystemExit`` and of what it printed to stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli(list(argv))
    return one_line_error(stop.value.code, capsys.readouterr().err, prog)


def train_net(config: str, opts: List[str], *flags: str, **kw) -> subprocess.CompletedProcess:
    return run([os.path.join(ROOT, "train_net.py"), "--config-file", config, *flags, *opts], **kw)

VLTP_CFG = os.path.join(ROOT, "configs", "Synthetic", "mask_rcnn_vitdet_t_vltp.py")
# The VLTP config shrunk like TINY_SVIT, evaluated on the 16-image task split.
TINY_VLTP = TINY_SVIT + [
    "dataloader.test.dataset.names=synthetic_tasks_minival",
    "model.roi_heads.box_predictor.test_topk_per_image=20",
]


def prune_some(model, seed: int = 3) -> None:
    """Gate weights that make the gates of a pruned model prune some tokens on their own."""
    import torch

    from tokenprune.modeling import find_pruned_vit

    torch.manual_seed(seed)
    for gate in find_pruned_vit(model).gates.values():
        torch.nn.init.normal_(gate.fc2.weight, std=2.0)
        torch.nn.init.zeros_(gate.fc2.bias)


@contextlib.contextmanager
def registered_again(names: Sequence[str], register: Callable[[], None]):
    """Within the context, the Detectron2 datasets ``names`` as ``register()`` registers them
    now (e.g. under another ``TOKENPRUNE_DATA``); the original registrations after."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    saved = {n: (DatasetCatalog.pop(n), MetadataCatalog.pop(n)) for n in names}
    try:
        register()
        yield
    finally:
        for name, (func, meta) in saved.items():
            DatasetCatalog.pop(name, None)
            MetadataCatalog.pop(name, None)
            DatasetCatalog[name] = func
            MetadataCatalog[name] = meta
