"""python -m tokenprune.tools.ablation --study vltp: the VLTP study at its quick scale end to
end (two worker processes), its rows and recipe, the report's checks and verdicts."""
import csv
import json
import math
import os

import pytest

from tokenprune.study import vltp
from tokenprune.study.statistics import COMPARABLE, HOLDS
from tokenprune.study.vltp_report import CANNOT_DECIDE, judge_vltp, summarize_vltp
from tokenprune.study.vltp_runner import parse_unit
from tokenprune.study.workers import balance
from tokenprune.tools.ablation import cli as ablation_cli

QUICK = vltp.SCALES["quick"]
ALL_ROWS = [r for s in vltp.SETTINGS for r in vltp.rows(s)]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vltp_study"))
    report = ablation_cli(["--study", "vltp", "--scale", "quick", "--jobs", "2",
                           "--output", out])
    return dict(out=out, report=report)


def test_quick_study_evaluates_every_row_and_judges_every_finding(quick):
    out, report = quick["out"], quick["report"]
    with open(os.path.join(out, "results.csv")) as f:
        csv_rows = list(csv.DictReader(f))
    assert {(r["row"], int(r["seed"])) for r in csv_rows} == {
        (row.name, s) for row in ALL_ROWS for s in QUICK.seeds}
    by = report["rows"]
    for row in ALL_ROWS:
        r = by[row.name]
        assert r["seeds"] == len(QUICK.seeds)
        assert all(not math.isnan(r[k]) for k in ("miou", "ciou", "box_ap", "keep_ratio"))
        if row.point is None:
            assert r["keep_ratio"] == 1.0 and r["vit_flops_ratio"] == pytest.approx(1.0)
        else:  # every pruned row at a point keeps the same tokens in number, fewer FLOPs
            assert r["vit_flops_ratio"] < 1.0
            assert r["keep_ratio"] == pytest.approx(
                by[f"frozen_guided_{row.point}"]["keep_ratio"], abs=vltp.KEEP_TOLERANCE)
    # lighter keep schedules cost more FLOPs
    ratios = [by[f"frozen_guided_{p}"]["vit_flops_ratio"] for p in vltp.KEEP_POINTS]
    assert ratios == sorted(ratios, reverse=True)
    assert len(report["findings"]) == len(vltp.findings())
    # the task model started from the pretrained detector the study trained first
    assert os.path.isfile(os.path.join(out, "runs", "pretrain", "model_final.pth"))
    assert report["state"]["pretrained"] == "trained in runs/pretrain"
    table = open(os.path.join(out, "table.md")).read()
    for heading in ("### frozen", "### whole", "## Validity checks", "## Findings",
                    "Verdict rule"):
        assert heading in table
    # the text rows were evaluated on the held-out paraphrases
    with open(os.path.join(out, "results", "frozen_text_25_seed0.json")) as f:
        assert json.load(f)["method"] == "text"


def test_rerun_trains_and_evaluates_nothing_again(quick, capsys):
    out = quick["out"]
    stamps = {n: os.path.getmtime(os.path.join(out, "results", n))
              for n in os.listdir(os.path.join(out, "results"))}
    ablation_cli(["--study", "vltp", "--scale", "quick", "--output", out])
    assert "0 of 36 evaluations to do" in capsys.readouterr().out
    assert stamps == {n: os.path.getmtime(os.path.join(out, "results", n))
                      for n in os.listdir(os.path.join(out, "results"))}


def test_frozen_setting_freezes_the_vit_and_whole_trains_it():
    vit, gate, head = ("backbone.net.blocks.1.attn.qkv.weight",
                       "backbone.net.gates.1.head.0.weight", "roi_heads.box_head.fc1.weight")
    frozen = vltp.row_config(QUICK, "frozen", "guided", training=True)
    whole = vltp.row_config(QUICK, "whole", "guided", training=True)
    f, w = frozen.optimizer.params.lr_factor_func, whole.optimizer.params.lr_factor_func
    assert (f(vit), f(gate), f(head)) == (0.0, vltp.GATE_LR_FACTOR, 1.0)
    assert (w(vit), w(gate), w(head)) == (1.0, vltp.GATE_LR_FACTOR, 1.0)
    net = frozen.model.backbone.net
    assert net.keep_ratios == pytest.approx(vltp.keep_schedule([1, 2, 3], vltp.TRAIN_BASE), abs=1e-5)


def test_rows_switch_one_thing_each():
    text = vltp.row_config(QUICK, "frozen", "text", "40")
    assert text.model.guidance.name == "text" and text.dataloader.test.mapper.held_out_prompts
    random = vltp.row_config(QUICK, "frozen", "random", "40")
    assert random.model.backbone.net.gate == "random"
    unguided = vltp.row_config(QUICK, "frozen", "unguided", "40")
    assert unguided.model.backbone.net.gate == "mlp"
    for cfg in (text, random, unguided):
        assert cfg.model.backbone.net.fixed_keep_ratio == pytest.approx(
            vltp.keep_schedule([1, 2, 3], vltp.KEEP_POINTS["40"][0]), abs=1e-5)
    unpruned = vltp.row_config(QUICK, "whole", "unpruned")
    assert unpruned.model.backbone.net.pruned_blocks == []
    names = {r.name for r in ALL_ROWS}
    for f in vltp.findings():
        assert f.a in names and f.b in names
    for _, a, b in vltp.VALIDITY:
        assert a in names and b in names


