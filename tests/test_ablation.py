"""python -m tokenprune.tools.ablation: the quick study end to end (run once, as a
subprocess), resuming on its folder, variants, reporting."""
import csv
import json
import math
import os
import time

import pytest

from helpers import run

from tokenprune.study import report
from tokenprune.study import variants as ablation
from tokenprune.study.report import summarize
from tokenprune.study.variants import FINDINGS, SCALES, VARIANTS, variant_config
from tokenprune.tools.ablation import cli as ablation_cli

ROWS = [v.name for v in VARIANTS]
NUMERIC = ("box_ap", "mask_ap", "backbone_gflops", "backbone_flops_ratio", "gate_gflops",
           "keep_ratio", "backbone_ms", "dense_backbone_ms", "backbone_speedup")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ablation"))
    start = time.perf_counter()
    proc = run(["-m", "tokenprune.tools.ablation", "--output", out, "--scale", "quick"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc, time.perf_counter() - start


def test_quick_ablation_writes_table_csv_and_plot_with_every_row_filled(quick):
    out, proc, seconds = quick
    print(f"quick ablation: {seconds:.0f} s")  # under 5 minutes on 2 idle CPU cores
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ROWS
    for r in rows:
        for key in NUMERIC:
            value = float(r[key])  # every cell filled with a number
            assert key.endswith("_ap") or math.isfinite(value), (r["variant"], key)
    by = {r["variant"]: r for r in rows}
    assert float(by["dense"]["backbone_flops_ratio"]) == 1.0
    assert float(by["dense_ft"]["backbone_flops_ratio"]) == pytest.approx(1.0, abs=1e-6)
    assert float(by["dense_ft"]["keep_ratio"]) == 1.0
    target_keep = sum(ablation.KEEP_TARGETS) / 3  # the quick scale prunes 3 of 4 blocks
    for name in ("svit_fixed_rate", "svit_no_reactivate_fixed", "svit_heavy_gate_fixed",
                 "dynamicvit", "evit", "tome", "random", "svit_random_choice"):  # fixed rates
        assert float(by[name]["keep_ratio"]) == pytest.approx(target_keep, abs=0.01), name
        assert float(by[name]["backbone_flops_ratio"]) < 0.85, name
    assert float(by["evit"]["gate_gflops"]) > float(by["svit"]["gate_gflops"]) > 0
    assert float(by["random"]["gate_gflops"]) == 0 and float(by["tome"]["gate_gflops"]) == 0
    assert float(by["svit_random_choice"]["gate_gflops"]) == 0

    with open(os.path.join(out, "table.md")) as f:
        table = f.read()
    lines = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [line.split("|")[1].strip().split(" ")[0] for line in lines] == ROWS
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 11 and all(cells), line
    findings = [line for line in table.splitlines() if line.startswith("* ")]
    assert len(findings) == len(FINDINGS) and all(
        "**holds**" in line or "**does not hold**" in line for line in findings), table
    with open(os.path.join(out, "ap_vs_flops.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for name in ROWS:
        with open(os.path.join(out, "results", f"{name}_seed0.json")) as f:
            assert json.load(f)["variant"] == name
    assert "training dense seed 0" in proc.stdout and "fine-tuning 'svit'" in proc.stdout
    assert "iter: " in proc.stdout  # Detectron2's training lines reach the console


def test_rerun_resumes_and_only_computes_missing_results(quick, capsys):
    """On the quick run's folder, in-process (the real entry point ran in ``quick``)."""
    out, _, _ = quick
    stamps = {n: os.path.getmtime(os.path.join(out, "results", f"{n}_seed0.json")) for n in ROWS}
    os.remove(os.path.join(out, "results", "svit_fixed_rate_seed0.json"))
    capsys.readouterr()
    ablation_cli(["--output", out, "--scale", "quick"])
    stdout = capsys.readouterr().out
    assert f"{len(ROWS) - 1} already done" in stdout
    assert "training" not in stdout and "fine-tuning" not in stdout
    assert "evaluating svit_fixed_rate seed 0" in stdout
    for n in ROWS:
        if n != "svit_fixed_rate":
            assert os.path.getmtime(os.path.join(out, "results", f"{n}_seed0.json")) == stamps[n]
    assert os.path.isfile(os.path.join(out, "results", "svit_fixed_rate_seed0.json"))


def test_every_variant_is_a_config_override_of_the_same_pruned_vit():
    from detectron2.config import instantiate

    from tokenprune.modeling import (AttentionGate, AttentionNetGate, MLPGate, PrunedViT,
                                     RandomGate, ToMeReducer)

    scale = SCALES["quick"]
    nets = {v.name: instantiate(variant_config(v, scale).model.backbone.net) for v in VARIANTS}
    assert not isinstance(nets["dense"], PrunedViT)
    gate_kind = {"svit": MLPGate, "svit_no_preserve": MLPGate, "svit_no_reactivate": MLPGate,
                 "svit_fixed_rate": MLPGate, "svit_heavy_gate": AttentionNetGate,
                 "dynamicvit": MLPGate, "evit": AttentionGate, "random": RandomGate,
                 "svit_random_choice": RandomGate}
    for name, kind in gate_kind.items():
        net = nets[name]
        assert isinstance(net, PrunedViT) and net.pruned_blocks == [1, 2, 3], name
        assert all(isinstance(g, kind) for g in net.gates.values()), name
    switches = {name: (n.preserve, n.reactivate, n.dynamic) for name, n in nets.items()
                if isinstance(n, PrunedViT)}
    assert switches["svit"] == (True, True, True)
    assert switches["svit_no_preserve"] == (False, False, True)
    assert switches["svit_no_reactivate"] == (True, False, True)
    assert switches["svit_fixed_rate"] == (True, True, False)
    assert switches["svit_no_reactivate_fixed"] == (True, False, False)
    assert switches["svit_heavy_gate_fixed"] == (True, True, False)
    assert isinstance(nets["svit_heavy_gate_fixed"].gates["1"], AttentionNetGate)
    assert switches["dynamicvit"] == (False, False, False)  # fixed top-k, discard
    assert switches["evit"] == (True, False, False)
    assert switches["random"][2] is False
    assert isinstance(nets["tome"].reducer, ToMeReducer) and len(nets["tome"].gates) == 0
    # the dense reference is fine-tuned with the SViT recipe, minus the gates
    assert nets["dense_ft"].pruned_blocks == [] and len(nets["dense_ft"].gates) == 0
    # the dense weights load into every pruned variant (only gate tensors are new)
    dense_keys = set(nets["dense"].state_dict())
    for name, net in nets.items():
        assert {k for k in net.state_dict() if not k.startswith("gates.")} == dense_keys, name
    # fine-tuning runs live in runs/<training>_seed<k>, next to runs/dense_seed<k>
    assert "dense" not in ablation.TRAININGS
    # variants sharing a fine-tuning run differ from it only in inference switches
    assert ablation.TRAININGS["discard"] == (f"{ablation.NET}.preserve=False",)


def test_summary_averages_seeds_and_reports_the_spread():
    def result(name, seed, box, mask):
        return dict(variant=name, seed=seed, box_ap=box, mask_ap=mask, backbone_gflops=1.0,
                    gate_gflops=0.0, backbone_flops_ratio=0.5, keep_ratio=0.5, backbone_ms=2.0,
                    dense_backbone_ms=4.0, backbone_speedup=2.0, finetune_iters=5)

    rows = summarize({"dense": [result("dense", 0, 40.0, 30.0), result("dense", 1, 42.0, 34.0)],
                      "tome": [result("tome", 0, 35.0, 25.0)]})
    assert [r["variant"] for r in rows] == ["dense", "tome"]
    assert rows[0]["box_ap"] == 41.0 and rows[0]["seeds"] == 2
    assert rows[0]["box_ap_sd"] == pytest.approx(math.sqrt(2.0))
    assert math.isnan(rows[1]["box_ap_sd"])
    state = dict(scale="quick", description="d", dense_iters=1, finetune_iters=1, seeds=2,
                 seconds={})
    table = report._markdown(rows, state)
    assert "| dense (n=2) |" in table and "41.0 ± 1.4" in table and "32.0 ± 2.8" in table


def test_claims_are_judged_on_the_seeds_both_rows_have():
    def result(name, seed, box):
        return dict(variant=name, seed=seed, box_ap=box, mask_ap=box, backbone_gflops=1.0,
                    gate_gflops=0.0, backbone_flops_ratio=0.5, keep_ratio=0.29,
                    backbone_ms=2.0, dense_backbone_ms=4.0, backbone_speedup=2.0,
                    finetune_iters=5)

    rows = summarize({
        "random": [result("random", 0, 29.0), result("random", 1, 18.0)],
        "svit_fixed_rate": [result("svit_fixed_rate", 0, 30.0),
                            result("svit_fixed_rate", 1, 20.0)],
        "dynamicvit": [result("dynamicvit", 0, 28.0)],  # seed 0 only
    })
    claims = {line.split(":")[0][2:]: line for line in report._findings(rows)[2:]}
    # mean 25.0 vs 28.0, but +2.0 on seed 0, the only seed the two rows share
    preserve = claims["1. preserving pruned tokens beats discarding them"]
    assert "**holds**" in preserve and "+2.0 on seed 0, the seeds both rows have" in preserve
    random_keep = claims["SViT (fixed rate) beats random keep"]
    assert "**holds**" in random_keep and "(+1.5; per seed +1.0 / +2.0)" in random_keep


@pytest.mark.parametrize("args, message", [
    (["--scale", "huge"], "invalid choice"),
    (["--seeds", "0"], "--seeds must be 1 or more"),
    (["--dense-checkpoint", "/nonexistent.pth"], "dense checkpoint not found"),
])
def test_bad_input_is_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ablation_cli(["--output", str(tmp_path / "out"), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_output_of_another_scale_is_refused(tmp_path, capsys):
    (tmp_path / "ablation.json").write_text(json.dumps({"scale": "full"}))
    with pytest.raises(SystemExit):
        ablation_cli(["--output", str(tmp_path), "--scale", "quick"])
    assert "holds a --scale full ablation" in capsys.readouterr().err


def test_output_of_another_recipe_is_refused(tmp_path, capsys):
    quick_scale = SCALES["quick"]
    (tmp_path / "ablation.json").write_text(json.dumps(dict(
        scale="quick", dense_iters=quick_scale.dense_iters,
        finetune_iters=quick_scale.finetune_iters, gate_lr_factor=1.0)))
    with pytest.raises(SystemExit):
        ablation_cli(["--output", str(tmp_path), "--scale", "quick"])
    err = capsys.readouterr().err
    assert "another recipe" in err and "gate_lr_factor 1.0" in err


def test_fine_tuning_runs_train_the_gates_faster_and_anneal_their_noise():
    svit = next(v for v in VARIANTS if v.name == "svit")
    train_cfg = variant_config(svit, SCALES["quick"], training=True)
    factor = train_cfg.optimizer.params.lr_factor_func
    assert factor("backbone.net.gates.1.fc1.weight") == ablation.GATE_LR_FACTOR > 1
    assert factor("backbone.net.blocks.1.attn.qkv.weight") == 1.0
    assert train_cfg.train.gate_noise_anneal == ablation.GATE_NOISE_ANNEAL > 0
    # evaluation configs carry no training-only settings
    eval_cfg = variant_config(svit, SCALES["quick"])
    assert "lr_factor_func" not in eval_cfg.optimizer.params
    assert eval_cfg.train.gate_noise_anneal == 0


def test_plot_labels_of_nearby_points_do_not_overlap():
    xs, ys = [0.80, 0.81, 0.82, 1.6], [24.0, 24.1, 24.0, 24.0]
    heights = report._spread_labels(xs, ys, near=0.1, gap=0.5)
    close = sorted(heights[:3])
    assert all(b - a >= 0.5 - 1e-9 for a, b in zip(close, close[1:]))
    assert sum(close) / 3 == pytest.approx(sum(ys[:3]) / 3)  # centred on the points
    assert heights[3] == 24.0  # a point on its own keeps its height


def test_plot_leaves_out_a_variant_without_detections():
    """A model with no detection has AP NaN (Detectron2's COCOEvaluator): the plot skips
    that point instead of failing to draw its label."""
    def row(name, gflops, box):
        return dict(variant=name, backbone_gflops=gflops, box_ap=box, box_ap_sd=float("nan"),
                    mask_ap=box, mask_ap_sd=float("nan"))

    png = report._plot([row("dense", 1.0, 20.0), row("tome", 0.5, float("nan")),
                        row("svit", 0.5, 19.0)])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
