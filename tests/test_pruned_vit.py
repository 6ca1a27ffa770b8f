"""PrunedViT: equivalence with Detectron2's ViT, exact token counts, preserve, gradients."""
import math

import pytest
import torch

from detectron2.modeling import ViT

from tokenprune.modeling import KeepPolicy, PrunedViT, attention_kernel, gumbel_keep_decision
from tokenprune.modeling.sparse_block import run_block_gathered, run_block_masked

SDPA = attention_kernel("sdpa")

TINY = dict(img_size=64, patch_size=8, embed_dim=48, depth=6, num_heads=3,
            pretrain_img_size=64, pretrain_use_cls_token=False)


def _pair(pruning=None, **kw):
    torch.manual_seed(0)
    args = {**TINY, **kw}
    dense = ViT(**args).eval()
    # non-zero relative position tables so that their indexing matters
    for name, p in dense.named_parameters():
        if "rel_pos" in name:
            torch.nn.init.normal_(p, std=0.2)
    pruned = PrunedViT(pruned_blocks=[2, 3, 4, 5], keep_ratios=0.5, **(pruning or {}),
                       **args).eval()
    missing, unexpected = pruned.load_state_dict(dense.state_dict(), strict=False)
    assert all(k.startswith("gates.") for k in missing) and not unexpected
    return dense, pruned


CONFIGS = {
    "global": dict(use_rel_pos=False),
    "global_relpos": dict(use_rel_pos=True),
    "window_relpos": dict(use_rel_pos=True, window_size=4, window_block_indexes=[0, 2, 3]),
    "window_pad_relpos": dict(use_rel_pos=True, window_size=3, window_block_indexes=[0, 2, 4]),
    "window": dict(use_rel_pos=False, window_size=4, window_block_indexes=[1, 2, 5]),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_keep_all_equals_dense_vit(name):
    dense, pruned = _pair(**CONFIGS[name])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), pruned.pruning(keep_ratio=1.0):
        a = dense(x)["last_feat"]
        b = pruned(x)["last_feat"]
    assert (a - b).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["global_relpos", "window_relpos", "window"])
def test_gathered_block_with_all_tokens_equals_dense_block(name):
    """The gather path itself (not the dense shortcut) reproduces ViTDet's block."""
    dense, _ = _pair(**CONFIGS[name])
    x = torch.randn(2, 8, 8, 48)
    keep = torch.ones(2, 64, dtype=torch.bool)
    with torch.no_grad():
        for blk in dense.blocks:
            ref = blk(x)
            assert (run_block_gathered(blk, x, keep, SDPA) - ref).abs().max() < 1e-4
            assert (run_block_masked(blk, x, keep.float()) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["global_relpos", "window_relpos", "window_pad_relpos"])
def test_gathered_subset_matches_masked_reference(name):
    """On a random subset (different per image) gather and key-masking agree exactly:
    relative positions follow grid coordinates, not packed positions."""
    dense, _ = _pair(**CONFIGS[name])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, 8, 48, generator=g)
    keep = torch.rand(3, 64, generator=g) < torch.tensor([[0.3], [0.6], [0.9]])
    with torch.no_grad():
        for blk in dense.blocks:
            a = run_block_gathered(blk, x, keep, SDPA)
            b = run_block_masked(blk, x, keep.float())
            assert (a - b).abs().max() < 1e-4
            # pruned tokens are untouched
            assert torch.equal(a.view(3, 64, 48)[~keep], x.view(3, 64, 48)[~keep])


@pytest.mark.parametrize("ratio", [0.3, 0.55, 1 / 3])
def test_fixed_ratio_processes_exact_count_and_preserves(ratio):
    _, pruned = _pair(dict(fixed_keep_ratio=ratio), **CONFIGS["window_relpos"])
    seen = {}

    def count_rows(i):
        def hook(mod, inp, out):
            seen[i] = inp[0].shape[0]  # MLP input: (M, C) packed kept tokens
        return hook

    for i in pruned.pruned_blocks:
        pruned.blocks[i].mlp.register_forward_hook(count_rows(i))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        inputs = {}
        # a gate sees its block's input tokens (B, N, C)
        handles = [pruned.gates[str(i)].register_forward_pre_hook(
            lambda m, a, i=i: inputs.__setitem__(i, a[0].clone())) for i in pruned.pruned_blocks]
        pruned(x)
        for h in handles:
            h.remove()
    k = math.ceil(ratio * 64)
    for i in pruned.pruned_blocks:
        assert seen[i] == 2 * k  # batch of 2, exactly ceil(r*N) tokens each
        keep = pruned.last_keep_masks[i]
        assert keep.sum(dim=1).tolist() == [k, k]
    # output of the last pruned block at pruned positions equals that block's input
    last = pruned.pruned_blocks[-1]
    keep = pruned.last_keep_masks[last]
    out = pruned(x)["last_feat"].permute(0, 2, 3, 1).reshape(2, 64, -1)
    assert torch.allclose(out[~keep], inputs[last].reshape(2, 64, -1)[~keep])


