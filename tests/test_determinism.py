"""Same seed, same numbers: with ``train.deterministic`` (the synthetic configs' default) two
train_net.py runs of one seed write bit-identical losses to metrics.json and bit-identical
weights, and another seed gives other ones. Dense and SViT in-process (``train_net.main``, as
``launch()`` runs it with one process), and a 2-process gloo run. The second run of a pair
also evaluates (and counts FLOPs) every 5 iterations: that must not move the training's
random draws either."""
import json
import os
import re

import pytest
import torch

from helpers import DENSE_CFG, ROOT, SMALL, SVIT_CFG, train_net
from tokenprune.config import load_config
from tokenprune.engine import check_train_config
from tokenprune.errors import ConfigError

ITERS = 20
GLOO_ITERS = 10  # two processes: each run pays three interpreter starts
EVERY_5 = ["train.eval_period=5", "train.flops_period=5"]
SMALL_SVIT = SMALL + [  # block 1 of 2 pruned, random gates (no dense checkpoint)
    "model.backbone.net.pruned_blocks=[1]",
    "model.backbone.net.keep_ratios=[0.5]",
    "train.init_checkpoint=",
]


def _losses(out_dir):
    """{iteration: {loss name: value}} from metrics.json (the losses as JSONWriter smooths
    them: the median of the last 20)."""
    with open(os.path.join(out_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if '"total_loss"' in line]
    return {r["iteration"]: {k: v for k, v in r.items() if "loss" in k} for r in rows}


def _weights(out_dir):
    return torch.load(os.path.join(out_dir, "model_final.pth"), weights_only=False)["model"]


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("config,opts", [(DENSE_CFG, SMALL), (SVIT_CFG, SMALL_SVIT)],
                         ids=["dense", "svit"])
def test_same_seed_same_losses_and_weights(config, opts, train_in_process, tmp_path):
    runs = {}
    for name, seed, iters, extra in (("a", 0, ITERS, []), ("b", 0, ITERS, EVERY_5),
                                     ("other_seed", 1, 2, [])):
        out = str(tmp_path / name)
        caught = train_in_process(config, opts + extra + [
            f"train.seed={seed}", f"train.max_iter={iters}", f"train.output_dir={out}"])
        lacking = [m for m in caught if "deterministic implementation" in m]
        assert not lacking, lacking  # every op of the run has a deterministic CPU kernel
        runs[name] = out
    a, b, other = (_losses(runs[n]) for n in ("a", "b", "other_seed"))
    assert sorted(a) == list(range(ITERS))
    assert a == b  # bit for bit: every loss at every iteration
    assert _same_weights(_weights(runs["a"]), _weights(runs["b"]))
    if config == SVIT_CFG:
        assert "loss_keep_ratio" in a[0]
    assert other[0] != a[0] and other[1] != a[1]  # other initial weights, data order, noise


def test_two_process_gloo_same_seed_same_losses(tmp_path):
    """Also the 2-process run of the training options DDP brings: bfloat16 autocast and
    fp16 gradient compression (the same seed still gives the same numbers under both)."""
    def run(name, seed, iters, extra=()):
        out = str(tmp_path / name)
        proc = train_net(SVIT_CFG, SMALL_SVIT + [*extra,
            "dataloader.train.total_batch_size=2", "train.device=cpu",
            "train.ddp.fp16_compression=True", "train.amp.enabled=True",
            "train.amp.precision=bfloat16",
            f"train.seed={seed}", f"train.max_iter={iters}", f"train.output_dir={out}"],
            "--num-gpus", "2")
        assert proc.returncode == 0, proc.stderr[-3000:]
        return out, proc

    (a, proc), (b, _), (other, _) = (run("a", 0, GLOO_ITERS), run("b", 0, GLOO_ITERS, EVERY_5),
                                     run("other_seed", 1, 1))
    assert "Rank of current process: 0" in proc.stdout + proc.stderr
    losses = _losses(a)
    assert sorted(losses) == list(range(GLOO_ITERS))
    assert all(0 < r["total_loss"] < 1e3 and "loss_keep_ratio" in r for r in losses.values())
    with open(os.path.join(a, "metrics.json")) as f:
        assert all("keep_ratio/mean" in json.loads(line) for line in f if "total_loss" in line)
    assert losses == _losses(b)
    assert _same_weights(_weights(a), _weights(b))
    assert _losses(other)[0] != losses[0]


@pytest.mark.parametrize("opts,message", [
    (["train.seed=-1"], "train.deterministic=True needs train.seed >= 0"),
    (["train.num_threads=0"], "needs a fixed train.num_threads"),
    (["train.num_threads=-2"], "train.num_threads must be an integer >= 0"),
])
def test_deterministic_run_needs_a_seed_and_a_thread_count(opts, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_train_config(load_config(DENSE_CFG, opts))


def test_coco_recipes_are_not_deterministic_unless_asked():
    cfg = load_config(os.path.join(ROOT, "configs", "COCO", "mask_rcnn_vitdet_b_dense.py"),
                      ["train.device=cpu", "train.amp.enabled=False"])  # runs on a CPU too
    assert (cfg.train.deterministic, cfg.train.seed, cfg.train.num_threads) == (False, -1, 0)
    check_train_config(cfg)
    check_train_config(load_config(
        os.path.join(ROOT, "configs", "COCO", "mask_rcnn_vitdet_b_dense.py"),
        ["train.device=cpu", "train.amp.enabled=False", "train.deterministic=True",
         "train.seed=0", "train.num_threads=4"]))
