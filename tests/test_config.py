"""Config loading and strict LazyConfig overrides."""
import pytest

from helpers import DENSE_CFG, SVIT_CFG
from tokenprune.config import load_config
from tokenprune.errors import ConfigError


def test_loads_and_applies_overrides():
    cfg = load_config(DENSE_CFG, ["train.max_iter=7", "optimizer.lr=0.001",
                                  "model.backbone.net.window_block_indexes=[0,1]",
                                  "train.output_dir=out/x"])
    assert cfg.train.max_iter == 7 and cfg.optimizer.lr == 0.001
    assert list(cfg.model.backbone.net.window_block_indexes) == [0, 1]
    assert cfg.train.output_dir == "out/x"


def test_int_accepted_for_float_and_target_defaults_accepted():
    cfg = load_config(DENSE_CFG, ["optimizer.lr=1", "model.backbone.net.use_act_checkpoint=False"])
    assert cfg.optimizer.lr == 1 and cfg.model.backbone.net.use_act_checkpoint is False


def test_svit_config_has_the_schedule():
    net = load_config(SVIT_CFG).model.backbone.net
    assert list(net.pruned_blocks) == list(range(3, 12))
    assert list(net.keep_ratios) == [0.7, 0.7, 0.7, 0.49, 0.49, 0.49, 0.343, 0.343, 0.343]


@pytest.mark.parametrize("override, message", [
    ("train.max_iter=1.5", "expected int"),
    ("train.max_iter=abc", "expected int"),
    ("model.backbone.net.use_rel_pos=3", "expected bool"),
    ("model.no_such_key=1", "no such config key"),
    ("model.backbone.net.embeddim=96", "did you mean model.backbone.net.embed_dim"),
    ("nosuch.section.key=1", "no such config key"),
    ("train.max_iter", "malformed override"),
])
def test_bad_overrides_raise_config_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DENSE_CFG, [override])


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("model = (\n")
    with pytest.raises(ConfigError, match="cannot load config"):
        load_config(str(bad))


def test_keyword_of_a_base_class_is_accepted_but_unknown_kwargs_are_not():
    cfg = load_config(DENSE_CFG, ["model.roi_heads.proposal_append_gt=False"])  # ROIHeads arg
    assert cfg.model.roi_heads.proposal_append_gt is False
    with pytest.raises(ConfigError, match="no such config key"):
        load_config(DENSE_CFG, ["model.roi_heads.test_detections_per_img=20"])


def test_dict_override_replaces_the_dict():
    from helpers import VLTP_CFG

    cfg = load_config(VLTP_CFG, ["model.backbone.net.gate=mlp",
                                 "model.backbone.net.gate_kwargs={}"])
    assert dict(cfg.model.backbone.net.gate_kwargs) == {}
