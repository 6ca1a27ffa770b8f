"""VLTP data, evaluation and guidance: COCO-Tasks loader, synthetic tasks, task mIoU, guidance."""
import json
import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from tokenprune.data.coco_tasks import (
    COCO_TASKS,
    load_coco_tasks_json,
    register_coco_tasks,
    write_coco_tasks_layout,
)
from tokenprune.data.synthetic import SHAPE_CLASSES, generate_synthetic_shapes
from tokenprune.data.synthetic_tasks import (
    SYNTHETIC_TASKS,
    register_synthetic_tasks,
    synthetic_task_records,
)
from tokenprune.errors import DatasetNotFoundError, InputError
from tokenprune.evaluation import TaskMaskIoUEvaluator, union_mask
from tokenprune.modeling import guidance as guidance_module
from tokenprune.modeling.guidance import (
    InputVectorGuidance,
    TaskEmbeddingGuidance,
    TextGuidance,
    build_guidance,
)

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_DIR = os.path.join(REPO_DIR, "projects", "TokenPrune")


def _unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- COCO-Tasks


@pytest.fixture(scope="module")
def coco_tasks_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    write_coco_tasks_layout(root, num_images=4, image_size=96)
    return root


def test_coco_tasks_names():
    assert sorted(COCO_TASKS) == list(range(1, 15))
    assert COCO_TASKS[1] == "step on something"
    assert COCO_TASKS[2] == "sit comfortably"
    assert COCO_TASKS[14] == "pound carpet"


def test_coco_tasks_layout_is_the_official_format(coco_tasks_root):
    ann_dir = os.path.join(coco_tasks_root, "coco-tasks", "annotations")
    assert sorted(os.listdir(ann_dir)) == sorted(
        f"task_{t}_{s}.json" for t in range(1, 15) for s in ("train", "test")
    )
    with open(os.path.join(ann_dir, "task_3_train.json")) as f:
        data = json.load(f)
    assert data["images"][0]["file_name"].startswith("COCO_train2014_")
    ann = data["annotations"][0]
    assert {"segmentation", "area", "iscrowd", "image_id", "bbox", "COCO_category_id"} <= set(ann)
    assert {a["category_id"] for a in data["annotations"]} <= {0, 1}
    assert os.path.isfile(
        os.path.join(coco_tasks_root, "coco", "val2014", "COCO_val2014_000000000001.jpg")
    )


def test_coco_tasks_loader_keeps_only_preferred(coco_tasks_root):
    # generated task t prefers SHAPE_CLASSES[t - 1] for t <= 4; the shapes' stand-in COCO
    # classes are sports ball (37), tv (72), kite (38) and frisbee (34)
    stand_in = {"circle": 37, "square": 72, "triangle": 38, "star": 34}
    image_root = os.path.join(coco_tasks_root, "coco")
    num_kept = num_objects = 0
    for task_id in (1, 2, 3, 4):
        coco_class = stand_in[SHAPE_CLASSES[task_id - 1]]
        json_file = os.path.join(
            coco_tasks_root, "coco-tasks", "annotations", f"task_{task_id}_train.json"
        )
        with open(json_file) as f:
            raw = json.load(f)
        records = load_coco_tasks_json(json_file, image_root, task_id)
        assert len(records) == len(raw["images"])
        for r in records:
            assert r["task_id"] == task_id and r["prompt"] == COCO_TASKS[task_id]
            assert r["image_id"] == task_id * 10**7 + r["coco_image_id"]
            assert os.path.isfile(r["file_name"])
            preferred = {
                a["id"]
                for a in raw["annotations"]
                if a["image_id"] == r["coco_image_id"] and a["category_id"] == 1
            }
            assert {a["coco_annotation_id"] for a in r["annotations"]} == preferred
            for a in r["annotations"]:
                assert a["category_id"] == 0 and a["bbox_mode"] == BoxMode.XYWH_ABS
                assert a["coco_category_id"] == coco_class
            num_kept += len(r["annotations"])
        num_objects += len(raw["annotations"])
    # every object is preferred for exactly one of the tasks 1..4
    assert num_kept == num_objects // 4 and num_kept > 0


def test_coco_tasks_registration(coco_tasks_root):
    prefix = _unique("t_coco_tasks")
    register_coco_tasks(coco_tasks_root, prefix=prefix)
    records = DatasetCatalog.get(f"{prefix}_test")
    assert len(records) == 14 * 4
    assert len({r["image_id"] for r in records}) == len(records)
    assert {(r["task_id"], r["prompt"]) for r in records} == set(COCO_TASKS.items())
    assert any(r["annotations"] for r in records) and any(not r["annotations"] for r in records)
    single = DatasetCatalog.get(f"{prefix}_task5_train")
    assert len(single) == 4 and {r["prompt"] for r in single} == {"water plant"}
    meta = MetadataCatalog.get(f"{prefix}_train")
    assert meta.thing_classes == ["object"] and meta.task_prompts[13] == "extinguish fire"