def test_dynamic_inference_keeps_at_least_one_token_and_small_images():
    _, pruned = _pair(**CONFIGS["window_relpos"])
    for gate in pruned.gates.values():  # force "drop everything"
        gate.fc2.bias.data = torch.tensor([-50.0, 50.0])
    with torch.no_grad():
        out = pruned(torch.randn(2, 3, 16, 16))["last_feat"]  # 2x2 grid < one 4x4 window
    assert out.shape == (2, 48, 2, 2)
    for r in pruned.last_keep_ratios.values():
        assert torch.allclose(r, torch.full((2,), 0.25))


def test_discard_zeroes_pruned_tokens_and_inherit_never_reactivates():
    _, pruned = _pair(dict(preserve=False), **CONFIGS["global_relpos"])
    assert not pruned.reactivate  # discarded tokens cannot come back
    with torch.no_grad(), pruned.pruning(keep_ratio={2: 0.8, 3: 0.6, 4: 0.5, 5: 0.4}):
        out = pruned(torch.randn(1, 3, 64, 64))["last_feat"]
    masks = [pruned.last_keep_masks[i] for i in pruned.pruned_blocks]
    for prev, cur in zip(masks, masks[1:]):
        assert not (cur & ~prev).any()
    dropped = ~masks[-1][0]
    assert torch.all(out[0].flatten(1)[:, dropped] == 0)


