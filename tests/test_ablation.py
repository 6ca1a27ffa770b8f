"""python -m tokenprune.tools.ablation: the SViT study at its quick scale end to end (run
once as a subprocess with two workers, killed with SIGKILL during its first fine-tunes and
resumed), its rows, statistics, validity checks and report."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT, run

from tokenprune.study import report
from tokenprune.study import variants as study
from tokenprune.study.report import judge, summarize, validity_checks
from tokenprune.study.runner import _finished
from tokenprune.study.variants import FINDINGS, SCALES, VARIANTS, variant_config
from tokenprune.tools.ablation import cli as ablation_cli

QUICK = SCALES["quick"]
JOBS = [(v.name, s) for s in QUICK.seeds for v in VARIANTS if s in study.seeds_of(v, QUICK)]
COMMAND = ["-m", "tokenprune.tools.ablation", "--scale", "quick", "--jobs", "2"]


def _kill_during_first_fine_tunes(out: str) -> float:
    """Start the quick study, SIGKILL its whole process group once the dense model is
    finished and a fine-tune has started; returns when it was killed."""
    proc = subprocess.Popen([sys.executable, *COMMAND, "--output", out], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    runs = os.path.join(out, "runs")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if _finished(os.path.join(runs, "dense")) and any(
                n.endswith("_seed0") or n.endswith("_seed1") for n in os.listdir(runs)):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.time()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study"))
    start = time.perf_counter()
    killed_at = _kill_during_first_fine_tunes(out)
    dense = os.path.join(out, "runs", "dense", "model_final.pth")
    before = {n: os.path.getmtime(os.path.join(out, "results", n))
              for n in os.listdir(os.path.join(out, "results"))}
    dense_mtime = os.path.getmtime(dense)
    proc = run([*COMMAND, "--output", out], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(out=out, proc=proc, seconds=time.perf_counter() - start, before=before,
                dense_mtime=dense_mtime, dense=dense, killed_at=killed_at)


def _rows(out):
    with open(os.path.join(out, "results.csv")) as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def test_quick_study_writes_every_row_the_checks_and_the_verdicts(quick):
    out = quick["out"]
    print(f"quick study (killed once, resumed): {quick['seconds']:.0f} s")
    rows = _rows(out)
    assert list(rows) == [v.name for v in VARIANTS]
    for name, seed in JOBS:
        with open(os.path.join(out, "results", f"{name}_seed{seed}.json")) as f:
            res = json.load(f)
        assert res["variant"] == name and res["seed"] == seed
        for key in ("box_ap", "mask_ap", "box_ap_s", "sparse_box_ap", "crowded_box_ap"):
            assert key in res
        assert math.isfinite(res["backbone_gflops"]) and res["backbone_gflops"] > 0
    assert int(rows["svit"]["seeds"]) == 2 and int(rows["tome"]["seeds"]) == 1
    assert float(rows["dense_ft"]["keep_ratio"]) == 1.0
    # every matched row keeps what SViT kept on the same seed (top-k rounding: 1 token)
    tokens = 16 * 16
    for seed in QUICK.seeds:
        with open(os.path.join(out, "results", f"svit_seed{seed}.json")) as f:
            svit = json.load(f)
        for v in VARIANTS:
            if v.matched and seed in study.seeds_of(v, QUICK):
                with open(os.path.join(out, "results", f"{v.name}_seed{seed}.json")) as f:
                    res = json.load(f)
                assert res["keep_ratio"] == pytest.approx(svit["keep_ratio"], abs=2 / tokens), v
    with open(os.path.join(out, "table.md")) as f:
        table = f.read()
    assert "## Validity checks" in table and table.count("* PASS") + table.count("* FAIL") == 3
    findings = [ln for ln in table.splitlines() if ln.startswith("| ") and "**" in ln]
    assert len(findings) == len(FINDINGS)
    assert all(("**holds**" in ln or "**comparable**" in ln or "**cannot tell**" in ln
                or "**reversed**" in ln or "cannot decide" in ln) for ln in findings)
    with open(os.path.join(out, "ap_vs_flops.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_killed_run_resumes_without_redoing_or_reading_anything_unfinished(quick):
    out, stdout = quick["out"], quick["proc"].stdout
    assert os.path.getmtime(quick["dense"]) == quick["dense_mtime"]  # dense not retrained
    assert "training dense" not in stdout
    assert "already done" in stdout and "worker 0" in stdout and "worker 1" in stdout
    for name, mtime in quick["before"].items():  # finished results are not recomputed
        assert os.path.getmtime(os.path.join(out, "results", name)) == mtime
    for name, seed in JOBS:  # everything missing at the kill was computed after it
        path = os.path.join(out, "results", f"{name}_seed{seed}.json")
        assert f"{name}_seed{seed}.json" in quick["before"] or (
            os.path.getmtime(path) > quick["killed_at"])


def test_rerun_computes_only_missing_results(quick, capsys):
    """On the quick run's folder, in-process and one job (the real entry point ran above)."""
    out = quick["out"]
    stamps = {(n, s): os.path.getmtime(os.path.join(out, "results", f"{n}_seed{s}.json"))
              for n, s in JOBS}
    os.remove(os.path.join(out, "results", "svit_topk_seed1.json"))
    capsys.readouterr()
    ablation_cli(["--output", out, "--scale", "quick"])
    stdout = capsys.readouterr().out
    assert f"{len(JOBS) - 1} already done" in stdout
    assert "training dense" not in stdout and "fine-tuning '" not in stdout
    assert "evaluating svit_topk seed 1" in stdout
    for (n, s), mtime in stamps.items():
        if (n, s) != ("svit_topk", 1):
            assert os.path.getmtime(os.path.join(out, "results", f"{n}_seed{s}.json")) == mtime


