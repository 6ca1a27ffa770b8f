"""train_net.py end to end: training (the real entry point, a subprocess), resume after a kill;
evaluation and the SViT start from a dense checkpoint in-process; bad input in-process (one
check through the real entry point)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from detectron2.config import instantiate

from helpers import (DENSE_CFG, ROOT, SMALL, SVIT_CFG, TINY, TINY_SVIT, one_line_error,
                     train_net)
from tokenprune.config import load_config


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dense model trained for 6 iterations (evaluated at the end)."""
    out = str(tmp_path_factory.mktemp("dense"))
    proc = train_net(DENSE_CFG, TINY + ["train.max_iter=6", f"train.output_dir={out}",
                                        "train.checkpointer.period=3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_training_writes_metrics_config_checkpoint_and_evaluates(trained):
    out, proc = trained
    for name in ("metrics.json", "config.yaml", "model_final.pth", "model_0000002.pth",
                 "last_checkpoint"):
        assert os.path.isfile(os.path.join(out, name)), name
    records = _metrics(out)
    assert [r["iteration"] for r in records if "total_loss" in r] == list(range(6))
    assert "lr" in records[0]
    assert "bbox/AP" in records[-1] and "segm/AP" in records[-1]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    assert f"metrics: {out}/metrics.json" in proc.stdout


def test_eval_only_prints_box_and_mask_ap(trained, tmp_path, train_in_process, capsys):
    out, _ = trained
    train_in_process(DENSE_CFG, TINY + [f"train.init_checkpoint={out}/model_final.pth",
                                        f"train.output_dir={tmp_path}"], "--eval-only")
    log = capsys.readouterr().out
    assert "copypaste: Task: bbox" in log and "copypaste: Task: segm" in log
    # log.txt is plain text (the console's highlighted config included), each line once
    text = (tmp_path / "log.txt").read_text()
    assert "\x1b[" not in text and "\x1b[" in log
    assert "from ..common.vitdet_tiny_model import model" in text
    assert text.count("Full config saved to") == 1


def test_resume_after_kill_continues_from_last_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    opts = SMALL + ["train.max_iter=40", f"train.output_dir={out}", "train.checkpointer.period=4"]
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", DENSE_CFG, *opts]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last_file = os.path.join(out, "last_checkpoint")  # written after the checkpoint it names
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (
            os.path.exists(last_file) and open(last_file).read().strip() >= "model_0000007"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "model_final.pth")), "run was not interrupted"
    with open(last_file) as f:
        last = f.read().strip()
    last_iter = torch.load(os.path.join(out, last), weights_only=False)["iteration"]
    assert 7 <= last_iter < 39

    resumed = train_net(DENSE_CFG, opts, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"Resuming from iteration {last_iter + 1}" in log
    restored = int(log.split("optimizer state restored for ")[1].split()[0])
    assert restored > 0  # a fresh AdamW has no state: it was loaded from the checkpoint
    iters = [r["iteration"] for r in _metrics(out) if "total_loss" in r]
    assert iters[-1] == 39
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


def _bad_checkpoint(path):
    torch.save({"model": {"backbone.net.pos_embed": torch.zeros(1, 3, 3)}}, path)
    return path


def _in_process_error(train_net_module, argv, capsys, monkeypatch, entry="invoke_main"):
    """Run ``python train_net.py argv`` in this process (``invoke_main``, or ``main`` as
    launch() runs it with one process) on a bad input; its one-line error."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        if entry == "invoke_main":
            monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, "train_net.py"), *argv])
            train_net_module.invoke_main()
        else:
            train_net_module.main(train_net_module.argument_parser().parse_args(argv))
    return one_line_error(stop.value.code, capsys.readouterr().err, "train_net.py")


def test_bad_input_through_the_real_entry_point(tmp_path):
    """The one subprocess of the bad-input checks: nothing but the line on stderr (no
    dependency warning from the imports), nothing written."""
    out = tmp_path / "out"
    proc = train_net(str(tmp_path / "nope.py"), TINY + [f"train.output_dir={out}"],
                     env={"PYTHONWARNINGS": ""}, timeout=120)
    line = one_line_error(proc.returncode, proc.stderr, "train_net.py")
    assert "nope.py" in line and not out.exists()


def test_help_shows_lazyconfig_examples(train_net_module, capsys):
    with pytest.raises(SystemExit):
        train_net_module.argument_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "train.max_iter=100" in text and "model.backbone.net.keep_ratios=[" in text
    assert "--eval-only train.init_checkpoint=" in text and "--num-gpus 8" in text
    assert "MODEL.WEIGHTS" not in text and "SOLVER.BASE_LR" not in text


def test_verbose_flag(train_net_module):
    """--verbose shows the dependencies' warnings (tests/test_warnings_filter.py)."""
    parser = train_net_module.argument_parser()
    assert parser.parse_args(["--config-file", DENSE_CFG, "--verbose"]).verbose
    assert not parser.parse_args(["--config-file", DENSE_CFG]).verbose


@pytest.mark.parametrize("case", [
    "missing_config", "malformed_config", "unknown_key", "wrong_type", "missing_dataset",
    "missing_checkpoint", "mismatched_checkpoint", "unrelated_checkpoint",
    "eval_with_mismatched_heads", "unfetchable_checkpoint",
])
def test_bad_input_one_line_error_and_outputs_untouched(case, tmp_path, train_net_module, capsys,
                                                        monkeypatch):
    """In-process (invoke_main under ``sys.argv``): fast."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("old\n")
    opts = TINY + [f"train.output_dir={out}"]
    cfg, flags = DENSE_CFG, []
    if case == "missing_config":
        cfg = str(tmp_path / "nope.py")
    elif case == "malformed_config":
        cfg = str(tmp_path / "bad.py")
        (tmp_path / "bad.py").write_text("model = [\n")
    elif case == "unknown_key":
        opts.append("model.no_such_key=1")
    elif case == "wrong_type":
        opts.append("train.max_iter=1.5")
    elif case == "missing_dataset":  # Detectron2's dataset root is empty (conftest)
        opts.append("dataloader.test.dataset.names=coco_2017_val")
        monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "no_datasets_here"))
    elif case == "missing_checkpoint":
        opts.append(f"train.init_checkpoint={tmp_path}/nope.pth")
        flags = ["--eval-only"]
    elif case == "mismatched_checkpoint":
        opts.append(f"train.init_checkpoint={_bad_checkpoint(tmp_path / 'bad.pth')}")
    elif case == "eval_with_mismatched_heads":  # evaluating needs every tensor to fit
        state = {"model": {"roi_heads.box_predictor.cls_score.weight": torch.zeros(9, 256),
                           "backbone.net.pos_embed": torch.zeros(1, 256, 96)}}
        torch.save(state, tmp_path / "heads.pth")
        opts.append(f"train.init_checkpoint={tmp_path}/heads.pth")
        flags = ["--eval-only"]
    elif case == "unrelated_checkpoint":
        torch.save({"model": {"something.else": torch.zeros(2)}}, tmp_path / "other.pth")
        opts.append(f"train.init_checkpoint={tmp_path}/other.pth")
    elif case == "unfetchable_checkpoint":
        opts.append("train.init_checkpoint=detectron2://no/such/model_final.pkl")
        monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "empty_cache"))
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # fails fast, network or not
    line = _in_process_error(train_net_module, ["--config-file", cfg, *flags, *opts], capsys,
                             monkeypatch)
    assert sorted(os.listdir(out)) == ["config.yaml"]
    assert (out / "config.yaml").read_text() == "old\n"
    with capsys.disabled():
        print(f"\n{case}: {line}")


_MODEL_ARGUMENT_CASES = {  # config, overrides, flags, what the line says
    "bad_keep_ratios": (SVIT_CFG, ["model.backbone.net.keep_ratios=[1.5,0.5,0.5]"], [],
                        "keep_ratios must lie in (0, 1], got [1.5, 0.5, 0.5]"),
    "bad_keep_ratio": (SVIT_CFG, ["model.backbone.net.keep_ratios=1.5"], [],
                       "keep_ratios must lie in (0, 1], got 1.5"),
    "keep_ratios_count": (SVIT_CFG, ["model.backbone.net.keep_ratios=[0.5,0.5]"], [],
                          "keep_ratios has 2 entries for 3 pruned blocks"),
    "keep_base_and_keep_ratios": (SVIT_CFG, ["model.backbone.net.keep_base=0.6",
                                             "model.backbone.net.keep_ratios=0.5"], [],
                                  "give one of keep_ratios or keep_base, not both"),
    "zero_fixed_keep_ratio": (SVIT_CFG, ["model.backbone.net.fixed_keep_ratio=0"], [],
                              "fixed_keep_ratio must lie in (0, 1]"),
    "bad_pruned_blocks": (SVIT_CFG, ["model.backbone.net.pruned_blocks=[1,2,9]"], [],
                          "pruned_blocks must be distinct indices"),
    "unknown_gate": (SVIT_CFG, ["model.backbone.net.gate=nope"], [],
                     "unknown gate 'nope'; valid: attention, attentionnet, guided, mlp, random"),
    "misspelt_reducer": (SVIT_CFG, ["model.backbone.net.reducer=tomme"], [],
                         "unknown reducer 'tomme' (did you mean tome?); valid: tome"),
    "batch_size_zero": (DENSE_CFG, ["dataloader.train.total_batch_size=0"], [],
                        "total_batch_size=0: must be a positive multiple"),
    "cuda_missing": (DENSE_CFG, ["train.device=cuda"], [],
                     "train.device=cuda: CUDA is not available on this machine"),
    "bad_gate_noise_anneal": (SVIT_CFG, ["train.gate_noise_anneal=2.0"], [],
                              "gate_noise_anneal"),
    "bad_amp_precision": (DENSE_CFG, ["train.amp.precision=float8"], [], "float8"),
    "bad_compile": (SVIT_CFG, ["train.compile=bogus"], ["--eval-only"],
                    "train.compile must be one of none, default, freeze, got 'bogus'"),
    "eval_only_without_checkpoint": (DENSE_CFG, ["train.init_checkpoint="], ["--eval-only"],
                                     "--eval-only needs a checkpoint"),
}


@pytest.mark.parametrize("case", sorted(_MODEL_ARGUMENT_CASES))
def test_bad_model_and_train_arguments_one_line_before_writing(case, tmp_path, train_net_module,
                                                               capsys, monkeypatch):
    """In-process (train_net.main, as launch() runs it with one process): fast."""
    cfg, extra, flags, message = _MODEL_ARGUMENT_CASES[case]
    out = tmp_path / "out"
    opts = (TINY_SVIT if cfg == SVIT_CFG else TINY) + [f"train.output_dir={out}"] + extra
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine
    line = _in_process_error(train_net_module, ["--config-file", cfg, *flags, *opts], capsys,
                             monkeypatch, entry="main")
    assert message in line
    assert not out.exists()
    with capsys.disabled():
        print(f"\n{case}: {line}")


@pytest.mark.parametrize("keep", ["keep_ratios=0.5", "keep_base=0.6"])
def test_keep_ratios_from_one_number_train_and_evaluate(keep, tmp_path, train_in_process):
    """One number for every pruned block, or SViT's schedule from its base."""
    opts = [o for o in TINY_SVIT if "keep_ratios" not in o] + [
        f"model.backbone.net.{keep}", "train.max_iter=1", "train.eval_period=1",
        f"train.output_dir={tmp_path}", "train.flops_period=0"]
    train_in_process(SVIT_CFG, opts)
    records = _metrics(tmp_path)
    assert "loss_keep_ratio" in records[0] and "bbox/AP" in records[-1]
    net = instantiate(load_config(str(tmp_path / "config.yaml")).model.backbone.net)
    assert net.keep_ratios == {"keep_ratios=0.5": {1: 0.5, 2: 0.5, 3: 0.5},
                               "keep_base=0.6": {1: 0.6, 2: 0.36, 3: 0.216}}[keep]


def test_dense_checkpoint_initialises_svit_with_only_gates_new(trained, tmp_path,
                                                               train_in_process, capsys):
    out, _ = trained
    opts = [o for o in TINY_SVIT if not o.startswith("train.init_checkpoint")] + [
        f"train.init_checkpoint={out}/model_final.pth", "train.max_iter=1",
        f"train.output_dir={tmp_path}", "train.flops_period=0"]
    train_in_process(SVIT_CFG, opts)
    log = capsys.readouterr().out
    line = next(ln for ln in log.splitlines() if "model_final.pth: loaded" in ln)
    new = line.split("; new ")[1]
    assert new.startswith("18 (") and "backbone.net.gates.1" in new and "gates.3" in new
    assert all(name.strip(" ()").startswith("backbone.net.gates.")
               for name in new.split(" (", 1)[1].split(","))
    assert "keep_ratio/mean: " in log.split(" iter: 0 ")[1].splitlines()[0]  # the console line
    assert "Pruning over " in log  # the evaluation after the last iteration


def test_eval_only_refuses_untrained_gates(gateless_checkpoint, tmp_path, train_net_module,
                                           capsys, monkeypatch):
    out = tmp_path / "out"
    opts = TINY_SVIT + [f"train.init_checkpoint={gateless_checkpoint}", f"train.output_dir={out}"]
    line = _in_process_error(train_net_module, ["--config-file", SVIT_CFG, "--eval-only", *opts],
                             capsys, monkeypatch, entry="main")
    assert "holds no weights for 18 gate tensors" in line and "--allow-untrained-gates" in line
    assert not out.exists()


def test_eval_only_pruning_figures_in_console_and_metrics(gateless_checkpoint, tmp_path,
                                                          train_in_process, capsys, caplog,
                                                          monkeypatch):
    """--allow-untrained-gates evaluates a checkpoint without gates; the kept fractions and
    GFLOPs of the evaluation reach the console and metrics.json. ``train.compile=default``
    where inductor cannot run: one warning line, then the eager evaluation."""
    from tokenprune.modeling import compiled

    monkeypatch.setattr(compiled, "compile_unavailable", lambda device="cpu": "no compiler")
    opts = TINY_SVIT + [f"train.init_checkpoint={gateless_checkpoint}",
                        f"train.output_dir={tmp_path}", "train.flops_num_images=1",
                        "train.compile=default"]
    with caplog.at_level("WARNING", logger="tokenprune"):
        train_in_process(SVIT_CFG, opts, "--eval-only", "--allow-untrained-gates")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("tokenprune")] == [
        "torch.compile is unavailable (no compiler): running eagerly"]
    log = capsys.readouterr().out
    assert "; new 18 (backbone.net.gates.1" in log
    line = next(ln for ln in log.splitlines() if "Pruning over " in ln)
    assert "keep_ratio/mean" in line and "GFLOPs" in line and "first 1 test images" in line
    (record,) = _metrics(tmp_path)
    layers = [record[f"keep_ratio/layer{i}"] for i in (1, 2, 3)]
    assert record["keep_ratio/mean"] == pytest.approx(sum(layers) / 3)
    assert all(0 <= r <= 1 for r in layers)
    assert record["flops/backbone_gflops"] < record["flops/total_gflops"]
    assert 0 < record["flops/backbone_ratio"] < 1.5  # untrained gates: their cost may exceed 1
    assert "bbox/AP" in record and "segm/AP" in record


def test_compiled_evaluation_counts_flops_on_the_eager_model():
    """compiled_for_inference compiles for the evaluation only: after it the PrunedViT's
    blocks are eager again, so fvcore's torch.jit trace (the evaluation's FLOPs) runs."""
    from tokenprune.analysis import count_model_flops
    from tokenprune.engine.compiling import compiled_for_inference

    model = instantiate(load_config(SVIT_CFG, TINY_SVIT).model).eval()
    inputs = [{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "height": 64, "width": 64}]
    with compiled_for_inference(model, "default", "cpu") as runner:
        assert runner._orig_mod is model  # compiled at its first call (not made here)
        with pytest.raises(RuntimeError, match="torch.jit.trace a dynamo-optimized"):
            count_model_flops(model, inputs)
    assert count_model_flops(model, inputs).backbone > 0
