"""The analysis tools ``python -m tokenprune.tools.benchmark`` and ``python -m tokenprune.tools.visualize``.

Both run on a tiny model (outputs and their format, never timings), once each as a
subprocess (the real entry point) and otherwise in-process (``cli(argv)``), on every kind
of bad input (one line on stderr, exit status 2, no result files), and the benchmark's
analytic MAC model is checked against hand-computed counts and fvcore.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import DENSE_CFG, SVIT_CFG, TINY, TINY_SVIT, TINY_VLTP, VLTP_CFG, cli_error, run

from tokenprune.analysis import (EXTRA_HANDLES, BackboneSpec, attention_groups, backbone_macs,
                                 block_macs, split_operators)
from tokenprune.tools import benchmark, benchmark_summary, visualize

BENCH = ["-m", "tokenprune.tools.benchmark"]
VIS = ["-m", "tokenprune.tools.visualize"]
FAST = ["--input-size", "64", "--repeats", "1", "--warmup", "0"]
# lighter heads: 20 proposals, 5 detections (the benchmark sets the score threshold to 0)
LIGHT_HEADS = ["model.proposal_generator.post_nms_topk=[100,20]",
               "model.roi_heads.box_predictor.test_topk_per_image=5"]
RESULT_FILES = {"results.json", "results.md", "speedup.png", "profile.md"}


def _png_ok(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def _table_rows(md):
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| variant |")
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[1:]]


# --------------------------------------------------------------------------- MAC model
def test_macs_by_hand_global_blocks():
    # 2x2 tokens, C=4, MLP hidden 16; block 0 plain, block 1 with rel-pos and a gate of
    # 10 MACs per token. Per token: qkv+proj 4*C^2 = 64, MLP 2*C*16 = 128.
    spec = BackboneSpec(grid=(2, 2), embed_dim=4, mlp_hidden=16, patch_macs=3 * 16 * 16 * 4,
                        window_sizes=[0, 0], use_rel_pos=[False, True], gate_macs={1: 10})
    patch = 4 * 3072                      # 12288
    dense0 = 4 * 64 + 4 * 128 + 16 * 2 * 4  # + attention 4^2 * 2C = 128 -> 896
    dense1 = dense0 + 4 * (2 + 2) * 4       # rel-pos: 4 tokens * (h + w) * C = 64 -> 960
    assert block_macs(spec, 0) == dense0 == 896
    assert block_macs(spec, 1) == dense1 == 960
    assert backbone_macs(spec, gates=False) == patch + 896 + 960 == 14144
    keep = torch.tensor([True, False, False, True])  # 2 of 4 tokens in block 1
    pruned1 = 2 * 64 + 2 * 128 + 2 * 2 * 2 * 4 + 2 * 4 * 4  # 128 + 256 + 32 + 32 = 448
    assert block_macs(spec, 1, keep) == pruned1 == 448
    total = backbone_macs(spec, {1: keep})
    assert total == patch + 896 + 448 + 4 * 10 == 13672  # the gate runs on all 4 tokens
    assert backbone_macs(spec, {1: torch.ones(4, dtype=torch.bool)}) == 14144 + 40


def test_macs_by_hand_windowed_block_with_padding():
    # 3x3 tokens, window 2: Detectron2 pads to 4x4 = 4 windows of 4 tokens.
    spec = BackboneSpec(grid=(3, 3), embed_dim=4, mlp_hidden=16, patch_macs=0,
                        window_sizes=[2], use_rel_pos=[True])
    # dense: qkv+proj on 16 padded tokens (1024), attention 4 windows * 4^2 * 2C (512),
    # rel-pos 16 * (2 + 2) * C (256), MLP on the 9 real tokens (1152)
    assert attention_groups(spec, 0, None) == ([4, 4, 4, 4], 16, 9)
    assert block_macs(spec, 0) == 1024 + 512 + 256 + 1152 == 2944
    keep = torch.zeros(3, 3, dtype=torch.bool)
    keep[0, 0] = keep[0, 1] = keep[1, 0] = True  # window 0: 3 tokens
    keep[2, 2] = True                            # window 3: 1 token
    assert attention_groups(spec, 0, keep.view(-1)) == ([3, 1], 4, 4)
    # 4 tokens: 4*64 + (3^2 + 1^2) * 8 + 4*4*4 + 4*128 = 256 + 80 + 64 + 512
    assert block_macs(spec, 0, keep.view(-1)) == 912


def test_dense_macs_match_fvcore_and_spec_from_vit():
    from fvcore.nn import FlopCountAnalysis

    from tokenprune.modeling import PrunedViT

    vit = PrunedViT(img_size=96, patch_size=16, embed_dim=48, depth=3, num_heads=3,
                    window_size=4, window_block_indexes=[0, 2], use_rel_pos=True,
                    pretrain_img_size=96, pretrain_use_cls_token=False,
                    pruned_blocks=[1, 2], keep_ratios=0.5).eval()
    spec = BackboneSpec.from_vit(vit, (6, 6))
    assert spec.window_sizes == [4, 0, 4] and spec.mlp_hidden == 192
    assert spec.gate_macs == {1: 48 * 16 + 16 * 2, 2: 48 * 16 + 16 * 2}
    vit.gates = torch.nn.ModuleDict()  # fvcore counts the dense ViTDet computation
    for kernel in ("eager", "sdpa"):  # the SDPA handle counts the matmuls it replaces
        with vit.pruning(attention=kernel):
            flops = FlopCountAnalysis(vit, torch.randn(1, 3, 96, 96))
            flops.set_op_handle(**EXTRA_HANDLES)
            flops.unsupported_ops_warnings(False)
            flops.uncalled_modules_warnings(False)
            by_op, _, _ = split_operators(flops.by_operator())
        counted = sum(v for k, v in by_op.items() if k != "layer_norm")
        assert abs(backbone_macs(spec, gates=False) - counted) <= 1e-4 * counted, kernel


# --------------------------------------------------------------------------- benchmark
def test_benchmark_outputs(tmp_path, gated_checkpoint, capsys):
    out = tmp_path / "bench"
    proc = run(BENCH + ["--config-file", SVIT_CFG, "--sweep", "1.0", "0.5",
                        "--schedule", "svit", "--weights", "checkpoint", "--device", "cpu",
                        "--batch-size", "1", "2", "--output", str(out), *FAST, "--",
                        *TINY_SVIT, *LIGHT_HEADS, f"train.init_checkpoint={gated_checkpoint}"],
               timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["results.json", "results.md", "speedup.png"]
    assert f"{gated_checkpoint}: loaded " in proc.stdout  # the load summary
    res = json.loads((out / "results.json").read_text())
    assert res["input_size"] == 64 and res["token_grid"] == [4, 4]
    assert res["batch_sizes"] == [1, 2] and [r["batch_size"] for r in res["runs"]] == [1, 2]
    assert res["pruned_blocks"] == [1, 2, 3] and not res["converted_from_dense"]
    assert res["weights"] == gated_checkpoint and res["attention"] == ["sdpa"]
    run1, run2 = res["runs"]
    v = {x["key"]: x for x in run1["variants"]}
    assert list(v) == ["dense", "dense_sdpa", "keep1", "keep0.5", "svit", "gates"]
    assert [x["key"] for x in run2["variants"]] == list(v)[:5] + ["svit_unequal", "gates"]
    for x in v.values():
        for scope in ("backbone", "model"):
            assert x[scope]["median_ms"] > 0 and len(x[scope]["times_ms"]) == 1
            assert x[scope]["min_ms"] == x[scope]["median_ms"] == x[scope]["max_ms"]
            assert x[scope]["speedup"] > 0 and x[scope]["throughput_img_s"] > 0
            assert x[scope]["cpu_time_median_ms"] > 0 and x[scope]["cpu_time_speedup"] > 0
            assert x["peak_memory_mib"][scope] >= 0
            # the faster dense reference is the baseline: it has speedup 1, the other <= 1
            base = run1["baselines"][scope]
            assert x[scope]["baseline"] == base and base in ("dense", "dense_sdpa")
            assert v[base][scope]["speedup"] == 1.0
            assert max(v[k][scope]["speedup"] for k in ("dense", "dense_sdpa")) == 1.0
        b = x["backbone"]
        assert b["measured_over_predicted"] == pytest.approx(b["speedup"] / b["predicted_speedup"])
    assert v["dense"]["attention"] == "eager" and v["dense_sdpa"]["attention"] == "sdpa"
    assert v["dense"]["backbone"]["predicted_speedup"] == 1.0
    assert v["dense"]["keep_ratios"] == {} and v["dense"]["forced_keep_ratios"] is None
    # batch 2: image 0 keeps 0.6x the schedule, image 1 1.4x (capped at all 16 tokens)
    unequal = next(x for x in run2["variants"] if x["key"] == "svit_unequal")
    assert unequal["image_scales"] == pytest.approx([0.6, 1.4])
    assert unequal["kept_per_image"][0] < unequal["kept_per_image"][1]
    assert 0 <= unequal["padding"]["buckets"] <= unequal["padding"]["one_bucket"]
    # keep 1.0: dense blocks plus the gates' cost; keep 0.5 of 16 tokens: exactly 8
    assert v["keep1"]["backbone"]["predicted_speedup"] < 1.0
    assert v["keep0.5"]["keep_ratios"] == {"1": 0.5, "2": 0.5, "3": 0.5}
    assert v["keep0.5"]["backbone"]["predicted_speedup"] > 1.2
    # SViT targets 0.7 / 0.49 / 0.343 as top-k of 16 tokens: ceil -> 12, 8, 6
    assert v["svit"]["forced_keep_ratios"] == {"1": 0.7, "2": 0.49, "3": 0.343}
    assert v["svit"]["keep_ratios"] == {"1": 0.75, "2": 0.5, "3": 0.375}
    assert v["svit"]["mean_keep_ratio"] == pytest.approx(1.625 / 3)
    assert v["gates"]["forced_keep_ratios"] is None
    assert all(0 < r <= 1 for r in v["gates"]["keep_ratios"].values())
    md = (out / "results.md").read_text()
    rows = _table_rows(md.split("## Batch 2")[0])
    assert [r[0] for r in rows] == ["dense (Detectron2)", "dense (SDPA)", "keep 1", "keep 0.5",
                                    "svit schedule", "learned gates"]
    assert all(len(r) == 12 and r[4].endswith("x") and r[8].endswith("x") for r in rows)
    assert all(len(r[3].split(" / ")) == 3 and len(r[7].split(" / ")) == 3 for r in rows)
    assert "busy_warning" in run1 and "min / median / max" in md
    assert rows[4][1] == "1: 0.75, 2: 0.5, 3: 0.375"
    assert "## Batch sizes" in md and "svit schedule, unequal" in md
    # one table of several results.json (the GPU script's summary)
    table = run(["-m", "tokenprune.tools.benchmark_summary", str(out / "results.json"),
                 str(out / "results.json"), "--output", str(tmp_path / "table.md")], timeout=60)
    assert table.returncode == 0, table.stderr[-2000:]
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[2] == "| config | input | precision | variant | batch 1 | batch 2 |"
    assert sum(ln.startswith("| mask_rcnn_vitdet_t_svit.py | 64x64 | float32 | ")
               for ln in lines) == 2 * 7
    _png_ok(out / "speedup.png")
    line = cli_error(benchmark_summary.cli, [str(out / "results.md")],
                     "tokenprune.tools.benchmark_summary", capsys)
    assert "is not a benchmark results.json" in line


def test_benchmark_compile_rows(tmp_path, gated_checkpoint):
    """--compile none default: every variant in each mode, speedups against the fastest
    dense row; a compiled row reports its compile time and graphs; learned gates over
    several images (--images)."""
    out = tmp_path / "bench"
    benchmark.cli(["--config-file", SVIT_CFG, "--schedule", "none", "--weights", "checkpoint",
                   "--compile", "none", "default", "--images", "3", "--backbone-only",
                   "--memory", "tensors", "--output", str(out), "--input-size", "64",
                   "--repeats", "2", "--warmup", "1", "--", *TINY_SVIT, *LIGHT_HEADS,
                   f"train.init_checkpoint={gated_checkpoint}"])
    res = json.loads((out / "results.json").read_text())
    (run1,) = res["runs"]
    v = {x["key"]: x for x in run1["variants"]}
    assert list(v) == ["dense", "dense_sdpa", "gates", "dense@default", "dense_sdpa@default",
                       "gates@default"]
    assert [x["compile"] for x in v.values()] == ["none"] * 3 + ["default"] * 3
    base = run1["baselines"]["backbone"]
    assert base in ("dense", "dense_sdpa", "dense@default", "dense_sdpa@default")
    assert v[base]["backbone"]["speedup"] == 1.0
    assert all(x["backbone"]["speedup"] <= 1.0 for k, x in v.items() if "dense" in k)
    assert run1["baseline_names"]["backbone"] == v[base]["name"]
    for key in ("dense", "gates"):
        eager, compiled = v[key]["backbone"], v[f"{key}@default"]["backbone"]
        assert eager["compile_s"] is None and eager["graphs"] is None
        assert compiled["compile_s"] > 0 and compiled["timed_graphs"] >= 0
        assert v[key]["peak_memory_mib"]["backbone"] >= 0
        assert v[f"{key}@default"]["peak_memory_mib"] is None  # eager rows only
    assert v["dense@default"]["backbone"]["graphs"] >= 1
    # the same images in both modes, the same decisions: the same mean kept fractions
    assert v["gates"]["keep_ratios"] == pytest.approx(v["gates@default"]["keep_ratios"])
    rows = _table_rows((out / "results.md").read_text())
    assert rows[5][0] == "learned gates, compiled" and len(rows[5]) == 16
    assert rows[2][12:] == ["", "", "", ""]


def test_benchmark_dense_config_backbone_only_rss(tmp_path):
    """A dense config is converted to SViT's schedule; resident-set memory per process."""
    out = tmp_path / "bench"
    benchmark.cli(["--config-file", DENSE_CFG, "--sweep", "0.5", "--backbone-only",
                   "--memory", "rss", "--device", "cpu", "--output", str(out),
                   "--attention", "sdpa", "flex", *FAST, *TINY])
    res = json.loads((out / "results.json").read_text())
    assert res["converted_from_dense"] and res["pruned_blocks"] == [1, 2, 3]
    assert "fresh process" in res["memory_method"] and "VmHWM" in res["memory_method"]
    (run1,) = res["runs"]
    assert [x["key"] for x in run1["variants"]] == ["dense", "dense_sdpa", "keep0.5_sdpa",
                                                    "keep0.5_flex"]
    assert [x["attention"] for x in run1["variants"]] == ["eager", "sdpa", "sdpa", "flex"]
    for x in run1["variants"]:
        assert x["model"] is None and set(x["peak_memory_mib"]) == {"backbone"}
        assert x["peak_memory_mib"]["backbone"] >= 0
    rows = _table_rows((out / "results.md").read_text())
    assert [r[0] for r in rows] == ["dense (Detectron2)", "dense (SDPA)", "keep 0.5 [sdpa]",
                                    "keep 0.5 [flex]"]
    assert rows[2][7] == "n/a"
    _png_ok(out / "speedup.png")


