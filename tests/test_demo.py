"""``python -m tokenprune.tools.demo``: a good run as a subprocess (exit status 0, the
project's own output only: no dependency warning on stderr); in-process (``cli(argv)``) on a
folder of mixed images (one of them broken): the files it writes, their formats, the summary
and exit status 1; bad arguments: one line, exit status 2, nothing written."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import SVIT_CFG, TINY_SVIT, cli_error, run

from tokenprune.engine.results import collect_inputs, output_stems
from tokenprune.errors import InputError
from tokenprune.tools import demo

DEMO = ["-m", "tokenprune.tools.demo"]
LIGHT = ["model.roi_heads.box_predictor.test_topk_per_image=5",
         "model.proposal_generator.post_nms_topk=[100,50]"]


def _folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (90, 60), dtype=np.uint8)).save(folder / "b.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "c.png")
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder


def test_demo_good_run_shows_only_its_own_output(tmp_path, gated_checkpoint):
    """The real entry point; the dependencies' warnings (timm, torch.jit, pkg_resources,
    torch.meshgrid, fvcore, ...) are hidden, and shown with --verbose. ``--compile`` where
    no C++ compiler is found (an empty PATH): one line says so, then the run is eager."""
    folder, out = _folder(tmp_path), tmp_path / "out"
    proc = run(DEMO + ["--config-file", SVIT_CFG, "--input", str(folder / "a.jpg"),
                       str(folder / "c.png"), "--output", str(out), "--compile",
                       "--device", "cpu", *TINY_SVIT, *LIGHT,
                       f"train.init_checkpoint={gated_checkpoint}"],
               env={"PYTHONWARNINGS": "", "PATH": ""}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    unavailable = [ln for ln in proc.stderr.splitlines() if "torch.compile" in ln]
    assert len(unavailable) == 1 and "unavailable (inductor needs a C++ compiler" in \
        unavailable[0] and unavailable[0].endswith("running eagerly"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "2 image(s) in" in proc.stdout
    assert f"{gated_checkpoint}: loaded " in proc.stdout and "; new 0" in proc.stdout
    assert not [ln for ln in proc.stderr.splitlines() if "Warning" in ln], proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(
        ["keep_ratios.csv", "results.json", "a_detections.png", "a_keep.png",
         "c_detections.png", "c_keep.png"])


def test_demo_folder_with_a_broken_file(tmp_path, gated_checkpoint, capsys):
    folder, out = _folder(tmp_path), tmp_path / "out"
    status = demo.cli(["--config-file", SVIT_CFG, "--input", str(folder), "--output", str(out),
                       "--batch-size", "2", "--confidence-threshold", "0.05",
                       "--device", "cpu", *TINY_SVIT, *LIGHT,
                       f"train.init_checkpoint={gated_checkpoint}"])
    printed = capsys.readouterr()
    assert status == 1, printed.err[-3000:]
    assert f"skipped 1 of 4 input(s):\n  {folder / 'broken.png'}: " in printed.err
    assert "3 image(s) in" in printed.out
    assert sorted(os.listdir(out)) == sorted(
        ["keep_ratios.csv", "results.json"]
        + [f"{s}_{k}.png" for s in "abc" for k in ("detections", "keep")])
    for s, size in (("a", (200, 150)), ("b", (60, 90)), ("c", (64, 64))):
        with Image.open(out / f"{s}_detections.png") as im:
            assert im.size == size  # drawn on the original image
        with Image.open(out / f"{s}_keep.png") as im:
            assert im.format == "PNG" and im.size[0] > 3 * 64  # one panel per pruned block

    rows = list(csv.DictReader((out / "keep_ratios.csv").open()))
    assert [r["file_name"] for r in rows] == [str(folder / n) for n in ("a.jpg", "b.png", "c.png")]
    assert [r["image_id"] for r in rows] == ["1", "2", "4"]  # position in the inputs
    assert [r["batch_size"] for r in rows] == ["2", "2", "1"]  # [a, b], [broken, c]
    for r in rows:
        ratios = [float(r[f"keep_block{i}"]) for i in (1, 2, 3)]
        assert all(0 < x <= 1 for x in ratios) and float(r["latency_ms"]) > 0
        assert float(r["keep_mean"]) == pytest.approx(np.mean(ratios), abs=1e-4)

    results = json.loads((out / "results.json").read_text())
    assert results and {r["image_id"] for r in results} <= {1, 2, 4}
    assert sum(r["image_id"] == 1 for r in results) == int(rows[0]["detections"])
    assert all(r["score"] >= 0.05 and len(r["bbox"]) == 4 for r in results)
    _load_with_pycocotools(results, rows, tmp_path)


def _load_with_pycocotools(results, rows, tmp_path):
    """The results load against a ground truth of the same images; category ids are the
    synthetic json's (1..4), not the model's class indices (0..3)."""
    from pycocotools.coco import COCO

    assert {r["category_id"] for r in results} <= {1, 2, 3, 4}
    gt = {"images": [{"id": int(r["image_id"]), "file_name": r["file_name"],
                      "height": int(r["height"]), "width": int(r["width"])} for r in rows],
          "annotations": [], "categories": [{"id": i, "name": str(i)} for i in (1, 2, 3, 4)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    coco_dt = COCO(str(tmp_path / "gt.json")).loadRes(results)
    assert len(coco_dt.getAnnIds()) == len(results)
    ann = coco_dt.loadAnns(coco_dt.getAnnIds(imgIds=[1]))
    assert all(a["area"] > 0 for a in ann)  # from the RLE masks


@pytest.mark.parametrize("case", ["missing_input", "batch_zero", "cuda_missing", "unknown_gate",
                                  "bad_compile"])
def test_demo_bad_arguments(case, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    images = str(_folder(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine
    args, device, opts, message = {
        "missing_input": ([str(tmp_path / "nope.jpg")], "cpu", [], "not found"),
        "batch_zero": ([images, "--batch-size", "0"], "cpu", [], "--batch-size"),
        "cuda_missing": ([images], "cuda", [],
                         "--device=cuda: CUDA is not available on this machine"),
        "unknown_gate": ([images], "cpu", ["model.backbone.net.gate=mlpp"],
                         "unknown gate 'mlpp' (did you mean mlp?)"),
        "bad_compile": ([images, "--compile", "bogus"], "cpu", [],
                        "argument --compile: invalid choice: 'bogus' (choose from")}[case]
    line = cli_error(demo.cli, ["--config-file", SVIT_CFG, "--output", str(out), "--device",
                                device, "--input", *args, "--", *TINY_SVIT, *opts],
                     "tokenprune.tools.demo", capsys)
    assert message in line
    assert not out.exists()


def test_collect_inputs(tmp_path):
    folder = _folder(tmp_path)
    got = collect_inputs([str(folder), str(folder / "a.jpg"), str(folder / "*.png")])
    assert [os.path.basename(p) for p in got] == ["a.jpg", "b.png", "broken.png", "c.png"]
    with pytest.raises(InputError, match="has no image files"):
        collect_inputs([str(_empty(tmp_path))])
    with pytest.raises(InputError, match="matches no files"):
        collect_inputs([str(folder / "*.gif")])
    with pytest.raises(InputError, match="input not found"):
        collect_inputs([str(folder / "nope.jpg")])
    assert output_stems(["x/a.png", "y/a.jpg", "a"]) == ["a", "a_1", "a_2"]


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d
