"""Helpers for tests that run the project's command-line entry points: in subprocesses
(the real entry point, one test per command) or in-process (``cli(argv)``, every bad input)."""
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
]
# SViT schedule for the 4-block tiny model: block 1 dense... blocks 1-3 pruned.
TINY_SVIT = TINY + [
    "model.backbone.net.pruned_blocks=[1,2,3]",
    "model.backbone.net.keep_ratios=[0.7,0.49,0.343]",
    "train.init_checkpoint=",
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
