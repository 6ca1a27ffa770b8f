"""FLOP counting (tokenprune.analysis, python -m tokenprune.tools.flops): handles, the analytic block count, Detectron2 parity,
pruned vs keep-all, and the command line's bad-input handling."""
import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from detectron2.config import instantiate
from detectron2.utils.analysis import FlopCountAnalysis as D2FlopCountAnalysis

from helpers import DENSE_CFG, SVIT_CFG, cli_error, run
from tokenprune.config import load_config
from tokenprune.data import prepare_dataset
from tokenprune.analysis import (BackboneSpec, block_cost, count_model_flops, flop_analysis,
                                 split_operators)
from tokenprune.modeling import PrunedViT, find_pruned_vit
from tokenprune.tools import flops as flops_tool

# A 4-block ViTDet-Tiny (blocks 0 and 2 windowed) on the generated validation images; the
# train split is pointed at the validation one so that only 64 images are generated.
TINY = [
    "model.backbone.net.depth=4",
    "model.backbone.net.embed_dim=96",
    "model.backbone.net.window_block_indexes=[0,2]",
    "dataloader.train.dataset.names=synthetic_shapes_val",
    "dataloader.test.num_workers=0",
]
TINY_SVIT = TINY + [
    "model.backbone.net.pruned_blocks=[1,2,3]",
    "model.backbone.net.keep_ratios=[0.7,0.49,0.343]",
    "model.backbone.net.fixed_keep_ratio=0.5",
    "train.init_checkpoint=",
]


def _model_and_inputs(config, opts, num=2):
    cfg = load_config(config, opts)
    prepare_dataset("synthetic_shapes_val")
    torch.manual_seed(0)
    model = instantiate(cfg.model).to("cpu").eval()
    inputs = []
    for batch in instantiate(cfg.dataloader.test):
        inputs.extend(batch)
        if len(inputs) >= num:
            break
    return model, inputs[:num]


@pytest.fixture(scope="module")
def dense():
    torch.set_num_threads(1)
    model, inputs = _model_and_inputs(DENSE_CFG, TINY)
    return model, inputs, count_model_flops(model, inputs)


# --------------------------------------------------------------------------- handles

class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.deconv = nn.ConvTranspose2d(4, 2, 2, stride=2)

    def forward(self, x, t):
        y = self.norm(self.fc(t))                  # (5, 16)
        a = (y @ y.t()).softmax(dim=-1)            # (5, 5)
        b = torch.bmm(y[None], y.t()[None])        # (1, 5, 5)
        g = F.gelu(a)
        z = self.deconv(self.conv(x))              # (1, 4, 6, 6) -> (1, 2, 12, 12)
        u = F.interpolate(z, scale_factor=2, mode="bilinear", align_corners=False)
        idx = torch.arange(0, 4, 2)                # integer bookkeeping: free
        n = idx + 1
        s = t.index_select(0, n)                   # 2 x 8 elements moved
        c = t.index_copy(0, idx, s * 2.0)          # 16 multiplications, 16 elements moved
        return g, b, u, c


def test_handles_count_hand_computed_flops():
    x, t = torch.randn(1, 3, 6, 6), torch.randn(5, 8)
    analysis = flop_analysis(_Small().eval(), (x, t))
    flops, extra, moves = split_operators(analysis.by_operator())
    assert flops["linear"] == 5 * 8 * 16
    assert flops["layer_norm"] == 5 * 5 * 16                   # fvcore: 5 per element
    assert flops["matmul"] == 5 * 16 * 5
    assert flops["bmm"] == 5 * 16 * 5
    assert flops["conv"] == 4 * 3 * 3 * 3 * 36 + 4 * 2 * 2 * 2 * 36  # conv + transposed conv
    assert flops["upsample_bilinear2d"] == 4 * 2 * 24 * 24     # fvcore: 4 per output element
    assert extra == {"softmax": 3 * 25, "gelu": 25, "mul": 16}  # the integer add is free
    assert moves == {"index_select": 16, "index_copy": 16}