def test_a_training_is_finished_only_once_its_final_checkpoint_is_tagged(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert _finished(str(run_dir)) is None
    (run_dir / "model_final.pth").write_bytes(b"half a checkpoint")  # killed while writing
    (run_dir / "last_checkpoint").write_text("model_0000024.pth")
    assert _finished(str(run_dir)) is None
    (run_dir / "last_checkpoint").write_text("model_final.pth")
    assert _finished(str(run_dir)) == str(run_dir / "model_final.pth")


RATIOS = {1: 0.8, 2: 0.6, 3: 0.4}


def test_every_row_is_a_config_override_of_the_same_pruned_vit():
    from detectron2.config import instantiate

    from tokenprune.modeling import (AttentionGate, AttentionNetGate, MLPGate, PrunedViT,
                                     RandomGate, ToMeReducer)

    nets = {v.name: instantiate(variant_config(v, QUICK, ratios=RATIOS).model.backbone.net)
            for v in VARIANTS}
    assert not isinstance(nets["dense"], PrunedViT)
    kinds = {"svit": MLPGate, "svit_topk": MLPGate, "fixed": MLPGate, "inherit": MLPGate,
             "discard": MLPGate, "heavy_gate": AttentionNetGate, "evit": AttentionGate,
             "random": RandomGate, "svit_random_choice": RandomGate}
    for name, kind in kinds.items():
        assert all(isinstance(g, kind) for g in nets[name].gates.values()), name
    switches = {name: (n.preserve, n.reactivate, n.dynamic) for name, n in nets.items()
                if isinstance(n, PrunedViT)}
    assert switches["svit"] == (True, True, True)
    assert switches["svit_topk"] == (True, True, False)
    assert switches["fixed"] == (True, True, False) and nets["fixed"].keep_ratio_loss_per_image
    assert switches["inherit"] == (True, False, False)
    assert switches["discard"] == (False, False, False)
    assert switches["heavy_gate"] == (True, True, False)
    assert isinstance(nets["tome"].reducer, ToMeReducer) and len(nets["tome"].gates) == 0
    assert nets["dense_ft"].pruned_blocks == [] and len(nets["dense_ft"].gates) == 0
    # matched rows run top-k at the measured fractions; the fixed run trains towards them
    for name in ("svit_topk", "fixed", "heavy_gate", "random", "svit_random_choice"):
        assert nets[name].inference_settings.policy.ratios == pytest.approx(RATIOS), name
    assert nets["fixed"].keep_ratios == pytest.approx(RATIOS)
    # the dense weights load into every row (only gate tensors are new)
    dense_keys = set(nets["dense"].state_dict())
    for name, net in nets.items():
        assert {k for k in net.state_dict() if not k.startswith("gates.")} == dense_keys, name


def test_inherit_and_discard_gate_each_stage_once_as_sviT_code_does():
    from detectron2.config import instantiate

    full = SCALES["full"]
    assert study.stage_gates(full.pruned_blocks) == [3, 6, 9]
    ratios = {b: 0.9 - 0.05 * (b - 3) for b in full.pruned_blocks}
    inherit = next(v for v in VARIANTS if v.name == "inherit")
    net = instantiate(variant_config(inherit, full, ratios=ratios).model.backbone.net)
    assert net.pruned_blocks == [3, 6, 9] and not net.reactivate
    stage_means = [sum(ratios[b] for b in range(s, s + 3)) / 3 for s in (3, 6, 9)]
    assert list(net.inference_settings.policy.ratios.values()) == pytest.approx(stage_means)
    assert sum(stage_means) / 3 == pytest.approx(sum(ratios.values()) / 9)  # same mean keep
    train_net = instantiate(variant_config(inherit, full, training=True).model.backbone.net)
    assert list(train_net.keep_ratios.values()) == list(study.KEEP_TARGETS)
    svit = next(v for v in VARIANTS if v.name == "svit")
    with pytest.raises(ValueError, match="measured kept fractions"):
        variant_config(next(v for v in VARIANTS if v.name == "fixed"), full, training=True)
    assert instantiate(variant_config(svit, full).model.backbone.net).pruned_blocks == list(
        range(3, 12))


def _result(name, seed, box, keep=0.5, **kw):
    return dict(variant=name, seed=seed, box_ap=box, mask_ap=box - 1, box_ap_s=box - 5,
                box_ap_m=box, box_ap_l=box + 5, sparse_box_ap=box + 2, crowded_box_ap=box - 2,
                backbone_gflops=1.0, gate_gflops=0.0, backbone_flops_ratio=0.5, keep_ratio=keep,
                backbone_ms=2.0, dense_backbone_ms=4.0, backbone_speedup=2.0, finetune_iters=5,
                **kw)


def _found(offsets, keep_offset=0.0):
    """Five seeds per row: a base AP per seed plus a row offset plus a little noise."""
    base = [30.0, 25.0, 35.0, 28.0, 32.0]
    noise = [0.3, -0.2, 0.1, -0.3, 0.1]
    found = {}
    for name, off in offsets.items():
        keep = 1.0 if name == "dense_ft" else 0.5 + (keep_offset if name == "fixed" else 0)
        found[name] = [_result(name, s, base[s] + off + (noise[s] if off else 0), keep)
                       for s in range(5)]
    return found


OFFSETS = dict(dense_ft=0.0, svit=-0.9, svit_topk=-0.5, svit_random_choice=-2.0, fixed=-1.5,
               inherit=-1.5, discard=-4.0, heavy_gate=-0.4, random=-3.0)


def test_findings_are_paired_over_seeds_and_judged_by_the_rule():
    rows = summarize(_found(OFFSETS))
    assert [r["variant"] for r in rows] == [v.name for v in VARIANTS if v.name in OFFSETS]
    judged = {j["finding"].a + "/" + j["finding"].b: j for j in judge(rows)}
    preserve = judged["inherit/discard"]
    assert preserve["summaries"]["box_ap"].mean == pytest.approx(2.5)
    assert preserve["verdict"] == "holds"
    assert judged["svit_topk/heavy_gate"]["verdict"] == "comparable"
    assert judged["svit/dense_ft"]["verdict"] == "cannot tell"  # 90%: [-1.14, -0.66]
    assert all(passed for _, passed, _ in validity_checks(rows))
    state = dict(scale="quick", description="d", dense_iters=1, finetune_iters=1, seeds=[0],
                 dense_seed=0, keep_targets=[0.7], gate_lr_factor=10.0, gate_noise_anneal=0.5,
                 seconds={"last_run": 60.0})
    table = report._markdown(rows, state, [(250, 10.0, 9.0), (500, 20.0, 19.0)])
    assert "All checks pass" in table and "**holds**" in table
    assert "250 it 10.0 / 9.0" in table and "| dense_ft | " in table


def test_a_failed_validity_check_means_the_study_cannot_decide():
    weak_random = {**OFFSETS, "random": -1.0}
    rows = summarize(_found(weak_random, keep_offset=0.02))
    checks = {statement.split(" ")[0]: passed for statement, passed, _ in validity_checks(rows)}
    assert checks == {"random": False, "the": True, "paired": False}
    state = dict(scale="full", description="d", dense_iters=1, finetune_iters=1, seeds=[0],
                 dense_seed=0, keep_targets=[0.7], gate_lr_factor=10.0, gate_noise_anneal=0.5,
                 seconds={})
    table = report._markdown(rows, state, [])
    assert "the study cannot decide" in table and "cannot decide (rule: holds)" in table


@pytest.mark.parametrize("args, message", [
    (["--scale", "huge"], "invalid choice"),
    (["--jobs", "0"], "--jobs must be 1 or more"),
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
    (tmp_path / "ablation.json").write_text(json.dumps(dict(
        scale="quick", dense_iters=QUICK.dense_iters, finetune_iters=QUICK.finetune_iters,
        gate_lr_factor=1.0)))
    with pytest.raises(SystemExit):
        ablation_cli(["--output", str(tmp_path), "--scale", "quick"])
    err = capsys.readouterr().err
    assert "another recipe" in err and "gate_lr_factor 1.0" in err


def test_fine_tuning_runs_train_the_gates_faster_and_anneal_their_noise():
    svit = next(v for v in VARIANTS if v.name == "svit")
    train_cfg = variant_config(svit, QUICK, training=True)
    factor = train_cfg.optimizer.params.lr_factor_func
    assert factor("backbone.net.gates.1.fc1.weight") == study.GATE_LR_FACTOR > 1
    assert factor("backbone.net.blocks.1.attn.qkv.weight") == 1.0
    assert train_cfg.train.gate_noise_anneal == study.GATE_NOISE_ANNEAL > 0
    eval_cfg = variant_config(svit, QUICK)  # evaluation configs: no training-only settings
    assert "lr_factor_func" not in eval_cfg.optimizer.params
    assert eval_cfg.train.gate_noise_anneal == 0
