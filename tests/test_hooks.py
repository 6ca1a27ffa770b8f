"""Keep-ratio and FLOPs scalars reach EventStorage, metrics.json and TensorBoard."""
import json
import os

import pytest
import torch

from helpers import SVIT_CFG, TINY_SVIT

from detectron2.config import LazyConfig

from tokenprune.engine import keep_ratio_scalars
from tokenprune.engine.hooks import build_gate_noise_hook
from tokenprune.errors import ConfigError
from tokenprune.modeling import PrunedViT


def test_keep_ratio_scalars_mean_min_max():
    s = keep_ratio_scalars({3: torch.tensor([0.5, 0.7]), 5: torch.tensor([0.2, 0.4])})
    assert s["keep_ratio/layer3"] == pytest.approx(0.6)
    assert s["keep_ratio_min/layer3"] == pytest.approx(0.5)
    assert s["keep_ratio_max/layer5"] == pytest.approx(0.4)
    assert s["keep_ratio/mean"] == pytest.approx((0.6 + 0.3) / 2)


def test_keep_ratio_loss_drives_keep_fraction_to_target():
    torch.manual_seed(0)
    vit = PrunedViT(img_size=64, patch_size=8, embed_dim=48, depth=3, num_heads=3,
                    pretrain_img_size=64, pretrain_use_cls_token=False,
                    pruned_blocks=[1, 2], keep_ratios=[0.5, 0.3]).train()
    opt = torch.optim.Adam(vit.gates.parameters(), lr=3e-3)
    x = torch.randn(4, 3, 64, 64)
    start = None
    for _ in range(60):
        vit(x)
        if start is None:
            start = {i: r.mean().item() for i, r in vit.last_keep_ratios.items()}
        opt.zero_grad()
        vit.last_keep_ratio_loss.backward()
        opt.step()
    with torch.no_grad():
        ends = [torch.stack([vit(x) and vit.last_keep_ratios[i].mean() for _ in range(5)]).mean()
                for i in (1, 2)]
    for i, end, target in zip((1, 2), ends, (0.5, 0.3)):
        assert abs(end.item() - target) < 0.08
        assert abs(end.item() - target) < abs(start[i] - target)


@pytest.mark.parametrize("anneal", [1.5, -0.2])
def test_gate_noise_anneal_outside_the_run_is_refused(anneal):
    cfg = LazyConfig.load(SVIT_CFG)
    assert build_gate_noise_hook(cfg) is None  # the default: SViT's constant noise
    cfg.train.gate_noise_anneal = anneal
    with pytest.raises(ConfigError, match="gate_noise_anneal must lie in"):
        build_gate_noise_hook(cfg)


def test_svit_training_logs_keep_ratios_flops_loss_and_gate_noise(tmp_path, train_in_process):
    out = str(tmp_path / "svit")
    train_in_process(SVIT_CFG, TINY_SVIT + ["train.max_iter=4", f"train.output_dir={out}",
                                            "train.flops_period=2", "train.eval_period=0",
                                            "train.gate_noise_anneal=0.5"])
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    keys = set().union(*records)
    wanted = {f"keep_ratio/layer{i}" for i in (1, 2, 3)} | {
        "keep_ratio/mean", "loss_keep_ratio", "flops/backbone_gflops", "flops/total_gflops",
        "flops/backbone_ratio", "keep_ratio_min/layer1", "keep_ratio_max/layer3"}
    assert wanted <= keys, wanted - keys
    train_recs = [r for r in records if "total_loss" in r]
    assert len(train_recs) == 4 and all("keep_ratio/mean" in r for r in train_recs)
    # the evaluation after the last step: its kept fractions, under the same names
    assert "keep_ratio/mean" in records[-1] and "bbox/AP" in records[-1]
    assert all(0 < r["keep_ratio/mean"] <= 1 for r in train_recs)
    # the noise falls linearly to 0 over the first half of the 4 iterations
    assert [r["gate_noise"] for r in train_recs] == [1.0, 0.5, 0.0, 0.0]
    flops = [r for r in records if "flops/backbone_ratio" in r]
    assert [r["iteration"] for r in flops] == [1, 3, 4]  # FlopsHook, then the evaluation
    assert all(0 < r["flops/backbone_ratio"] < 1.5 and r["flops/backbone_gflops"] > 0
               for r in flops)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [f for f in os.listdir(out) if f.startswith("events.out.tfevents")]
    tags = set()
    for name in events:
        acc = EventAccumulator(os.path.join(out, name))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert wanted <= tags, wanted - tags


def test_keep_ratio_logged_at_an_eval_step_is_the_training_steps(tmp_path, monkeypatch):
    """EvalHook runs the model on the test set after the step; the logged keep ratio must
    still be the training batch's, not the last evaluated image's."""
    from tokenprune.config import load_config
    from tokenprune.engine import build_model, do_train, prepare_datasets, train_loop
    from tokenprune.modeling.meta_arch import find_pruned_vit

    cfg = load_config(SVIT_CFG, TINY_SVIT + ["train.max_iter=2", "train.eval_period=1",
                                             "train.flops_period=0",
                                             f"train.output_dir={tmp_path}"])
    prepare_datasets(cfg)
    model = build_model(cfg)

    def fake_eval(cfg, model):  # what an evaluation leaves behind: its last image's ratios
        vit = find_pruned_vit(model)
        vit.last_keep_ratios = {i: torch.tensor([0.123]) for i in vit.pruned_blocks}
        return {}

    monkeypatch.setattr(train_loop, "do_test", fake_eval)
    do_train(cfg, model)
    with open(tmp_path / "metrics.json") as f:
        rows = [json.loads(line) for line in f if "keep_ratio/mean" in line]
    assert len(rows) == 2
    assert all(row["keep_ratio/mean"] != pytest.approx(0.123) for row in rows)