def test_coco_tasks_missing_folder(tmp_path):
    prefix = _unique("t_coco_tasks_missing")
    register_coco_tasks(str(tmp_path / "nowhere"), prefix=prefix)
    with pytest.raises(DatasetNotFoundError) as e:
        DatasetCatalog.get(f"{prefix}_train")
    message = str(e.value)
    assert "\n" not in message and "coco-tasks" in message and "does not exist" in message


# --------------------------------------------------------------------------- synthetic tasks


def _ann(shape, color, area, x, size=10):
    return {"shape": shape, "color": color, "area": area, "bbox": [x, 10, size, size],
            "segmentation": [[x, 10, x + size, 10, x + size, 20, x, 20]], "iscrowd": 0,
            "image_id": 1, "category_id": 1}


def test_synthetic_task_relevance_on_known_objects():
    # 100 px wide image: red circle (left, small), yellow star (right, large),
    # blue triangle (left), green square (right, mid); a second image is empty.
    objects = [
        _ann("circle", "red", 50.0, 10),
        _ann("star", "yellow", 200.0, 70),
        _ann("triangle", "blue", 100.0, 30),
        _ann("square", "green", 120.0, 60),
    ]
    for i, a in enumerate(objects):
        a["id"] = i + 1
    shapes = {
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 100},
                   {"id": 2, "file_name": "b.png", "height": 64, "width": 100}],
        "annotations": objects,
    }
    records, coco = synthetic_task_records(shapes, "/data")
    assert len(records) == 2 * len(SYNTHETIC_TASKS)
    expected = {
        "the red shapes": {"circle"},
        "shapes with corners": {"star", "triangle", "square"},
        "the largest object": {"star"},
        "the smallest object": {"circle"},
        "the yellow star": {"star"},
        "something with three corners": {"triangle"},
        "the shapes in the left half": {"circle", "triangle"},
        "the green or blue shapes": {"triangle", "square"},
    }
    assert set(expected) == {t.prompt for t in SYNTHETIC_TASKS}
    for r in records:
        assert r["prompt"] == SYNTHETIC_TASKS[r["task_id"]][0]
        assert r["image_id"] == 100 * r["source_image_id"] + r["task_id"]
        file_name = "a.png" if r["source_image_id"] == 1 else "b.png"
        assert r["file_name"] == os.path.join("/data", file_name)
        got = {a["shape"] for a in r["annotations"]}
        assert got == (expected[r["prompt"]] if r["source_image_id"] == 1 else set())
        assert all(a["category_id"] == 0 for a in r["annotations"])
    # the COCO json holds the same ground truth, one image entry per pair
    assert [img["id"] for img in coco["images"]] == [r["image_id"] for r in records]
    assert len(coco["annotations"]) == sum(len(r["annotations"]) for r in records)
    assert coco["categories"] == [{"id": 1, "name": "object"}]