# --------------------------------------------------------------------------- visualize
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A synthetic-dataset PNG and a JPEG of another size and aspect ratio."""
    from detectron2.data import DatasetCatalog

    from tokenprune.data import prepare_dataset

    prepare_dataset("synthetic_shapes_val")
    png = DatasetCatalog.get("synthetic_shapes_val")[0]["file_name"]
    folder = tmp_path_factory.mktemp("images")
    jpg = folder / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(jpg)
    return [png, str(jpg)]


def test_visualize_outputs(tmp_path, images):
    out = tmp_path / "vis"
    proc = run(VIS + ["--config-file", SVIT_CFG, "--input", *images, "--output", str(out),
                      "--confidence-threshold", "0.2", "--keep-ratio", "0.5", "--prompt", "shapes",
                      "--task-id", "1", "--device", "cpu", "--precision", "bfloat16",
                      "--allow-untrained-gates", "--",
                      *TINY_SVIT], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(os.listdir(out))
    assert names == sorted([os.path.splitext(os.path.basename(p))[0] + ".png" for p in images])
    for n in names:
        _png_ok(out / n)
    lines = [ln for ln in proc.stdout.splitlines() if "detections" in ln]
    assert len(lines) == 2 and all("block 3 50%" in ln for ln in lines), proc.stdout


def test_visualize_one_row_per_task(tmp_path, images, capsys):
    """Several task ids: one PNG per image, with one row (and one stdout line) per task."""
    out = tmp_path / "vis"
    visualize.cli(["--config-file", VLTP_CFG, "--input", images[0], "--output", str(out),
                   "--keep-ratio", "0.5", "--task-id", "0", "2", "--device", "cpu",
                   "--allow-untrained-gates", "--",
                   *TINY_VLTP])
    assert len(os.listdir(out)) == 1
    stdout = capsys.readouterr().out
    lines = [ln for ln in stdout.splitlines() if "detections" in ln]
    assert [(" task 0:" in ln, " task 2:" in ln) for ln in lines] == [(True, False),
                                                                      (False, True)], stdout
    w, h = Image.open(next(out.iterdir())).size
    assert h > 0.5 * w / 2, "two rows expected"


# --------------------------------------------------------------------------- bad input
BENCH_BAD = ["keep_zero", "keep_above_one", "output_not_writable", "unregistered_dataset",
             "cuda_missing", "compile_without_warmup", "no_images", "compile_bogus"]
VIS_BAD = ["not_an_image", "missing_image", "image_is_folder", "output_not_writable",
           "missing_dataset", "keep_above_one", "unpaired_prompts", "cuda_missing"]
CUDA_MISSING = "--device=cuda: CUDA is not available on this machine"


@pytest.mark.parametrize("case", BENCH_BAD)
def test_benchmark_bad_input(case, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    flags, opts = ["--sweep", "0.5"], list(TINY_SVIT)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine
    if case == "cuda_missing":
        flags += ["--device", "cuda"]
    elif case == "keep_zero":
        flags = ["--sweep", "0.7", "0"]
    elif case == "keep_above_one":
        flags = ["--keep-ratio", "1.5"]
    elif case == "output_not_writable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    elif case == "unregistered_dataset":
        opts.append("dataloader.test.dataset.names=no_such_dataset")
    elif case == "compile_without_warmup":  # FAST has --warmup 0
        flags += ["--compile", "none", "freeze"]
    elif case == "no_images":
        flags += ["--images", "0"]
    elif case == "compile_bogus":
        flags += ["--compile", "fast"]
    line = cli_error(benchmark.cli, ["--config-file", SVIT_CFG, *flags, "--output", str(out),
                                     *FAST, "--", *opts], "tokenprune.tools.benchmark", capsys)
    assert {"keep_zero": "keep ratio 0 is outside (0, 1]",
            "keep_above_one": "keep ratio 1.5 is outside (0, 1]",
            "output_not_writable": "cannot write to output folder",
            "unregistered_dataset": "'no_such_dataset' is not registered",
            "compile_without_warmup": "--warmup must be at least 1, got 0 (--compile "
                                      "compiles in the warm-up rounds)",
            "no_images": "--images must be at least 1, got 0",
            "compile_bogus": "argument --compile: invalid choice: 'fast'",
            "cuda_missing": CUDA_MISSING}[case] in line
    assert not (out.exists() and RESULT_FILES & set(os.listdir(out)))
    assert case != "cuda_missing" or not out.exists()


@pytest.mark.parametrize("case", VIS_BAD)
def test_visualize_bad_input(case, tmp_path, images, capsys, monkeypatch):
    out = tmp_path / "out"
    inputs, flags, opts = list(images), [], list(TINY_SVIT)
    if case == "not_an_image":
        (tmp_path / "notes.png").write_text("not an image\n")
        inputs.append(str(tmp_path / "notes.png"))
    elif case == "missing_image":
        inputs.append(str(tmp_path / "nope.jpg"))
    elif case == "image_is_folder":
        inputs.append(str(tmp_path))
    elif case == "output_not_writable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    elif case == "missing_dataset":
        opts.append("dataloader.test.dataset.names=coco_2017_val")
        monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "no_datasets_here"))
    elif case == "keep_above_one":
        flags = ["--keep-ratio", "1.5"]
    elif case == "unpaired_prompts":
        flags = ["--prompt", "a", "b", "--task-id", "1"]
    elif case == "cuda_missing":
        flags = ["--device", "cuda"]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine
    line = cli_error(visualize.cli, ["--config-file", SVIT_CFG, "--input", *inputs,
                                     "--output", str(out), "--allow-untrained-gates", *flags,
                                     "--", *opts],
                     "tokenprune.tools.visualize", capsys)
    assert {"not_an_image": "is not an image file", "missing_image": "not found",
            "image_is_folder": "is a folder", "output_not_writable": "cannot write",
            "missing_dataset": "coco_2017_val",
            "keep_above_one": "keep ratio 1.5 is outside (0, 1]",
            "unpaired_prompts": "2 --prompt values and 1 --task-id values",
            "cuda_missing": CUDA_MISSING}[case] in line
    assert not (out.exists() and any(n.endswith(".png") for n in os.listdir(out)))
    assert case != "cuda_missing" or not out.exists()


# --------------------------------------------------------------------------- shared options
def _help_entries(cli, capsys):
    """{flag: its help text} of ``cli(["--help"])``'s options."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out.split("\noptions:\n", 1)[1]
    entries = {}
    for line in text.splitlines():
        if line.startswith("  -"):
            flag, _, rest = line.strip().partition(" ")
            entries[flag.rstrip(",")] = rest
            last = flag.rstrip(",")
        elif line.startswith("    "):
            entries[last] += " " + line.strip()
        else:
            break
    return entries


