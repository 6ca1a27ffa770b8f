"""The attention kernels (eager / SDPA / FlexAttention), bucketed groups, per-image rates.

Every kernel must compute Detectron2's attention: the SDPA dense block equals Detectron2's
``Block.forward``; every kernel and bucket size of the gathered block equals the masked
reference on random subsets; bucketing only ever removes padding.
"""
import pytest
import torch

from detectron2.modeling import ViT

from tokenprune.modeling import ATTENTION_KERNELS, DEFAULT_ATTENTION, PrunedViT, attention_kernel
from tokenprune.modeling.keep_policy import keep_count
from tokenprune.modeling.sparse_block import (group_kept_tokens, run_block_dense,
                                             run_block_gathered, run_block_masked)

TINY = dict(img_size=64, patch_size=8, embed_dim=48, depth=4, num_heads=3,
            pretrain_img_size=64, pretrain_use_cls_token=False, use_rel_pos=True)
CONFIGS = {
    "global": dict(window_size=0, window_block_indexes=[]),
    "window": dict(window_size=4, window_block_indexes=[0, 1, 2, 3]),
    "window_pad": dict(window_size=3, window_block_indexes=[0, 1, 2, 3]),  # 8 = 3 + 3 + 2
}


def _vit(name, cls=ViT, **kw):
    torch.manual_seed(0)
    vit = cls(**TINY, **CONFIGS[name], **kw).eval()
    for n, p in vit.named_parameters():
        if "rel_pos" in n:
            torch.nn.init.normal_(p, std=0.2)
    return vit


def test_kernels_are_objects_chosen_once_by_name():
    assert ATTENTION_KERNELS == ("eager", "sdpa", "flex")
    assert all(attention_kernel(n).name == n for n in ATTENTION_KERNELS)
    assert attention_kernel("sdpa") is attention_kernel("sdpa")  # stateless, one each
    assert attention_kernel("eager").block_forward  # dense blocks: Detectron2's forward
    assert not attention_kernel("sdpa").block_forward
    assert not attention_kernel("flex").block_forward
    vit = _vit("global", PrunedViT, pruned_blocks=[1], keep_ratios=0.5)
    assert vit.inference_settings.kernel is attention_kernel(DEFAULT_ATTENTION)
    assert DEFAULT_ATTENTION == "sdpa"
    with pytest.raises(ValueError, match="attention must be one of eager, sdpa, flex"):
        _vit("global", PrunedViT, attention="fast")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sdpa_dense_block_equals_detectron2(name):
    vit = _vit(name)
    x = torch.randn(2, 8, 8, 48)
    with torch.no_grad():
        for blk in vit.blocks:
            ref = blk(x)
            assert torch.equal(run_block_dense(blk, x, attention_kernel("eager")), ref)
            for kernel in ("sdpa", "flex"):  # flex: equal groups run SDPA's fused kernel
                out = run_block_dense(blk, x, attention_kernel(kernel))
                assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("kernel,quantum", [("eager", 0), ("sdpa", 0), ("sdpa", 1),
                                            ("sdpa", 4), ("eager", 4), ("flex", 0)])
def test_gathered_kernels_equal_masked_reference(name, kernel, quantum):
    vit = _vit(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, 8, 48, generator=g)
    keep = torch.rand(3, 64, generator=g) < torch.tensor([[0.2], [0.5], [0.9]])
    with torch.no_grad():
        for blk in vit.blocks:
            ref = run_block_masked(blk, x, keep.float())
            out = run_block_gathered(blk, x, keep, attention_kernel(kernel), quantum)
            assert (out - ref).abs().max() < 1e-5
            assert torch.equal(out.view(3, 64, 48)[~keep], x.view(3, 64, 48)[~keep])


def test_buckets_remove_padding():
    g = torch.Generator().manual_seed(2)
    keep = torch.rand(2, 16 * 16, generator=g) < torch.tensor([[0.15], [0.6]])
    groups = group_kept_tokens(keep, (16, 16), window_size=4)
    per_window = keep.view(2, 4, 4, 4, 4).sum(dim=(2, 4))  # (image, window row, window col)
    assert groups.counts == [c for c in per_window.flatten().tolist() if c]  # empty: no group
    assert groups.bucket_lengths(0) == [max(groups.counts)] * groups.num_groups
    assert groups.bucket_lengths(1) == groups.counts  # no padding at all
    padded = sum(groups.bucket_lengths(4))
    assert sum(groups.counts) <= padded < groups.num_groups * max(groups.counts)
    buckets = groups.buckets(4)
    assert all(b.length % 4 == 0 or b.length == groups.length for _, b in buckets)
    rows = torch.cat([r for r, _ in buckets])
    assert sorted(rows.tolist()) == list(range(int(keep.sum())))  # every token exactly once
    assert sum(b.num_groups for _, b in buckets) == groups.num_groups


def test_pruned_vit_kernels_and_per_image_rates():
    dense = _vit("window_pad")
    pruned = _vit("window_pad", PrunedViT, pruned_blocks=[1, 2, 3], keep_ratios=0.5)
    pruned.load_state_dict(dense.state_dict(), strict=False)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = dense(x)["last_feat"]
        for kernel in ("eager", "sdpa", "flex"):
            with pruned.pruning(keep_ratio=1.0, attention=kernel):
                assert (pruned(x)["last_feat"] - ref).abs().max() < 1e-5
        outs = {}
        for kernel in ("eager", "sdpa", "flex"):
            with pruned.pruning(keep_ratio=0.5, attention=kernel, image_scales=[0.5, 1.0, 1.9]):
                outs[kernel] = pruned(x)["last_feat"]
                counts = {i: m.sum(dim=1).tolist() for i, m in pruned.last_keep_masks.items()}
        assert pruned.inference_settings.kernel is attention_kernel("sdpa")  # restored
    assert (outs["sdpa"] - outs["eager"]).abs().max() < 1e-5
    assert (outs["flex"] - outs["eager"]).abs().max() < 1e-5
    expected = [keep_count(0.25, 64), keep_count(0.5, 64), keep_count(0.95, 64)]
    assert all(c == expected for c in counts.values()) and expected == [16, 32, 61]
    with pytest.raises(ValueError, match="image_scales has 2 factors for a batch of 3"):
        with torch.no_grad(), pruned.pruning(keep_ratio=0.5, image_scales=[1.0, 1.0]):
            pruned(x)
    with pytest.raises(ValueError, match="attention must be one of"):
        with pruned.pruning(attention="fast"):
            pass


def test_bf16_autocast_gathered_close_to_fp32():
    pruned = _vit("window", PrunedViT, pruned_blocks=[1, 2, 3], keep_ratios=0.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), pruned.pruning(keep_ratio=0.4, image_scales=[0.7, 1.3]):
        ref = pruned(x)["last_feat"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = pruned(x)["last_feat"].float()
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() / ref.abs().max() < 0.05


def test_torch_compile_traces_the_pruned_forward():
    """The gathered path runs under torch.compile (aot_eager: the tracing, not a C++ build)."""
    pruned = _vit("window_pad", PrunedViT, pruned_blocks=[1, 2, 3], keep_ratios=0.5)
    compiled = torch.compile(pruned, backend="aot_eager")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), pruned.pruning(keep_ratio=0.5):
        ref = pruned(x)["last_feat"]
        out = compiled(x)["last_feat"]
    assert (out - ref).abs().max() < 1e-5