def test_synthetic_tasks_generated_data(tmp_path):
    def make(folder):
        json_file = generate_synthetic_shapes(
            str(tmp_path / folder / "s.json"), str(tmp_path / folder / "img"), 12, seed=3,
            image_size=96,
        )
        with open(json_file) as f:
            shapes = json.load(f)
        return shapes, synthetic_task_records(shapes, "/img")

    shapes, (records, coco) = make("a")
    _, (records_again, coco_again) = make("b")
    assert records == records_again and coco == coco_again  # deterministic
    assert len(records) == 12 * len(SYNTHETIC_TASKS)
    assert any(not r["annotations"] for r in records)  # pairs with nothing relevant exist
    assert any(r["annotations"] for r in records)
    by_image = {}
    for a in shapes["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for r in records:
        anns = by_image.get(r["source_image_id"], [])
        prompt = r["prompt"]
        got = sorted(a["area"] for a in r["annotations"])
        if prompt == "the red shapes":
            want = [a for a in anns if a["color"] == "red"]
        elif prompt == "something with three corners":
            want = [a for a in anns if a["shape"] == "triangle"]
        elif prompt == "the largest object":
            want = [max(anns, key=lambda a: a["area"])] if anns else []
        else:
            continue
        assert got == sorted(a["area"] for a in want)


def _perfect_outputs(record):
    h, w = record["height"], record["width"]
    anns = record["annotations"]
    inst = Instances((h, w))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.ones(len(anns))
    inst.pred_classes = torch.zeros(len(anns), dtype=torch.long)
    masks = [torch.from_numpy(union_mask([a], h, w)) for a in anns]
    inst.pred_masks = torch.stack(masks) if masks else torch.zeros((0, h, w), dtype=torch.bool)
    return {"instances": inst}


def test_synthetic_tasks_registration_and_coco_evaluation(tmp_path):
    prefix = _unique("t_synth_tasks")
    register_synthetic_tasks(str(tmp_path), prefix=prefix)
    name = f"{prefix}_val"
    records = DatasetCatalog.get(name)
    assert len(records) == 64 * len(SYNTHETIC_TASKS)
    assert len({r["image_id"] for r in records}) == len(records)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["object"] and os.path.isfile(meta.json_file)
    with open(meta.json_file) as f:
        gt = json.load(f)
    assert sorted(img["id"] for img in gt["images"]) == sorted(r["image_id"] for r in records)
    assert len(gt["annotations"]) == sum(len(r["annotations"]) for r in records)

    # Detectron2's COCOEvaluator reads that json: perfect predictions score 100 AP.
    subset = [r for r in records if r["annotations"]][:12]
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "eval"))
    evaluator.reset()
    evaluator.process(
        [{"image_id": r["image_id"]} for r in subset], [_perfect_outputs(r) for r in subset]
    )
    results = evaluator.evaluate(img_ids=[r["image_id"] for r in subset])
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- task mIoU


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _gt_record(image_id, task_id, masks):
    anns = []
    for m in masks:
        ys, xs = np.nonzero(m)
        x0, y0 = float(xs.min()), float(ys.min())
        bbox = [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0]
        anns.append(
            {"bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "segmentation": _rle(m), "category_id": 0}
        )
    return {"file_name": "x.png", "image_id": image_id, "height": 10, "width": 10,
            "task_id": task_id, "annotations": anns}


def _pred(masks, scores):
    inst = Instances((10, 10))
    inst.pred_masks = (
        torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, 10, 10), dtype=torch.bool)
    )
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    return {"instances": inst}


def _box(y0, y1, x0, x1):
    m = np.zeros((10, 10), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_task_miou_on_known_masks():
    gt_a = _box(0, 4, 0, 4)  # 16 px
    records = [
        _gt_record(1, 0, [gt_a]),
        _gt_record(2, 0, []),
        _gt_record(3, 1, [_box(0, 4, 0, 2), _box(0, 4, 2, 4)]),  # union = gt_a
        _gt_record(4, 1, [gt_a]),
    ]
    name = _unique("t_task_miou")
    DatasetCatalog.register(name, lambda: records)
    evaluator = TaskMaskIoUEvaluator(name, score_thresh=0.5)
    evaluator.reset()
    evaluator.process(
        [{"image_id": 1}, {"image_id": 2}],
        [
            # pair 1: 8 of 16 px covered; the low-score mask is ignored -> IoU 8/16
            _pred([_box(0, 4, 0, 2), _box(5, 10, 5, 10)], [0.9, 0.3]),
            # pair 2: nothing relevant, nothing predicted -> IoU 1 by definition
            _pred([], []),
        ],
    )
    evaluator.process(
        [{"image_id": 3}, {"image_id": 4}],
        [
            # pair 3: 24 px predicted (two overlapping masks), containing the 16 px -> 16/24
            _pred([_box(0, 4, 0, 6), _box(0, 4, 0, 3)], [0.6, 0.95]),
            # pair 4: prediction misses entirely -> 0
            _pred([_box(6, 10, 6, 10)], [0.8]),
        ],
    )
    res = evaluator.evaluate()["task_seg"]
    ious = [0.5, 1.0, 16 / 24, 0.0]
    assert res["mIoU"] == pytest.approx(100 * np.mean(ious))
    assert res["cIoU"] == pytest.approx(100 * (8 + 0 + 16 + 0) / (16 + 0 + 24 + 32))
    assert res["mIoU-task0"] == pytest.approx(100 * 0.75)
    assert res["mIoU-task1"] == pytest.approx(100 * (16 / 24) / 2)
    # without pair 2 (nothing relevant): its IoU of 1 no longer lifts the mean
    assert res["mIoU-nonempty"] == pytest.approx(100 * np.mean([0.5, 16 / 24, 0.0]))
    assert res["empty_pairs"] == pytest.approx(25.0)
    evaluator.reset()
    assert evaluator.evaluate() == {}


def test_union_mask_polygon_and_box():
    polygon = [[0, 0, 4, 0, 4, 4, 0, 4]]
    poly = {"segmentation": polygon, "bbox": [0, 0, 4, 4], "bbox_mode": BoxMode.XYWH_ABS}
    box_only = {"bbox": [6, 6, 2, 3], "bbox_mode": BoxMode.XYWH_ABS}
    m = union_mask([poly, box_only], 10, 10)
    expected_poly = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygon, 10, 10)))
    assert m[:5, :5].sum() == expected_poly.sum() > 0
    assert m[6:9, 6:8].all() and m.sum() == expected_poly.sum() + 6


