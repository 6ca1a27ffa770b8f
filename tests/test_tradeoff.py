"""python -m tokenprune.tools.tradeoff: the tiny gated model end to end in-process (two
ratios, two reducers), resume, the --max-ap-drop choice on a hand-made table, bad input
(one line, exit 2, nothing written), and the real entry point's --help."""
import csv
import math
import os

import pytest

from helpers import SVIT_CFG, TINY_SVIT, cli_error, run
from tokenprune.analysis.tradeoff import Point, choice_text, choose_point, with_ratios
from tokenprune.config import load_config
from tokenprune.tools.tradeoff import PROG, cli

TINY = TINY_SVIT + ["model.roi_heads.box_predictor.test_topk_per_image=10"]
FAST = ["--num-images", "2", "--latency-images", "1", "--repeats", "1"]


def _argv(checkpoint, out, *flags):
    return ["--config-file", SVIT_CFG, "--checkpoint", checkpoint, "--output", str(out),
            *FAST, *flags, "--", *TINY]


@pytest.fixture(scope="module")
def swept(gated_checkpoint, tmp_path_factory):
    """One sweep: dense, the gates' dynamic point, topk and tome at 0.7 and 0.4."""
    out = tmp_path_factory.mktemp("tradeoff")
    res = cli(_argv(gated_checkpoint, out, "--keep-ratios", "0.7", "0.4", "--reducers",
                    "gates", "topk", "tome", "--max-ap-drop", "100"))
    return out, res


def test_sweep_end_to_end(swept):
    out, res = swept
    keys = [r["key"] for r in res["rows"]]
    assert keys == ["dense", "gates", "topk_0.7", "topk_0.4", "tome_0.7", "tome_0.4"]
    assert res["measured"] == 6
    for name in ("tradeoff.csv", "tradeoff.md", "tradeoff.png", "tradeoff.json"):
        assert (out / name).stat().st_size > 0
    assert sorted(os.listdir(out / "results")) == sorted(f"{k}.json" for k in keys)
    with open(out / "tradeoff.csv") as f:
        rows = {r["key"]: r for r in csv.DictReader(f)}
    dense, topk4 = rows["dense"], rows["topk_0.4"]
    assert float(dense["kept"]) == 1.0 and float(dense["model_speedup"]) == 1.0
    assert abs(float(topk4["kept"]) - 0.4) < 0.02  # ceil(0.4 * 256) / 256 per block
    assert float(topk4["backbone_flops_ratio"]) < float(rows["topk_0.7"]["backbone_flops_ratio"]) < 1
    assert float(rows["tome_0.4"]["backbone_gflops"]) < float(dense["backbone_gflops"])
    assert 0 < float(rows["gates"]["kept"]) < 1  # the gates prune on their own
    for r in rows.values():
        assert float(r["backbone_ms"]) > 0 and float(r["model_ms"]) > 0
        assert not math.isnan(float(r["box_ap"]))
    assert rows["topk_0.4"]["override"] == "model.backbone.net.fixed_keep_ratio=0.4"
    assert rows["tome_0.7"]["override"] == ("model.backbone.net.reducer=tome "
                                            "model.backbone.net.fixed_keep_ratio=0.7")
    assert res["choice"].startswith("fastest point within 100 box AP of dense")
    assert "| learned gates (dynamic) |" in (out / "tradeoff.md").read_text()


def test_printed_overrides_load(swept):
    """The override of every point is valid config syntax for the config it came from."""
    _, res = swept
    for row in res["rows"][1:]:
        cfg = load_config(SVIT_CFG, TINY + row["override"].split())
        assert cfg.model.backbone.net.fixed_keep_ratio == row["keep_ratio"]


def test_resume_skips_finished_points(swept, gated_checkpoint, capsys):
    out, _ = swept
    before = {p: os.path.getmtime(out / "results" / p) for p in os.listdir(out / "results")}
    os.remove(out / "results" / "tome_0.4.json")
    res = cli(_argv(gated_checkpoint, out, "--keep-ratios", "0.7", "0.4", "--reducers",
                    "gates", "topk", "tome"))
    assert res["measured"] == 1 and res["choice"] is None
    for name, mtime in before.items():
        if name != "tome_0.4.json":
            assert os.path.getmtime(out / "results" / name) == mtime
    assert "measured 1 of 6 points" in capsys.readouterr().out