SHARED = {"--checkpoint", "--allow-untrained-gates", "--keep-ratio", "--confidence-threshold",
          "--device", "--precision", "--batch-size"}


@pytest.mark.parametrize("name,shared", [
    ("demo", SHARED),
    ("visualize", SHARED - {"--batch-size"}),
    ("flops", {"--checkpoint", "--allow-untrained-gates", "--keep-ratio"}),
    ("benchmark", SHARED - {"--confidence-threshold"}),
    ("tradeoff", {"--checkpoint", "--allow-untrained-gates", "--precision", "--batch-size"}),
])
def test_one_option_set_with_help_and_defaults(name, shared, capsys):
    """The shared options where they apply, and every option's help names its default."""
    import importlib

    entries = _help_entries(importlib.import_module(f"tokenprune.tools.{name}").cli, capsys)
    assert shared <= set(entries), sorted(entries)
    assert "--score-thresh" not in entries
    if name != "tradeoff":  # its --keep-ratios: one point each (not the benchmark's old flag)
        assert "--keep-ratios" not in entries
    required = {"-h", "--config-file"} | ({"--input", "--output"} if name in ("demo",
                                                                           "visualize") else set())
    for flag, text in entries.items():
        assert flag in required or "default" in text, (flag, text)
    if "--confidence-threshold" in shared:
        assert "(default: 0.5)" in entries["--confidence-threshold"]
    if name == "benchmark":
        assert "(default: 3)" in entries["--warmup"] and "--sweep" in entries