# --------------------------------------------------------------------------- guidance


def test_task_embedding_guidance():
    g = TaskEmbeddingGuidance(num_tasks=14, dim=32, first_task_id=1)
    out = g([{"task_id": 1}, {"task_id": 14}, {"task_id": 1}])
    assert out.shape == (3, 32)
    assert torch.equal(out[0], out[2]) and not torch.equal(out[0], out[1])
    out.sum().backward()
    assert g.embedding.weight.grad is not None
    for bad in (0, 15, -1):
        with pytest.raises(InputError, match="valid task ids are 1..14"):
            g([{"task_id": bad}])
    with pytest.raises(InputError):
        g([{"prompt": "no task id"}])
    built = build_guidance("TaskEmbeddingGuidance", num_tasks=8, dim=4)
    assert isinstance(built, TaskEmbeddingGuidance) and built([{"task_id": 7}]).shape == (1, 4)


def test_input_vector_guidance():
    g = InputVectorGuidance(in_dim=6, dim=16)
    out = g([{"guidance": torch.randn(6)}, {"guidance": [0.0] * 6}])
    assert out.shape == (2, 16) and out.dtype == torch.float32
    for bad in (torch.randn(5), torch.randn(2, 3), torch.tensor([1.0, 2, 3, 4, 5, float("nan")]),
                torch.tensor([1.0, 2, 3, 4, 5, float("inf")]), None):
        with pytest.raises(InputError):
            g([{"guidance": bad}])


def test_guidance_rows_are_normalised():
    """Every source hands on rows with zero mean and unit variance, whatever its raw scale."""
    torch.manual_seed(0)
    task = build_guidance("task", dim=16, num_tasks=3)
    vector = build_guidance("vector", dim=16, in_dim=6)
    for out in (task([{"task_id": 0}, {"task_id": 2}]),
                vector([{"guidance": 1e-3 * torch.randn(6)}, {"guidance": torch.randn(6)}])):
        assert torch.allclose(out.mean(dim=1), torch.zeros(2), atol=1e-5)
        assert torch.allclose(out.var(dim=1, unbiased=False), torch.ones(2), atol=1e-3)


def test_text_guidance_rejects_bad_prompts_without_loading_the_encoder(monkeypatch):
    # an empty cache: another test file in the same pytest worker may have loaded the encoder
    monkeypatch.setattr(guidance_module, "_LOADED_ENCODERS", {})
    g = TextGuidance(dim=8, max_prompt_chars=40)
    for bad in ("", "   ", "x" * 41, None, 3):
        with pytest.raises(InputError):
            g([{"prompt": bad}])
    assert guidance_module._LOADED_ENCODERS == {}  # lazy: nothing loaded yet
    assert set(g.state_dict()) == {"proj.weight", "proj.bias"}


def test_text_guidance_offline_encoder(tmp_path):
    """Load the packaged sentence encoder with the Hub switched off, in a fresh process."""
    script = textwrap.dedent(
        """
        import json, sys, torch
        from tokenprune.modeling.guidance import TextGuidance, _LOADED_ENCODERS
        g = TextGuidance(dim=16)
        loaded_at_init = "sentence_transformers" in sys.modules or bool(_LOADED_ENCODERS)
        prompts = ["the red shapes", "something round", "the red shapes"]
        a = g([{"prompt": p} for p in prompts])
        encoder = _LOADED_ENCODERS["all-MiniLM-L6-v2"]
        b = g([{"prompt": "the red shapes"}])
        a.sum().backward()
        print(json.dumps({
            "loaded_at_init": loaded_at_init,
            "shape": list(a.shape),
            "different": not torch.allclose(a[0], a[1]),
            "same": torch.equal(a[0], a[2]) and torch.allclose(a[0], b[0], atol=1e-6),
            "cached": torch.equal(g.encode(["the red shapes"])[0], g._cache["the red shapes"]),
            "cache": sorted(g._cache),
            "raw_norm": float(g.encode(["the red shapes"]).norm()),
            "state_dict": sorted(g.state_dict()),
            "num_params": sum(p.numel() for p in g.parameters()),
            "encoder_frozen": not any(p.requires_grad for p in encoder.parameters()),
            "grad": g.proj.weight.grad is not None,
        }))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=PROJECT_DIR)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded_at_init"] is False
    assert out["shape"] == [3, 16]
    assert out["different"] and out["same"] and out["cached"]
    assert out["cache"] == ["something round", "the red shapes"]
    assert out["raw_norm"] == pytest.approx(1.0, abs=1e-4)  # MiniLM's normalised 384-d output
    assert out["state_dict"] == ["proj.bias", "proj.weight"]
    assert out["num_params"] == 384 * 16 + 16
    assert out["encoder_frozen"] and out["grad"]