def test_keep_schedule_is_three_stages_of_powers():
    assert vltp.keep_schedule(range(3, 12), 0.5) == pytest.approx(
        [0.5] * 3 + [0.25] * 3 + [0.125] * 3)
    with pytest.raises(ValueError, match="3 stages"):
        vltp.keep_schedule([1, 2], 0.5)


def _found(diffs):
    """Result dicts for 5 seeds: unpruned 50, guided 50 + d_guided, unguided and random below."""
    out = {}
    for seed in range(5):
        values = {"frozen_unpruned": 50.0 + 0.1 * seed}
        for p in vltp.KEEP_POINTS:
            values[f"frozen_guided_{p}"] = values["frozen_unpruned"] + diffs["guided"][seed]
            values[f"frozen_unguided_{p}"] = values[f"frozen_guided_{p}"] - 3 - 0.1 * seed
            values[f"frozen_text_{p}"] = values[f"frozen_guided_{p}"]
            values[f"frozen_random_{p}"] = values[f"frozen_unguided_{p}"] - diffs["random"]
        for name, miou in values.items():
            point = name.rsplit("_", 1)[1] if name[-1].isdigit() else None
            out.setdefault(name, []).append(dict(
                row=name, seed=seed, setting="frozen", method=name.split("_")[1], point=point,
                miou=miou, miou_nonempty=miou, ciou=miou, box_ap=miou, mask_ap=miou,
                empty_pairs=0.0, vit_flops_ratio=0.7, vit_gflops=1.0, decoder_gflops=0.1,
                keep_ratio=1.0 if point is None else 0.5))
    return out


def test_findings_follow_the_shared_rule_after_the_validity_checks():
    small = [0.1, -0.1, 0.05, -0.05, 0.0]
    judged = judge_vltp(summarize_vltp(_found({"guided": small, "random": 4.0})))
    assert judged["valid"]
    verdicts = {f.claim: v for f, _, v, _ in judged["findings"]}
    assert verdicts["frozen: guided (task id) loses nothing at about 25% fewer ViT FLOPs"] \
        == COMPARABLE
    assert verdicts["frozen: guided (task id) > unguided at about 40% fewer ViT FLOPs"] == HOLDS
    # random keep as good as the learned choice: the study cannot decide
    judged = judge_vltp(summarize_vltp(_found({"guided": small, "random": 0.0})))
    assert not judged["valid"]
    assert all(v.startswith(CANNOT_DECIDE + " (rule: ") for _, _, v, _ in judged["findings"])
    assert any(v == f"{CANNOT_DECIDE} (rule: {HOLDS})" for _, _, v, _ in judged["findings"])


def test_workers_get_balanced_units():
    costs = {"frozen:1": 59, "frozen:2": 59, "whole:1": 30, "whole:2": 30}
    assert balance(costs, 2) == [["frozen:1", "whole:1"], ["frozen:2", "whole:2"]]
    assert balance({"a": 5, "b": 1, "c": 1, "d": 1}, 2) == [["a"], ["b", "c", "d"]]
    assert len(balance(costs, 8)) == 4  # no empty worker


@pytest.mark.parametrize("args, message", [
    (["--study", "vltp", "--svit-config", "x.py"], "--svit-config does not apply"),
    (["--vltp-config", "x.py"], "--vltp-config does not apply"),
    (["--pretrained", "x.pth"], "--pretrained does not apply"),
    (["--study", "vltp", "--pretrained", "/nonexistent.pth"], "pretrained checkpoint not found"),
    (["--study", "vltp", "--jobs", "0"], "--jobs must be 1 or more"),
    (["--study", "vltp", "--dense-checkpoint", "/nonexistent.pth"], "checkpoint not found"),
    (["--study", "vltp", "--vltp-config", "/nonexistent.py"], "config file not found"),
])
def test_bad_input_is_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ablation_cli(["--output", str(tmp_path / "out"), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_an_svit_study_folder_is_refused(tmp_path, capsys):
    (tmp_path / "ablation.json").write_text(json.dumps({"scale": "quick"}))
    with pytest.raises(SystemExit):
        ablation_cli(["--study", "vltp", "--output", str(tmp_path)])
    assert "holds a --study svit --scale quick run" in capsys.readouterr().err


def test_bad_work_unit():
    assert parse_unit("whole:3") == ("whole", 3)
    with pytest.raises(Exception, match="bad work unit"):
        parse_unit("partial:1")
