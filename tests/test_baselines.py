"""Baseline token reducers: DynamicViT (fixed top-k, discard), EViT (attention), ToMe
(merging), random keep, and the heavier attention gate -- each on small tensors."""
import math

import pytest
import torch

from detectron2.modeling import ViT
from detectron2.modeling.backbone.utils import (
    add_decomposed_rel_pos, window_partition, window_unpartition,
)

from tokenprune.modeling import ATTENTION_KERNELS, PrunedViT, attention_kernel
from tokenprune.modeling.baselines import AttentionNetGate, mean_received_attention
from tokenprune.modeling.gates import GATE_REGISTRY, registry_name
from tokenprune.modeling.tome import bipartite_merge, run_block_on_merged, unmerge

TINY = dict(img_size=64, patch_size=8, embed_dim=48, depth=5, num_heads=3,
            pretrain_img_size=64, pretrain_use_cls_token=False, use_rel_pos=True)
RATIOS = [0.7, 0.49, 0.343]


def _vit(cls=PrunedViT, seed=0, **kw):
    torch.manual_seed(seed)
    model = cls(**{**TINY, **kw}).eval()
    for name, p in model.named_parameters():
        if "rel_pos" in name:  # non-zero tables, so relative positions matter
            torch.nn.init.normal_(p, std=0.2)
    return model


def _capture_gate_io(model):
    """{block: (gate input (B, N, C), gate output log-probs)} of the next forward."""
    seen = {}
    for i, gate in model.gates.items():
        gate.register_forward_hook(
            lambda m, a, out, i=int(i): seen.__setitem__(i, (a[0].clone(), out.clone())))
    return seen


# --------------------------------------------------------------------------- DynamicViT

def test_dynamicvit_is_fixed_topk_of_the_mlp_gate_with_discarding():
    """preserve=False + dynamic=False: exactly ceil(r*N) tokens per block, the top-k by the
    gate's keep-minus-drop score among the tokens still alive; the rest are zero at the end."""
    model = _vit(pruned_blocks=[2, 3, 4], keep_ratios=RATIOS, gate="mlp",
                 preserve=False, dynamic=False)
    assert not model.reactivate  # discarded tokens cannot come back
    for gate in model.gates.values():  # a gate with a real opinion
        torch.nn.init.normal_(gate.fc2.weight, std=1.0)
    seen = _capture_gate_io(model)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))["last_feat"]
    alive = torch.ones(2, 64, dtype=torch.bool)
    for i, r in zip([2, 3, 4], RATIOS):
        keep = model.last_keep_masks[i]
        k = math.ceil(r * 64)
        assert keep.sum(dim=1).tolist() == [k, k]
        assert not (keep & ~alive).any()
        score = seen[i][1][..., 0] - seen[i][1][..., 1]
        score = score.masked_fill(~alive, float("-inf"))
        top = torch.zeros_like(keep).scatter_(1, score.topk(k, dim=1).indices, True)
        assert torch.equal(keep, top)
        alive = keep
    assert torch.all(out.flatten(2).transpose(1, 2)[~alive] == 0)


# --------------------------------------------------------------------------- EViT

def _reference_received(block, x, hw):
    """Mean attention received per token, from Detectron2's own attention formulas."""
    B, N, C = x.shape
    H, W = hw
    h = block.norm1(x.view(B, H, W, C))
    ws = block.window_size
    if ws > 0:
        h, pad_hw = window_partition(h, ws)
    G, fh, fw, _ = h.shape
    attn = block.attn
    nh = attn.num_heads
    qkv = attn.qkv(h).reshape(G, fh * fw, 3, nh, -1).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.reshape(3, G * nh, fh * fw, -1).unbind(0)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    logits = add_decomposed_rel_pos(logits, q, attn.rel_pos_h, attn.rel_pos_w, (fh, fw), (fh, fw))
    received = logits.softmax(dim=-1).view(G, nh, fh * fw, fh * fw).mean(dim=(1, 2))
    received = received.view(G, fh, fw, 1)
    if ws > 0:
        received = window_unpartition(received, ws, pad_hw, (H, W))
    return received.reshape(B, N)


@pytest.mark.parametrize("window", [0, 4])
def test_attention_score_is_the_mean_attention_each_token_receives(window):
    model = _vit(window_size=window, window_block_indexes=[0, 1, 2, 3, 4] if window else [])
    block = model.blocks[1]
    x = torch.randn(2, 64, 48)
    with torch.no_grad():
        ref = _reference_received(block, x, (8, 8))
        got, keys = mean_received_attention(block, x, (8, 8))
    assert torch.allclose(got, ref, atol=1e-6)
    assert torch.all(keys == (16 if window else 64))
    # every query's attention sums to 1, so a frame's received attention sums to 1
    assert torch.allclose(got.sum(dim=1), torch.full((2,), 4.0 if window else 1.0))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.7])