def test_checkpoint_option_wins_over_the_override():
    from tokenprune.tools import flops
    from tokenprune.tools.common import load_tool_config

    args = flops.build_parser().parse_args(["--config-file", SVIT_CFG, "--keep-ratio", "0.5",
                                            "--checkpoint", "a.pth", "train.init_checkpoint=b.pth"])
    cfg = load_tool_config(args, splits=())
    assert cfg.train.init_checkpoint == "a.pth"
    assert cfg.model.backbone.net.fixed_keep_ratio == 0.5
    args = flops.build_parser().parse_args(["--config-file", SVIT_CFG,
                                            "train.init_checkpoint=b.pth"])
    assert load_tool_config(args, splits=()).train.init_checkpoint == "b.pth"


@pytest.mark.parametrize("flags,message", [
    (["--keep-ratio", "0.5", "--", "model.backbone.net.depth=4"], "needs a token-pruned model"),
    (["--keep-ratio", "0.5", "0"], "keep ratio 0 is outside (0, 1]"),
])
def test_keep_ratio_bad_input(flags, message, tmp_path, capsys):
    from tokenprune.tools import flops

    line = cli_error(flops.cli, ["--config-file", DENSE_CFG if "--" in flags else SVIT_CFG,
                                 "--output", str(tmp_path / "f.json"), *flags],
                     "python -m tokenprune.tools.flops", capsys)
    assert message in line and not (tmp_path / "f.json").exists()


