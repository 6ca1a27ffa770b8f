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


def test_one_number_for_a_list_where_the_target_takes_a_float():
    """keep_ratios (float or list) takes one number; pruned_blocks (ints) does not."""
    cfg = load_config(SVIT_CFG, ["model.backbone.net.keep_ratios=0.5"])
    assert cfg.model.backbone.net.keep_ratios == 0.5
    with pytest.raises(ConfigError, match="pruned_blocks=3': expected list"):
        load_config(SVIT_CFG, ["model.backbone.net.pruned_blocks=3"])


def test_keep_base_override_replaces_the_keep_ratios():
    net = load_config(SVIT_CFG, ["model.backbone.net.keep_base=0.6"]).model.backbone.net
    assert net.keep_base == 0.6 and net.keep_ratios is None
    net = load_config(SVIT_CFG, ["model.backbone.net.keep_base=0.6",  # the last one given
                                 "model.backbone.net.keep_base=0.5"]).model.backbone.net
    assert net.keep_base == 0.5 and net.keep_ratios is None


@pytest.mark.parametrize("first, second", [("keep_base=0.6", "keep_ratios=0.5"),
                                           ("keep_ratios=[0.5]", "keep_base=0.6")])
def test_keep_base_and_keep_ratios_together_is_an_error(first, second):
    with pytest.raises(ConfigError, match="give one of keep_ratios or keep_base, not both"):
        load_config(SVIT_CFG, [f"model.backbone.net.{first}", f"model.backbone.net.{second}"])
