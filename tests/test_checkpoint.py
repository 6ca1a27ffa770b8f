"""Checkpoints from the three real sources, in their exact on-disk formats.

* Detectron2 model zoo: a pickle ``{"model": {name: numpy array}, "__author__": ...}``
  (windowed ViTDet, rel-pos tables of other sizes than SViT's global blocks);
* MAE pretrain: ``model.`` keys without ``backbone.net.``, ``cls_token``, a final ``norm.*``
  of the embedding width (the width of every ``MLPGate.norm``), ``pos_embed`` for 14x14
  patches, loaded through ``?matching_heuristics=True`` as a local path and a URL;
* the project's own ``.pth`` (written by the trainer's checkpointer).
"""
import os
import pickle

import numpy as np
import pytest
import torch

from detectron2.config import instantiate

from helpers import DENSE_CFG, SVIT_CFG, TINY, TINY_SVIT
from tokenprune.checkpoint import TokenPruneCheckpointer, resize_to
from tokenprune.config import load_config
from tokenprune.engine import verify_checkpoint
from tokenprune.errors import CheckpointError

EMBED = 96  # TINY's width


def _model(cfg_file, opts):
    torch.manual_seed(0)
    return instantiate(load_config(cfg_file, opts).model).eval()


def _dense():
    """Windowed blocks 0 and 2 (8x8-window tables, 15 rows), rel-pos tables as if trained
    (ViTDet starts them at zero)."""
    model = _model(DENSE_CFG, TINY)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.normal_()
    return model


def _svit_global():
    return _model(SVIT_CFG, TINY_SVIT + ["model.backbone.net.window_block_indexes=[]"])


def _write_model_zoo_pkl(path, state):
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()},
                     "__author__": "Detectron2 Model Zoo"}, f)
    return str(path)


def test_model_zoo_pickle_resizes_numpy_rel_pos_and_only_gates_are_new(tmp_path):
    dense = _dense()
    state = dense.state_dict()
    path = _write_model_zoo_pkl(tmp_path / "model_final_abc123.pkl", state)
    svit = _svit_global()
    report = verify_checkpoint(svit, path, strict=False)
    assert report.new and all(k.startswith("backbone.net.gates.") for k in report.new)
    windowed = {f"backbone.net.blocks.{i}.attn.rel_pos_{a}" for i in (0, 2) for a in "hw"}
    assert set(report.resized) == windowed
    own = svit.state_dict()
    for key in windowed:  # resized from 15 to 31 rows, not left at the zero init
        assert own[key].shape[0] == 31 and state[key].shape[0] == 15
        assert torch.allclose(own[key], resize_to(key, state[key], own[key].shape))
        assert own[key].abs().sum() > 0
    key = "backbone.net.blocks.1.attn.rel_pos_h"  # global in both: copied as is
    assert torch.equal(own[key], state[key])
    assert torch.equal(own["backbone.net.blocks.3.mlp.fc1.weight"],
                       state["backbone.net.blocks.3.mlp.fc1.weight"])
    assert "new 18 (backbone.net.gates.1.fc1" in report.summary()  # 3 gates x 6 tensors


@pytest.mark.parametrize("defect", ["missing", "unresizable"])
def test_backbone_tensor_left_at_init_is_an_error(defect, tmp_path):
    state = _dense().state_dict()
    key = "backbone.net.blocks.1.mlp.fc1.weight"
    if defect == "missing":
        del state[key]
    else:
        state[key] = state[key][:10]
    path = _write_model_zoo_pkl(tmp_path / "model.pkl", state)
    with pytest.raises(CheckpointError, match=f"leaves 1 backbone tensors.*e.g. {key}"):
        verify_checkpoint(_svit_global(), path, strict=False)


def _mae_state(depth=4, grid=14):
    """An MAE ViT encoder (timm names): patch 16, width EMBED, grid x grid + cls pos_embed."""
    g = torch.Generator().manual_seed(1)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    state = {"cls_token": r(1, 1, EMBED), "pos_embed": r(1, 1 + grid * grid, EMBED),
             "patch_embed.proj.weight": r(EMBED, 3, 16, 16), "patch_embed.proj.bias": r(EMBED),
             "norm.weight": r(EMBED), "norm.bias": r(EMBED)}
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": r(EMBED), b + "norm1.bias": r(EMBED),
            b + "attn.qkv.weight": r(3 * EMBED, EMBED), b + "attn.qkv.bias": r(3 * EMBED),
            b + "attn.proj.weight": r(EMBED, EMBED), b + "attn.proj.bias": r(EMBED),
            b + "norm2.weight": r(EMBED), b + "norm2.bias": r(EMBED),
            b + "mlp.fc1.weight": r(4 * EMBED, EMBED), b + "mlp.fc1.bias": r(4 * EMBED),
            b + "mlp.fc2.weight": r(EMBED, 4 * EMBED), b + "mlp.fc2.bias": r(EMBED),
        })
    return state


