"""torch.compile of PrunedViT's blocks (modeling/compiled.py): the eager outputs, a bounded
number of graphs whatever the gates keep, no graph break; bfloat16 on the CPU."""
import pytest
import torch
from torch._dynamo.utils import counters

from tokenprune.modeling import PrunedViT, compile_model, compile_unavailable
from tokenprune.modeling.compiled import COMPILE_MODES, inductor_options

from test_pruned_vit import CONFIGS, TINY


def _gated_vit(config: str) -> PrunedViT:
    """A tiny PrunedViT whose random gates keep a different number of tokens per image."""
    torch.manual_seed(0)
    vit = PrunedViT(pruned_blocks=[2, 3, 4, 5], keep_ratios=0.5, **TINY,
                    **CONFIGS[config]).eval()
    for name, p in vit.named_parameters():
        if "rel_pos" in name:
            torch.nn.init.normal_(p, std=0.2)
    for gate in vit.gates.values():
        torch.nn.init.normal_(gate.fc2.weight, std=0.5)
        torch.nn.init.zeros_(gate.fc2.bias)
    return vit


def test_compiled_blocks_give_eager_outputs_in_few_graphs():
    """Learned (here random) gates over 8 images: different kept counts per image and per
    window, one graph per block kind (dense / gathered, windowed / global, padded or not),
    no graph break, and the eager outputs; the dense ViT too."""
    vit = _gated_vit("window_pad_relpos")  # windows of 3 on a 8x8 grid: padded windows
    images = [torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(k))
              for k in range(8)]
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        eager = [vit(x)["last_feat"] for x in images]
        kept = {tuple(int(m.sum()) for m in vit.last_keep_masks.values())}
        for x in images[:-1]:
            vit(x)
            kept.add(tuple(int(m.sum()) for m in vit.last_keep_masks.values()))
        assert len(kept) >= 6, kept  # the gates keep other counts on other images
        with vit.pruning(compile="default"):
            compiled = [vit(x)["last_feat"] for x in images]
            with vit.pruning(gates=False):
                dense_compiled = vit(images[0])["last_feat"]
        with vit.pruning(gates=False):
            dense = vit(images[0])["last_feat"]
    for a, b in zip(eager, compiled):
        assert (a - b).abs().max().item() < 1e-4
    assert (dense - dense_compiled).abs().max().item() < 1e-4
    assert counters["graph_break"] == {} or sum(counters["graph_break"].values()) == 0
    # dense windowed / global / first block (no drop path), gathered windowed / global
    assert 2 <= counters["stats"]["unique_graphs"] <= 6, dict(counters["stats"])


def test_compile_model_and_switches():
    """compile_model compiles the blocks and wraps the model; bad modes are refused."""
    vit = _gated_vit("global_relpos")
    assert compile_model(vit, "none") is vit and vit.inference_settings.compile == "none"
    assert compile_unavailable("cpu") is None  # this machine has a C++ compiler
    compiled = compile_model(vit, "freeze")
    assert compiled is not vit and compiled._orig_mod is vit
    assert vit.inference_settings.compile == "freeze"
    assert inductor_options("freeze") == {"freezing": True}
    assert inductor_options("default") is None
    for bad in ("fast", "None"):
        with pytest.raises(ValueError, match="compile must be one of none, default, freeze"):
            vit.compile_blocks(bad)
        with pytest.raises(ValueError, match="compile mode must be one of"):
            compile_model(vit, bad)
    with pytest.raises(ValueError, match="not flex"):
        with vit.pruning(attention="flex"):
            pass
    vit.compile_blocks("none")
    with vit.pruning(attention="flex"), pytest.raises(ValueError, match="not flex"):
        vit.compile_blocks("default")
    assert COMPILE_MODES == ("none", "default", "freeze")


def test_bfloat16_inference_matches_float32_on_cpu():
    """Under bfloat16 autocast on the CPU the dense and the pruned backbone (the gates
    deciding) give float32's features within bfloat16's precision, and the gates take
    nearly the same decisions."""
    vit = _gated_vit("window_relpos")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for gates in (False, True):
            with vit.pruning(gates=gates):
                ref = vit(x)["last_feat"]
                masks = {i: m.clone() for i, m in vit.last_keep_masks.items()}
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    low = vit(x)["last_feat"]
            rel = (low.float() - ref).norm() / ref.norm()
            assert 1e-4 < rel < 0.03, (gates, rel)  # computed in bfloat16, close
            for i, m in masks.items():  # decisions near the threshold may flip
                assert (vit.last_keep_masks[i] == m).float().mean() > 0.9