@pytest.mark.parametrize("tool", ["demo", "visualize"])
def test_override_among_inputs_hints_at_double_dash(tool, images, tmp_path, capsys):
    import importlib

    module = importlib.import_module(f"tokenprune.tools.{tool}")
    line = cli_error(module.cli, ["--config-file", SVIT_CFG, "--output", str(tmp_path / "o"),
                                  "--input", images[0], "train.init_checkpoint=x.pth"],
                     f"tokenprune.tools.{tool}", capsys)
    assert "input not found: train.init_checkpoint=x.pth" in line
    assert "put overrides after `--`" in line and not (tmp_path / "o").exists()
    line = cli_error(module.cli, ["--config-file", SVIT_CFG, "--output", str(tmp_path / "o"),
                                  "--input", images[0], "--keep-ratio", "0.5", "a.b=1"],
                     f"tokenprune.tools.{tool}", capsys)
    assert "invalid float value: 'a.b=1' (put config overrides after `--`)" in line


# --------------------------------------------------------------------------- benchmark spread
def test_busy_warning_on_hand_made_timings():
    from tokenprune.analysis.timing import BUSY_SPREAD, busy_warning, spread

    assert spread([0.3, 0.1, 0.2]) == pytest.approx({"min_ms": 100, "median_ms": 200,
                                                      "max_ms": 300})
    steady = {"dense (Detectron2) (backbone)": [1.0, 1.1, 1.29],
              "dense (SDPA) (backbone)": [2.0, 2.1, 2.2]}
    assert BUSY_SPREAD == 1.3 and busy_warning(steady) is None
    busy = dict(steady, **{"dense (SDPA) (model)": [1.0, 1.5, 3.0]})
    warning = busy_warning(busy)
    assert "dense (SDPA) (model) 3.00x" in warning and "Detectron2" not in warning
    assert "the machine is busy; the ratio is unreliable" in warning