def _check_mae_loaded(model, mae, report):
    own = model.state_dict()
    assert torch.equal(own["backbone.net.blocks.2.attn.qkv.weight"], mae["blocks.2.attn.qkv.weight"])
    assert torch.equal(own["backbone.net.patch_embed.proj.weight"], mae["patch_embed.proj.weight"])
    # 14x14 + cls -> the model's 16x16 grid without cls token
    assert report.resized == ["backbone.net.pos_embed"]
    assert own["backbone.net.pos_embed"].shape == (1, 256, EMBED)
    assert torch.allclose(own["backbone.net.pos_embed"],
                          resize_to("pos_embed", mae["pos_embed"], (1, 256, EMBED)))
    # MAE's final norm matched nothing (no gate took it), its cls token neither
    assert "norm.weight" in report.unused and "cls_token" in report.unused
    for gate in model.backbone.net.gates.values():
        assert torch.equal(gate.norm.weight, torch.ones(EMBED))
    new_backbone = {k for k in report.new if k.startswith("backbone.net.")}
    assert all(".gates." in k or k.endswith(("rel_pos_h", "rel_pos_w")) for k in new_backbone)
    assert any(k.startswith("roi_heads.") for k in report.new)  # heads start from scratch


def test_mae_pretrain_through_matching_heuristics_local_path(tmp_path):
    mae = _mae_state()
    torch.save({"model": mae}, tmp_path / "mae_pretrain_vit_base.pth")
    model = _svit_global()
    path = f"{tmp_path}/mae_pretrain_vit_base.pth?matching_heuristics=True"
    report = verify_checkpoint(model, path, strict=False)
    _check_mae_loaded(model, mae, report)


def test_mae_pretrain_through_matching_heuristics_url(tmp_path, monkeypatch):
    """detectron2:// URL served from iopath's download cache (no network here)."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "detectron2" / "ImageNetPretrained" / "MAE"
    cached.mkdir(parents=True)
    mae = _mae_state()
    torch.save({"model": mae}, cached / "mae_pretrain_vit_tiny_test.pth")
    url = ("detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_tiny_test.pth"
           "?matching_heuristics=True")
    model = _svit_global()
    report = verify_checkpoint(model, url, strict=False)
    _check_mae_loaded(model, mae, report)
    # the trainer's own load (resume_or_load) reads the same file the same way
    again = _svit_global()
    checkpointer = TokenPruneCheckpointer(again)
    checkpointer.resume_or_load(url, resume=False)
    assert torch.equal(again.state_dict()["backbone.net.pos_embed"],
                       model.state_dict()["backbone.net.pos_embed"])


def test_mae_pretrain_missing_a_block_is_an_error(tmp_path):
    mae = {k: v for k, v in _mae_state().items() if not k.startswith("blocks.3.")}
    torch.save({"model": mae}, tmp_path / "mae.pth")
    with pytest.raises(CheckpointError, match="backbone tensors at their initialisation"):
        verify_checkpoint(_svit_global(), f"{tmp_path}/mae.pth?matching_heuristics=True",
                          strict=False)


def test_own_pth_loads_everything_strictly(tmp_path):
    svit = _svit_global()
    TokenPruneCheckpointer(svit, str(tmp_path)).save("model_final", iteration=7)
    again = _svit_global()
    report = verify_checkpoint(again, str(tmp_path / "model_final.pth"), strict=True)
    assert not report.new and not report.resized and not report.unused
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in svit.state_dict().items())


def test_remote_checkpoint_that_cannot_be_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # fail fast, network or not
    with pytest.raises(CheckpointError, match="cannot fetch checkpoint detectron2://"):
        verify_checkpoint(_svit_global(), "detectron2://no/such/model_final.pkl", strict=False)
    assert not os.path.exists(tmp_path / "empty_cache" / "detectron2" / "no" / "such"
                              / "model_final.pkl")


def test_numpy_and_tensor_tables_resize_alike():
    table = torch.randn(15, 32)
    assert torch.equal(resize_to("a.rel_pos_h", table, (31, 32)),
                       resize_to("a.rel_pos_h", torch.from_numpy(np.asarray(table)), (31, 32)))