def test_attention_gate_keeps_exactly_the_most_attended_tokens(ratio):
    """EViT variant: the kept tokens are exactly the top ceil(r*N) by mean received attention
    in the block about to run (its input = patch embedding + position embedding)."""
    model = _vit(pruned_blocks=[0, 3], keep_ratios=ratio, gate="attention", dynamic=False,
                 reactivate=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
        tokens = model.patch_embed(x) + model.pos_embed.view(1, 8, 8, 48)
        ref = _reference_received(model.blocks[0], tokens.view(2, 64, 48), (8, 8))
    k = math.ceil(ratio * 64)
    keep = model.last_keep_masks[0]
    top = torch.zeros_like(keep).scatter_(1, ref.topk(k, dim=1).indices, True)
    assert torch.equal(keep, top)
    # inherit: block 3 keeps a subset of block 0's tokens; no parameters, no loss
    assert not (model.last_keep_masks[3] & ~keep).any()
    assert sum(p.numel() for p in model.gates.parameters()) == 0


def test_attention_gate_trains_with_hard_topk_and_no_keep_ratio_loss():
    model = _vit(pruned_blocks=[2, 3, 4], keep_ratios=RATIOS, gate="attention", dynamic=False,
                 reactivate=False).train()
    out = model(torch.randn(2, 3, 64, 64))["last_feat"]
    out.square().mean().backward()
    assert model.last_keep_ratio_loss is None
    for i, r in zip([2, 3, 4], RATIOS):
        assert torch.allclose(model.last_keep_ratios[i], torch.full((2,), math.ceil(r * 64) / 64))
    assert model.blocks[4].mlp.fc1.weight.grad is not None


# --------------------------------------------------------------------------- ToMe

@pytest.mark.parametrize("n", [64, 40, 33, 32, 20, 7, 1])
def test_merge_unmerge_round_trip(n):
    torch.manual_seed(0)
    x = torch.randn(2, 64, 16)
    tokens, state = bipartite_merge(x, n, (8, 8))
    assert tokens.shape == (2, n, 16) and state.assign.shape == (2, 64)
    assert state.size.shape == state.pos.shape == (2, n)
    for b in range(2):
        counts = torch.bincount(state.assign[b], minlength=n)
        assert torch.equal(counts.float(), state.size[b])  # every merged token has sources
        assert (state.pos[b][1:] > state.pos[b][:-1]).all()  # sorted grid positions
        # a merged token sits at one of its sources and is the mean of its sources
        assert torch.equal(state.assign[b][state.pos[b]], torch.arange(n))
        means = torch.zeros(n, 16).index_add_(0, state.assign[b], x[b]) / counts[:, None]
        assert torch.allclose(tokens[b], means, atol=1e-5)
    full = unmerge(tokens, state)
    assert full.shape == x.shape
    # positions merged together share their merged feature
    assert torch.equal(full, tokens.gather(1, state.assign[..., None].expand(-1, -1, 16)))
    for b in range(2):
        for j in range(n):
            group = full[b][state.assign[b] == j]
            assert torch.equal(group, group[:1].expand_as(group))
    if n == 64:
        assert torch.equal(full, x)


def test_merge_takes_the_most_similar_pair_first():
    x = torch.eye(8)[None]  # orthogonal tokens ...
    x[0, 5] = 2 * x[0, 2]  # ... except A-token 2 and B-token 5 (cosine similarity 1)
    tokens, state = bipartite_merge(x, 7, (2, 4))
    assert state.assign[0, 2] == state.assign[0, 5]
    assert state.size[0].tolist().count(2.0) == 1
    assert torch.allclose(tokens[0, state.assign[0, 5]], 1.5 * torch.eye(8)[2])


@pytest.mark.parametrize("kernel", ATTENTION_KERNELS)
@pytest.mark.parametrize("window", [0, 4])
def test_block_on_unmerged_tokens_equals_the_dense_block(window, kernel):
    """With nothing merged (sizes 1) the merged-token block is exactly ViTDet's block."""
    model = _vit(window_size=window, window_block_indexes=[0, 1, 2, 3, 4] if window else [])
    x = torch.randn(2, 8, 8, 48)
    tokens, state = bipartite_merge(x.view(2, 64, 48), 64, (8, 8))
    with torch.no_grad():
        for blk in model.blocks:
            got = run_block_on_merged(blk, tokens, state, attention_kernel(kernel))
            assert (got.view(2, 8, 8, 48) - blk(x)).abs().max() < 1e-4


@pytest.mark.parametrize("window", [0, 3])
def test_merged_block_kernels_agree_with_proportional_attention(window):
    """Merged tokens (sizes > 1, so the log-size key bias matters): every kernel and bucket
    size computes the eager kernel's block."""
    model = _vit(window_size=window, window_block_indexes=[0, 1, 2, 3, 4] if window else [])
    x = torch.randn(2, 64, 48)
    tokens, state = bipartite_merge(x, 23, (8, 8))
    assert state.size.max() > 1
    with torch.no_grad():
        for blk in model.blocks:
            ref = run_block_on_merged(blk, tokens, state, attention_kernel("eager"), 0)
            flat = run_block_on_merged(blk, tokens, state, attention_kernel("eager"), 0,
                                       proportional=False)
            assert (flat - ref).abs().max() > 1e-3  # the key bias changes the result
            for kernel in ATTENTION_KERNELS:
                for quantum in (0, 4):
                    got = run_block_on_merged(blk, tokens, state, attention_kernel(kernel),
                                              quantum)
                    assert (got - ref).abs().max() < 1e-5, (kernel, quantum)


def test_pruned_vit_with_tome_reducer_merges_and_restores_the_full_map():
    dense = _vit(ViT, window_size=4, window_block_indexes=[0, 3])
    model = PrunedViT(pruned_blocks=[2, 3, 4], keep_ratios=RATIOS, reducer="tome",
                      **{**TINY, "window_size": 4, "window_block_indexes": [0, 3]}).eval()
    assert model.load_state_dict(dense.state_dict())  # no gate weights: strict load
    assert len(model.gates) == 0
    rows = {}
    for i in (2, 3, 4):
        model.blocks[i].mlp.register_forward_hook(
            lambda m, a, o, i=i: rows.__setitem__(i, a[0].reshape(-1, 48).shape[0]))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)["last_feat"]
        assert out.shape == (2, 48, 8, 8)
        for i, r in zip((2, 3, 4), RATIOS):
            k = math.ceil(r * 64)
            assert rows[i] == 2 * k  # the block computed k merged tokens per image
            assert torch.allclose(model.last_keep_ratios[i], torch.full((2,), k / 64))
        # the last block's output: merged positions share their feature (k distinct rows)
        flat = out.flatten(2).transpose(1, 2)
        assert len(torch.unique(flat[0], dim=0)) <= math.ceil(RATIOS[-1] * 64)
        with model.pruning(keep_ratio=1.0):
            assert (model(x)["last_feat"] - dense(x)["last_feat"]).abs().max() < 1e-4
        with model.pruning(attention="eager"):  # the reducer follows the model's kernel
            assert (model(x)["last_feat"] - out).abs().max() < 1e-5
    model.train()
    model(x)["last_feat"].square().mean().backward()
    assert model.last_keep_ratio_loss is None
    assert model.blocks[2].attn.qkv.weight.grad is not None