def test_headline_matches_detectron2_on_small_module():
    x, t = torch.randn(1, 3, 6, 6), torch.randn(5, 8)
    torch.manual_seed(0)
    model = _Small().eval()
    flops, _, _ = split_operators(flop_analysis(model, (x, t)).by_operator())
    assert sum(flops.values()) == D2FlopCountAnalysis(model, (x, t)).total()


# --------------------------------------------------------------------------- analytic check

def test_block_cost_by_hand():
    # 10 tokens of width 8, MLP hidden 16, one global group
    spec = BackboneSpec(grid=(1, 10), embed_dim=8, mlp_hidden=16, patch_macs=0,
                        window_sizes=[0], use_rel_pos=[False])
    f = block_cost(spec, 0)
    assert (f["qkv"], f["attn_qk"], f["attn_v"], f["proj"], f["mlp"]) == \
        (10 * 8 * 24, 100 * 8, 100 * 8, 10 * 64, 2 * 10 * 8 * 16)
    assert f["total"] == 6720
    # 2x4 grid in 2x2 windows: 2 windows of 4 tokens
    windows = BackboneSpec(grid=(2, 4), embed_dim=4, mlp_hidden=4, patch_macs=0,
                           window_sizes=[2], use_rel_pos=[False])
    assert block_cost(windows, 0)["attn_qk"] == 2 * 16 * 4
    keep = torch.tensor([1, 1, 0, 0, 1, 0, 0, 1], dtype=torch.bool)  # 2x4 grid: 3 + 1 kept
    padded = block_cost(windows, 0, keep, quantum=0)  # groups [3, 1] padded to [3, 3]
    assert padded["qkv"] == 4 * 4 * 12 and padded["attn_qk"] == 2 * 9 * 4  # qkv: kept only
    # quantum 2: [3, 1] -> [4, 2], capped at the longest group -> [3, 2]
    assert block_cost(windows, 0, keep, quantum=2)["attn_qk"] == (9 + 4) * 4
    assert padded["mlp"] == 2 * 4 * 4 * 4  # the MLP runs on the kept tokens only
    assert block_cost(windows, 0, keep)["attn_qk"] == (9 + 1) * 4


@pytest.mark.parametrize("ratios", [[0.6, 0.5, 0.3], [1.0, 0.2, 0.75]])
def test_pruned_block_count_matches_block_cost(ratios):
    torch.manual_seed(0)
    vit = PrunedViT(pruned_blocks=[1, 2, 3], keep_ratios=0.5, fixed_keep_ratio=ratios,
                    img_size=64, patch_size=8, embed_dim=48, depth=4, num_heads=3,
                    use_rel_pos=False, window_size=4, window_block_indexes=[0, 2],
                    pretrain_img_size=64, pretrain_use_cls_token=False).eval()
    per_module = flop_analysis(vit, torch.randn(1, 3, 64, 64)).by_module_and_operator()
    spec = BackboneSpec.from_vit(vit, (8, 8))
    for i in vit.pruned_blocks:
        keep = vit.last_keep_masks[i][0]
        expected = block_cost(spec, i, keep, quantum=vit.bucket_quantum)
        flops, _, _ = split_operators(per_module[f"model.blocks.{i}"])
        # qkv, proj, fc1, fc2; q@k, attn@v (the fused kernel's products, in buckets)
        counted = flops["linear"] + flops["matmul"] + flops["scaled_dot_product_attention"]
        assert abs(counted - expected["total"]) <= 0.01 * expected["total"], (i, counted, expected)
        mlp, _, _ = split_operators(per_module[f"model.blocks.{i}.mlp"])
        assert sum(mlp.values()) == expected["mlp"]
        gate, _, _ = split_operators(per_module[f"model.gates.{i}"])
        assert gate["linear"] == 64 * (48 * 16 + 16 * 2)  # counted even if it keeps all


# --------------------------------------------------------------------------- whole models