def test_folder_of_another_checkpoint_is_refused(swept, tmp_path, gated_checkpoint, capsys):
    out, _ = swept
    other = tmp_path / "other.pth"
    with open(gated_checkpoint, "rb") as f:
        other.write_bytes(f.read())
    line = cli_error(cli, _argv(str(other), out, "--reducers", "topk"), PROG, capsys)
    assert "holds a trade-off made with another checkpoint" in line


def _row(key, reducer, ratio, ap, speed):
    return dict(key=key, reducer=reducer, keep_ratio=ratio, label=key, box_ap=ap, mask_ap=ap,
                task_miou=float("nan"), backbone_gflops=1.0 if reducer == "dense" else ratio,
                total_gflops=2.0, model_speedup=speed, backbone_speedup=speed, kept=ratio,
                override=Point(reducer, ratio).override(False))


def test_max_ap_drop_choice_on_a_hand_made_table():
    rows = with_ratios([
        _row("dense", "dense", None, 40.0, 1.0),
        _row("topk_0.7", "topk", 0.7, 39.6, 1.3),
        _row("topk_0.5", "topk", 0.5, 38.9, 1.6),
        _row("random_0.5", "random", 0.5, 35.0, 1.7),
        _row("tome_0.7", "tome", 0.7, float("nan"), 2.0),
    ])
    assert choose_point(rows, 0.5)["key"] == "topk_0.7"
    assert choose_point(rows, 1.2)["key"] == "topk_0.5"
    assert choose_point(rows, 10)["key"] == "random_0.5"  # NaN AP never qualifies
    assert choose_point(rows, 0.1) is None
    assert "none qualifies" in choice_text(rows, 0.1)
    assert choice_text(rows, 1.2).endswith(
        "run it with the override: model.backbone.net.fixed_keep_ratio=0.5")
    assert [r["front_speed"] for r in rows] == [True, True, True, True, False]
    assert [r["front_flops"] for r in rows] == [True, True, True, False, False]


@pytest.mark.parametrize("flags,message", [
    (["--keep-ratios", "0.5", "1.5"], "keep ratio 1.5 is outside (0, 1]"),
    (["--keep-ratios", "0"], "keep ratio 0 is outside (0, 1]"),
    (["--reducers", "topk", "dropout"], "unknown reducer 'dropout'"),
], ids=["ratio_above_1", "ratio_0", "unknown_reducer"])
def test_bad_input_is_one_line_and_writes_nothing(flags, message, tmp_path, gated_checkpoint,
                                                  capsys):
    out = tmp_path / "out"
    line = cli_error(cli, _argv(gated_checkpoint, out, *flags), PROG, capsys)
    assert message in line
    assert not out.exists()


def test_checkpoint_without_gates_or_missing(tmp_path, gateless_checkpoint, capsys):
    """The learned reducers refuse a checkpoint without the gates (unless
    --allow-untrained-gates); a missing file is one line too; nothing is written."""
    out = tmp_path / "out"
    line = cli_error(cli, _argv(gateless_checkpoint, out, "--reducers", "topk"), PROG, capsys)
    assert "holds no weights for 18 gate tensors" in line and "--allow-untrained-gates" in line
    line = cli_error(cli, _argv(str(tmp_path / "missing.pth"), out), PROG, capsys)
    assert "checkpoint not found" in line
    assert not out.exists()


def test_untrained_gates_when_allowed(tmp_path, gateless_checkpoint, capsys):
    out = tmp_path / "out"
    res = cli(_argv(gateless_checkpoint, out, "--reducers", "topk", "--keep-ratios", "0.5",
                    "--allow-untrained-gates"))
    assert [r["key"] for r in res["rows"]] == ["dense", "topk_0.5"]
    assert "; new 18 (backbone.net.gates.1" in capsys.readouterr().out


def test_entry_point_help():
    proc = run(["-m", "tokenprune.tools.tradeoff", "--help"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--max-ap-drop" in proc.stdout and "dynamic" in proc.stdout
    assert proc.stderr.strip() == ""