# --------------------------------------------------------------------------- random

@pytest.mark.parametrize("training", [False, True])
def test_random_gate_keeps_ceil_rn_tokens_and_draws_differ(training):
    model = _vit(pruned_blocks=[2, 3, 4], keep_ratios=RATIOS, gate="random", dynamic=False)
    model.train(training)
    masks = []
    x = torch.randn(2, 3, 64, 64)
    for _ in range(2):
        with torch.set_grad_enabled(training):
            model(x)
        masks.append(dict(model.last_keep_ratios))
        for i, r in zip([2, 3, 4], RATIOS):
            assert torch.allclose(model.last_keep_ratios[i],
                                  torch.full((2,), math.ceil(r * 64) / 64))
        if not training:
            masks[-1] = {i: m.clone() for i, m in model.last_keep_masks.items()}
    if not training:
        assert any(not torch.equal(masks[0][i], masks[1][i]) for i in (2, 3, 4))
        for i, r in zip([2, 3, 4], RATIOS):
            assert masks[0][i].sum(dim=1).tolist() == [math.ceil(r * 64)] * 2
    assert model.last_keep_ratio_loss is None


def test_random_gate_draws_are_uniform():
    """Every token is kept about equally often over many draws."""
    model = _vit(pruned_blocks=[1], keep_ratios=0.5, gate="random", dynamic=False, depth=2)
    torch.manual_seed(3)
    counts = torch.zeros(64)
    with torch.no_grad():
        for _ in range(200):
            model(torch.zeros(1, 3, 64, 64))
            counts += model.last_keep_masks[1][0].float()
    assert counts.sum() == 200 * 32
    assert counts.min() > 60 and counts.max() < 140  # mean 100


# --------------------------------------------------------------------------- heavier gate

def test_attention_net_gate_sees_the_whole_image_and_trains():
    assert registry_name(GATE_REGISTRY, "attention_net", "gate") == "AttentionNetGate"
    gate = AttentionNetGate(dim=48)
    x = torch.randn(1, 64, 48)
    out = gate(x)
    assert out.shape == (1, 64, 2)
    assert torch.allclose(out.exp().sum(-1), torch.ones(1, 64))
    y = x.clone()
    y[0, 0] = torch.randn(48)
    # unlike the per-token MLP gate, another token's score moves
    assert (gate(y)[0, 10] - out[0, 10]).abs().max() > 1e-6
    model = _vit(pruned_blocks=[2, 3, 4], keep_ratios=RATIOS, gate="attention_net").train()
    out = model(torch.randn(2, 3, 64, 64))["last_feat"]
    loss = out.square().mean() + model.last_keep_ratio_loss
    loss.backward()
    for i, g in model.gates.items():
        assert all(p.grad is not None for p in g.parameters()), i