def test_dense_total_matches_detectron2(dense):
    model, inputs, counts = dense
    reference = sum(D2FlopCountAnalysis(model, [inp]).total() for inp in inputs) / len(inputs)
    assert abs(counts.total - reference) <= 0.005 * reference
    assert counts.num_inputs == len(inputs) == len(counts.per_image)
    assert counts.backbone == counts.by_module["backbone.net"] > 0
    assert counts.neck == pytest.approx(counts.by_module["backbone"] - counts.backbone)
    assert counts.heads == pytest.approx(
        counts.by_module["proposal_generator"] + counts.by_module["roi_heads"])
    assert counts.total == pytest.approx(counts.backbone + counts.neck + counts.heads
                                         + counts.other)
    assert counts.keep_ratios == {} and counts.gates == 0
    assert "| model" in counts.table and "backbone.net" in counts.table


def test_svit_flops_follow_keep_ratio(dense):
    _, _, dense_counts = dense
    model, inputs = _model_and_inputs(SVIT_CFG, TINY_SVIT)
    vit = find_pruned_vit(model)
    saved = vit.inference_settings
    pruned = count_model_flops(model, inputs)
    full = count_model_flops(model, inputs, keep_all=True)
    assert vit.inference_settings is saved  # keep_all restores the configured settings
    assert full.backbone == dense_counts.backbone  # keep-all = the dense ViT's count
    assert pruned.keep_ratios == {1: 0.5, 2: 0.5, 3: 0.5}
    assert full.keep_ratios == {1: 1.0, 2: 1.0, 3: 1.0}
    assert pruned.gates > 0
    for i in (1, 2, 3):  # the MLP of a pruned block runs on the kept tokens only
        name = f"backbone.net.blocks.{i}.mlp"
        assert pruned.by_module[name] / full.by_module[name] == pytest.approx(0.5)
        ratio = pruned.by_module[f"backbone.net.blocks.{i}"] / full.by_module[
            f"backbone.net.blocks.{i}"]
        assert 0.25 < ratio < 0.75
    assert 0.5 < pruned.backbone / full.backbone < 0.9
    assert pruned.neck == full.neck


# --------------------------------------------------------------------------- command line

def _flops_cli(args, **kw):
    return run(["-m", "tokenprune.tools.flops", *args], **kw)


def test_cli_writes_report(tmp_path):
    out = tmp_path / "report" / "flops.json"
    proc = _flops_cli(["--config-file", SVIT_CFG, "--num-inputs", "1", "--depth", "3",
                       "--output", str(out), "--allow-untrained-gates", *TINY_SVIT])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["columns"]) == {"configured", "keep_all"}
    assert 0 < report["backbone_ratio"] < 1 and report["num_inputs"] == 1
    assert report["columns"]["configured"]["keep_ratios"] == {"1": 0.5, "2": 0.5, "3": 0.5}
    assert "#flops (keep all)" in proc.stdout and "uncounted operators" in proc.stdout
    assert not [p for p in os.listdir(out.parent) if p != "flops.json"]  # no temporary left


@pytest.mark.parametrize("case", ["zero_inputs", "negative_inputs", "missing_dataset",
                                  "unwritable_output"])
def test_cli_bad_input(tmp_path, case, capsys, monkeypatch):
    """In-process (``cli(argv)``); the real entry point is test_cli_writes_report's."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = tmp_path / "flops.json"
    flags, opts = [], list(TINY)
    if case == "zero_inputs":
        flags = ["--num-inputs", "0"]
    elif case == "negative_inputs":
        flags = ["--num-inputs", "-2"]
    elif case == "missing_dataset":
        opts.append("dataloader.test.dataset.names=coco_2017_val")
    else:
        out = blocker / "flops.json"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "no_datasets"))
    cli_error(flops_tool.cli, ["--config-file", DENSE_CFG, "--output", str(out), *flags, *opts],
              "python -m tokenprune.tools.flops", capsys)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