def test_inherit_gates_hold_their_decision_over_the_blocks_without_a_gate():
    """SViT's public inherit variant: gates at the stages' first blocks, each decision held
    by the next blocks (they run on the tokens still in play), in training and inference."""
    torch.manual_seed(0)
    held = PrunedViT(pruned_blocks=[2, 4], keep_ratios=[0.75, 0.5], reactivate=False,
                     dynamic=False, **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = held(x)["last_feat"]
    assert sorted(held.last_keep_masks) == [2, 3, 4, 5]  # blocks 3 and 5 hold 2's and 4's
    assert torch.equal(held.last_keep_masks[3], held.last_keep_masks[2])
    assert torch.equal(held.last_keep_masks[5], held.last_keep_masks[4])
    assert not (held.last_keep_masks[4] & ~held.last_keep_masks[2]).any()
    assert held.last_keep_ratios[3].tolist() == [0.75, 0.75]
    held.execution = "masked"  # the reference: every token computed, pruned ones as keys off
    with torch.no_grad():
        assert torch.allclose(held(x)["last_feat"], out, atol=1e-5)
    held.train()
    held(x)["last_feat"].sum().backward()
    assert sorted(held.last_keep_ratios) == [2, 3, 4, 5]
    assert held.gates["2"].fc2.weight.grad is not None
    # with reactivation, a block without a gate runs every token
    torch.manual_seed(0)
    free = PrunedViT(pruned_blocks=[2, 4], keep_ratios=[0.75, 0.5], dynamic=False, **TINY).eval()
    with torch.no_grad():
        free(x)
    assert sorted(free.last_keep_masks) == [2, 4]


def test_keep_policy_decides_top_k_threshold_inherit_and_per_image():
    score = torch.tensor([[3.0, -1.0, 2.0, -2.0], [-5.0, -4.0, -3.0, -6.0]])
    active = torch.tensor([[True, True, False, True], [True] * 4])
    dynamic = KeepPolicy().decide(0, score, active)
    assert dynamic.tolist() == [[True, False, True, False], [False, False, True, False]]
    top = KeepPolicy({0: 0.5}).decide(0, score, active)
    assert top.tolist() == [[True, False, True, False], [False, True, True, False]]
    inherit = KeepPolicy({0: 0.5}, inherit=True).decide(0, score, active)
    assert inherit[0].tolist() == [True, True, False, False]  # only active tokens compete
    scaled = KeepPolicy({0: 0.5}, (0.5, 2.0)).decide(0, score, active)
    assert scaled.sum(dim=1).tolist() == [1, 4]
    with pytest.raises(FloatingPointError, match="block 0 gave NaN keep scores"):
        KeepPolicy().decide(0, torch.full((1, 4), float("nan")), active[:1])
    with pytest.raises(ValueError, match="image_scales needs a forced keep_ratio"):
        KeepPolicy(image_scales=(1.0,))


def test_constructor_switches_become_the_configured_policy():
    fixed = PrunedViT(pruned_blocks=[2, 3], keep_ratios=[0.7, 0.5], dynamic=False,
                      reactivate=False, **TINY)
    assert fixed.inference_settings.policy == KeepPolicy({2: 0.7, 3: 0.5}, inherit=True)
    assert (fixed.dynamic, fixed.reactivate) == (False, False)
    forced = PrunedViT(pruned_blocks=[2, 3], keep_ratios=0.7, fixed_keep_ratio=0.4, **TINY)
    assert forced.inference_settings.policy == KeepPolicy({2: 0.4, 3: 0.4})
    discarding = PrunedViT(pruned_blocks=[2, 3], preserve=False, **TINY)
    assert discarding.inference_settings.policy == KeepPolicy(inherit=True)
    with pytest.raises(AttributeError):
        forced.reactivate = True  # configuration: constructor arguments, or pruning()


def test_keep_targets_one_number_a_list_or_svit_base():
    blocks = [1, 2, 3, 4, 5]
    one = PrunedViT(pruned_blocks=blocks, keep_ratios=0.5, **TINY)
    assert one.keep_ratios == dict.fromkeys(blocks, 0.5)
    assert PrunedViT(pruned_blocks=blocks, **TINY).keep_ratios == dict.fromkeys(blocks, 0.7)
    base = PrunedViT(pruned_blocks=blocks, keep_base=0.6, **TINY)  # stages of 5 // 3 blocks
    assert base.keep_ratios == {1: 0.6, 2: 0.6, 3: 0.36, 4: 0.36, 5: 0.216}
    for kwargs, message in [
            (dict(keep_ratios=0.5, keep_base=0.6), "give keep_ratios or keep_base, not both"),
            (dict(keep_base=1.2), r"keep_base must lie in \(0, 1\], got 1.2"),
            (dict(keep_ratios=1.5), r"keep_ratios must lie in \(0, 1\], got 1.5"),
            # the range is checked before the count
            (dict(keep_ratios=[1.5, 0.5]), r"must lie in \(0, 1\], got \[1.5, 0.5\]"),
            (dict(keep_ratios=[0.5, 0.5]), "2 entries for 5 pruned blocks")]:
        with pytest.raises(ValueError, match=message):
            PrunedViT(pruned_blocks=blocks, **kwargs, **TINY)


def test_pruning_takes_a_policy_and_swaps_one_settings_object():
    _, pruned = _pair(**CONFIGS["window_relpos"])
    configured = pruned.inference_settings
    assert configured.policy == KeepPolicy() and configured.gates
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with pruned.pruning(keep_ratio=0.3):
            by_ratio = pruned(x)["last_feat"]
            assert not pruned.dynamic and pruned.inference_settings.kernel is configured.kernel
        with pruned.pruning(policy=KeepPolicy({i: 0.3 for i in pruned.pruned_blocks})):
            assert torch.equal(pruned(x)["last_feat"], by_ratio)
    assert pruned.inference_settings is configured
    with pytest.raises(ValueError, match="not both"):
        with pruned.pruning(keep_ratio=0.3, policy=KeepPolicy()):
            pass
    with pytest.raises(ValueError, match="every pruned block"):
        with pruned.pruning(policy=KeepPolicy({2: 0.5})):
            pass
    discarding = PrunedViT(pruned_blocks=[2, 3], preserve=False, **TINY)
    with pytest.raises(ValueError, match="needs an inherit policy"):
        with discarding.pruning(policy=KeepPolicy()):
            pass
    assert pruned.inference_settings is configured


def test_gradients_reach_every_gate_and_loss_is_reported():
    _, pruned = _pair(**CONFIGS["window_relpos"])
    pruned.train()
    out = pruned(torch.randn(2, 3, 64, 64))["last_feat"]
    loss = out.square().mean() + pruned.last_keep_ratio_loss
    loss.backward()
    for i, gate in pruned.gates.items():
        grads = [p.grad for p in gate.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), i
    assert set(pruned.last_keep_ratios) == set(pruned.pruned_blocks)


def test_windowed_dense_checkpoint_loads_into_global_pruned_model(tmp_path):
    """Only gate weights are new; window-sized rel-pos tables are resized to the grid."""
    from tokenprune.checkpoint import TokenPruneCheckpointer

    dense, _ = _pair(**CONFIGS["window_relpos"])
    torch.save({"model": dense.state_dict()}, tmp_path / "dense.pth")
    pruned = PrunedViT(pruned_blocks=[2, 3, 4, 5], keep_ratios=0.5,
                       **{**TINY, "use_rel_pos": True}).eval()  # global attention everywhere
    assert pruned.blocks[0].attn.rel_pos_h.shape[0] == 15 != dense.blocks[0].attn.rel_pos_h.shape[0]
    incompatible = TokenPruneCheckpointer(pruned)._load_model(
        {"model": dict(dense.state_dict())})
    assert all(k.startswith("gates.") for k in incompatible.missing_keys)
    assert not incompatible.incorrect_shapes and not incompatible.unexpected_keys
    # a global block's table (unchanged length) is copied as is
    assert torch.equal(pruned.blocks[1].attn.rel_pos_h, dense.blocks[1].attn.rel_pos_h)


def test_gumbel_noise_scales_from_sampling_to_the_inference_threshold():
    torch.manual_seed(0)
    p_keep = torch.tensor([0.3, 0.6]).repeat(20000)
    log_probs = torch.stack([p_keep, 1 - p_keep], dim=-1).log()[None].requires_grad_()
    sampled = gumbel_keep_decision(log_probs, noise=1.0)
    assert set(sampled.unique().tolist()) <= {0.0, 1.0}
    assert sampled[0, 0::2].mean().item() == pytest.approx(0.3, abs=0.02)
    assert sampled[0, 1::2].mean().item() == pytest.approx(0.6, abs=0.02)
    halved = gumbel_keep_decision(log_probs, noise=0.5)[0, 0::2].mean().item()
    assert 0.0 < halved < 0.25  # less noise: closer to the threshold's 0
    exact = gumbel_keep_decision(log_probs, noise=0.0)
    assert torch.equal(exact[0], (p_keep > 0.5).float())
    exact.sum().backward()  # straight-through gradients at every noise scale
    assert log_probs.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="noise"):
        gumbel_keep_decision(log_probs, noise=-0.1)


