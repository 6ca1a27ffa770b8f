"""Every way to a model prints the load summary and refuses a pruned model whose gates are
not in the checkpoint (one line, exit status 2), or no checkpoint at all, unless
``--allow-untrained-gates`` / ``allow_untrained_gates=True``: the tools and
:class:`~tokenprune.engine.predictor.Predictor` in-process (``train_net.py --eval-only``:
tests/test_train_net.py)."""
import json

import numpy as np
import pytest
from PIL import Image

from helpers import SVIT_CFG, TINY_SVIT, cli_error
from tokenprune.engine.predictor import Predictor
from tokenprune.errors import CheckpointError
from tokenprune.tools import benchmark, demo, flops, tradeoff, visualize

LIGHT = ["model.roi_heads.box_predictor.test_topk_per_image=5",
         "model.proposal_generator.post_nms_topk=[100,20]"]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)) \
        .save(path)
    return str(path)


def _argv(tool, image, out, checkpoint):
    opts = ["--", *TINY_SVIT, *LIGHT, f"train.init_checkpoint={checkpoint}"]
    return {
        "demo": ["--input", image, "--output", str(out), "--device", "cpu", *opts],
        "flops": ["--num-inputs", "1", "--output", str(out / "flops.json"), *opts],
        "visualize": ["--input", image, "--output", str(out), "--device", "cpu", *opts],
        "benchmark": ["--weights", "checkpoint", "--device", "cpu", "--input-size", "64",
                      "--repeats", "1", "--warmup", "0", "--memory", "off", "--output",
                      str(out), *opts],
        "tradeoff": ["--reducers", "gates", "--num-images", "1", "--output", str(out), *opts],
    }[tool]


TOOLS = {"demo": demo, "flops": flops, "visualize": visualize, "benchmark": benchmark,
         "tradeoff": tradeoff}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_tool_refuses_untrained_gates(tool, tmp_path, image, gateless_checkpoint, capsys):
    out = tmp_path / "out"
    module = TOOLS[tool]
    line = cli_error(module.cli, ["--config-file", SVIT_CFG,
                                  *_argv(tool, image, out, gateless_checkpoint)],
                     module.PROG, capsys)
    assert "holds no weights for 18 gate tensors" in line, line
    assert "backbone.net.gates.1" in line and "--allow-untrained-gates" in line
    assert not out.exists() or not list(out.iterdir())


def test_tool_refuses_no_checkpoint(tmp_path, image, capsys):
    line = cli_error(flops.cli, ["--config-file", SVIT_CFG,
                                 *_argv("flops", image, tmp_path, "")], flops.PROG, capsys)
    assert "no checkpoint: set train.init_checkpoint=PATH" in line
    assert not (tmp_path / "flops.json").exists()


def test_checkpoint_option_is_checked_too(tmp_path, image, gateless_checkpoint, capsys):
    """--checkpoint (every tool's) sets train.init_checkpoint over the overrides: the
    gateless file it names is refused although the override names none."""
    line = cli_error(demo.cli, ["--config-file", SVIT_CFG, "--checkpoint", gateless_checkpoint,
                                *_argv("demo", image, tmp_path / "out", "")], demo.PROG, capsys)
    assert "holds no weights for 18 gate tensors" in line
    assert not (tmp_path / "out").exists()


def test_tool_runs_untrained_gates_when_allowed(tmp_path, image, gateless_checkpoint, capsys):
    report = flops.cli(["--config-file", SVIT_CFG, "--allow-untrained-gates",
                        *_argv("flops", image, tmp_path, gateless_checkpoint)])
    summary = next(ln for ln in capsys.readouterr().out.splitlines() if ": loaded " in ln)
    assert summary.startswith(f"{gateless_checkpoint}: loaded ")
    assert "; new 18 (backbone.net.gates.1" in summary
    assert json.loads((tmp_path / "flops.json").read_text())["num_inputs"] == report["num_inputs"]


def test_predictor_prints_summary(gated_checkpoint, capsys):
    Predictor(SVIT_CFG, gated_checkpoint, TINY_SVIT + LIGHT, device="cpu")
    assert f"{gated_checkpoint}: loaded " in capsys.readouterr().out


def test_predictor_refuses_untrained_gates_and_no_checkpoint(gateless_checkpoint, capsys):
    with pytest.raises(CheckpointError, match="allow_untrained_gates=True"):
        Predictor(SVIT_CFG, gateless_checkpoint, TINY_SVIT + LIGHT, device="cpu")
    with pytest.raises(CheckpointError, match="^no checkpoint"):
        Predictor(SVIT_CFG, overrides=TINY_SVIT + LIGHT, device="cpu")
    Predictor(SVIT_CFG, gateless_checkpoint, TINY_SVIT + LIGHT, device="cpu",
              allow_untrained_gates=True)
    assert "; new 18 (backbone.net.gates.1" in capsys.readouterr().out
    Predictor(SVIT_CFG, overrides=TINY_SVIT + LIGHT, device="cpu", allow_untrained_gates=True)
    assert "no checkpoint: random weights" in capsys.readouterr().out