def test_benchmark_keep_ratio_variants():
    """--sweep: one uniform variant each; --keep-ratio: one number joins them, one per
    pruned block is one forced schedule; a wrong count is a one-line input error."""
    from types import SimpleNamespace

    from tokenprune.analysis.benchmark import variants
    from tokenprune.analysis.benchmark_options import BenchmarkOptions
    from tokenprune.errors import InputError

    vit = SimpleNamespace(pruned_blocks=[1, 2, 3], keep_ratios={1: 0.7, 2: 0.49, 3: 0.343})
    opts = BenchmarkOptions(config_file="c.py", sweep=(1.0, 0.5), keep_ratio=(0.7,))
    assert [v.key for v in variants(opts, vit, False, 1)] == ["dense", "dense_sdpa", "keep1",
                                                             "keep0.5", "keep0.7"]
    opts = BenchmarkOptions(config_file="c.py", keep_ratio=(0.9, 0.6, 0.3), schedule="svit")
    forced = variants(opts, vit, False, 1)[2:]
    assert [(v.name, v.fixed) for v in forced] == [
        ("keep 0.9/0.6/0.3", {1: 0.9, 2: 0.6, 3: 0.3}),
        ("svit schedule", {1: 0.7, 2: 0.49, 3: 0.343})]
    with pytest.raises(InputError, match="2 entries for 3 pruned blocks"):
        variants(BenchmarkOptions(config_file="c.py", keep_ratio=(0.9, 0.6)), vit, False, 1)
    assert BenchmarkOptions(config_file="c.py").warmup >= 3