def test_noiseless_training_decisions_are_the_dynamic_inference_ones():
    _, pruned = _pair(**CONFIGS["global_relpos"])
    for gate in pruned.gates.values():  # undecided gates: about half the tokens kept
        torch.nn.init.normal_(gate.fc2.weight, std=1.0)
        gate.fc2.bias.data.zero_()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pruned(x)
        inference = {i: r.clone() for i, r in pruned.last_keep_ratios.items()}
        pruned.train()
        pruned.gumbel_noise = 0.0
        pruned(x)
    assert all(0.1 < r.mean() < 0.9 for r in inference.values()), inference
    for i, r in inference.items():
        assert torch.equal(pruned.last_keep_ratios[i], r), i


def test_nan_gate_score_raises_instead_of_keeping_one_token():
    _, pruned = _pair(**CONFIGS["window_relpos"])
    x = torch.randn(1, 3, 64, 64)
    x[..., :16, :16] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN keep scores"):
        pruned.eval()(x)


def _policy_attention_reference(logits, v, w):
    """DynamicViT's softmax with policy, step by step (every (L, L) tensor materialised)."""
    L = logits.shape[-1]
    eye = torch.eye(L, dtype=logits.dtype)
    weight = w[:, None, None, :] * (1 - eye) + eye
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp() * weight
    return (e / e.sum(dim=-1, keepdim=True)) @ v


@pytest.mark.parametrize("weights", ["hard", "soft"])
def test_fused_policy_attention_matches_the_reference_and_its_gradients(weights):
    from tokenprune.modeling.attention import PolicyAttention

    torch.manual_seed(0)
    G, nh, L, hd = 2, 3, 7, 4
    logits = torch.randn(G, nh, L, L, dtype=torch.double, requires_grad=True)
    v = torch.randn(G, nh, L, hd, dtype=torch.double, requires_grad=True)
    w = torch.rand(G, L, dtype=torch.double)
    w = (w > 0.5).double() if weights == "hard" else w
    w.requires_grad_(True)
    torch.autograd.gradcheck(PolicyAttention.apply, (logits, v, w))
    g = torch.randn(G, nh, L, hd, dtype=torch.double)
    got = torch.autograd.grad((PolicyAttention.apply(logits, v, w) * g).sum(), (logits, v, w))
    want = torch.autograd.grad((_policy_attention_reference(logits, v, w) * g).sum(),
                               (logits, v, w))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-10)
    assert got[2].abs().sum() > 0  # pruned keys (w = 0) get a gradient too
