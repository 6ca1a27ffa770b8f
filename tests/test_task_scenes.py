"""The task scenes (tokenprune.data.synthetic_task_scenes) and relevance after the
augmentation (tokenprune.data.task_mapper): scene and relevant-set sizes, the task rules on
known objects, determinism, the flip, registration and evaluation, paraphrases."""
import json
import os
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

import detectron2.data.transforms as T
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from tokenprune.data import TaskDatasetMapper
from tokenprune.data.scene_statistics import scene_statistics, segmentation_mask
from tokenprune.data.synthetic_study import generate_study_scenes
from tokenprune.data.synthetic_task_scenes import (
    SCENE_TASKS,
    TASK_SCENE_LAYOUT,
    TASK_SCENE_SET,
    TASK_SCENE_SPLITS,
    posed,
    register_synthetic_task_scenes,
)
from tokenprune.data.synthetic_tasks import SYNTHETIC_TASKS, synthetic_task_records
from tokenprune.data.tasks import task_pair_records
from tokenprune.errors import InputError
from tokenprune.evaluation import TaskMaskIoUEvaluator, union_mask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SCENES = 12
PROMPT = {t.prompt: i for i, t in enumerate(SCENE_TASKS)}


def _generate(folder, num=NUM_SCENES, seed=5):
    json_file = generate_study_scenes(os.path.join(folder, "scenes.json"),
                                      os.path.join(folder, "images"), num, seed,
                                      layout=TASK_SCENE_LAYOUT)
    with open(json_file) as f:
        scenes = json.load(f)
    return json_file, scenes, task_pair_records(scenes, os.path.join(folder, "images"),
                                                TASK_SCENE_SET, posed)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """12 task scenes of 256 px: (scenes json file, scenes dict, (records, coco))."""
    return _generate(str(tmp_path_factory.mktemp("task_scenes")))


def _mapped(record, augmentations):
    mapper = TaskDatasetMapper(is_train=True, augmentations=augmentations, image_format="RGB",
                               use_instance_mask=True, instance_mask_format="bitmask")
    return mapper(record)["instances"]


def _mirror(box, width):
    """An XYXY box of the image as generated -> the box on its mirror image."""
    x0, y0, x1, y1 = box
    return [width - x1, y0, width - x0, y1]


def _xyxy(objects):
    return sorted(BoxMode.convert(o["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for o in objects)


def _boxes(instances):
    return sorted(instances.gt_boxes.tensor.tolist())


FLIP = [T.RandomFlip(prob=1.0, horizontal=True)]


# --------------------------------------------------------------------------- scenes and pairs


def test_scenes_are_crowded_and_cluttered(generated):
    json_file, scenes, _ = generated
    stats = scene_statistics(json_file)
    assert stats["num_images"] == NUM_SCENES
    assert all(10 <= n <= 25 for n in stats["objects_per_image"])
    assert [c["name"] for c in scenes["categories"]] == [
        f"{t} {s}" for s in ("circle", "square", "triangle", "star")
        for t in ("striped", "dotted")]
    assert len({(a["shape"], a["texture"]) for a in scenes["annotations"]}) == 8
    assert stats["area_fractions"]["small"] > 0.2 and stats["area_fractions"]["medium"] > 0.2
    assert len({tuple(a["color"]) for a in scenes["annotations"]}) > 0.9 * stats["num_objects"]


def test_pairs_pick_one_to_three_objects(generated):
    _, scenes, (records, coco) = generated
    assert all(1 <= len(r["annotations"]) <= 3 for r in records)  # no empty pair at all
    assert len(records) >= 5 * NUM_SCENES  # most tasks are posed on most images
    assert len({r["task_id"] for r in records}) == len(SCENE_TASKS)
    assert len({r["image_id"] for r in records}) == len(records)
    for r in records:
        assert r["task_set"] == "synthetic_task_scenes"
        assert r["prompt"] == SCENE_TASKS[r["task_id"]].prompt
        assert all(a["category_id"] == 0 for a in r["objects"] + r["annotations"])
        assert [o for o, k in zip(r["objects"], SCENE_TASKS[r["task_id"]].rule(
            r["objects"], r["width"])) if k] == r["annotations"]
    assert len(coco["annotations"]) == sum(len(r["annotations"]) for r in records)
    assert [img["id"] for img in coco["images"]] == [r["image_id"] for r in records]
    # the relevant tokens are a small part of the object tokens: keeping every object keeps
    # far more than a task needs
    relevant = []
    for r in records:
        mask = union_mask(r["annotations"], 256, 256)
        relevant.append(mask.reshape(16, 16, 16, 16).any(axis=(1, 3)).mean())
    assert np.median(relevant) < 0.3 * np.median(scene_statistics(generated[0])["token_share"])


def test_deterministic(generated, tmp_path):
    json_file, scenes, (records, coco) = generated
    again_file, again, (records_again, coco_again) = _generate(str(tmp_path))
    with open(json_file, "rb") as a, open(again_file, "rb") as b:
        assert a.read() == b.read()
    assert coco == coco_again
    strip = [{k: v for k, v in r.items() if k != "file_name"} for r in records]
    assert strip == [{k: v for k, v in r.items() if k != "file_name"} for r in records_again]
    with open(json_file + ".stamp") as f:  # the layout is stamped beside the scene constants
        scene = json.load(f)["scene"]
    assert scene["layout"]["shapes"][-1] == "star" and scene["layout"]["min_objects"] == 10
    assert "min_extent" in scene and "camouflaged" in scene
    _, other, _ = _generate(str(tmp_path / "other"), num=3, seed=6)
    assert other["annotations"] != [a for a in scenes["annotations"] if a["image_id"] <= 3]


def _obj(shape, texture, area, x, y, size=10):
    return {"shape": shape, "texture": texture, "area": float(area), "bbox": [x, y, size, size],
            "bbox_mode": BoxMode.XYWH_ABS}


def test_task_rules_on_known_objects():
    objects = [
        _obj("square", "striped", 400, 100, 100),  # 0: largest square, centre (105, 105)
        _obj("square", "dotted", 100, 10, 10),  # 1
        _obj("circle", "dotted", 300, 60, 100),  # 2: largest circle; left of square 0
        _obj("circle", "striped", 50, 85, 105),  # 3: just left of square 0 (nearest)
        _obj("triangle", "striped", 60, 20, 40),  # 4: leftmost triangle, above circle 2
        _obj("triangle", "dotted", 70, 150, 200),  # 5: below circle 2
        _obj("star", "dotted", 30, 200, 10),  # 6
        _obj("star", "striped", 20, 180, 50),  # 7
        _obj("star", "dotted", 90, 120, 60),  # 8
    ]
    expected = {
        "the striped triangles": {4},
        "the dotted circles": {2},
        "the largest square": {0},
        "the two smallest stars": {6, 7},
        "the leftmost triangle": {4},
        "the two rightmost stars": {6, 7},
        "the circle just left of the largest square": {3},
        "the triangles above the largest circle": {4},
        "the dotted object nearest the largest circle": {8},  # circle 2 itself does not count
        "the largest dotted object": {2},
        "the smallest striped object": {7},
    }
    assert set(expected) == set(PROMPT)
    for prompt, want in expected.items():
        flags = SCENE_TASKS[PROMPT[prompt]].rule(objects, 256)
        assert {i for i, f in enumerate(flags) if f} == want, prompt
    # a rule finds nothing when what it needs is missing
    only_one_star = [o for i, o in enumerate(objects) if i not in (6, 7)]
    assert not any(SCENE_TASKS[PROMPT["the two smallest stars"]].rule(only_one_star, 256))
    no_square = [o for o in objects if o["shape"] != "square"]
    for prompt in ("the largest square", "the circle just left of the largest square"):
        assert not any(SCENE_TASKS[PROMPT[prompt]].rule(no_square, 256))
    # posed only with 1-3 relevant objects as generated and mirrored: no circle lies right
    # of square 0, so the mirrored image has no circle just left of its largest square
    assert not posed(SCENE_TASKS[PROMPT["the circle just left of the largest square"]],
                     objects, 256)
    assert posed(SCENE_TASKS[PROMPT["the leftmost triangle"]], objects, 256)


def test_paraphrases_are_held_out(generated):
    prompts = {t.prompt for t in SCENE_TASKS} | {t.prompt for t in SYNTHETIC_TASKS}
    for task in SCENE_TASKS:
        assert task.paraphrases and not set(task.paraphrases) & prompts
        assert all(p.strip() and len(p) <= 60 for p in task.paraphrases)
    records = generated[2][0]
    assert all(r["paraphrases"] == list(SCENE_TASKS[r["task_id"]].paraphrases) for r in records)


# --------------------------------------------------------------------------- the flip


def _record_with_image(tmp_path, record, width, height):
    path = str(tmp_path / f"{uuid.uuid4().hex[:8]}.png")
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(path)
    return {**record, "file_name": path}


def test_flip_moves_position_targets_on_the_shapes_tasks(tmp_path):
    """"The shapes in the left half" of a flipped image are the ones the flip brought to the
    left; "the red shapes" stay the same objects; without a flip the targets are the
    record's (the evaluation's)."""
    objects = [
        {"shape": s, "color": c, "area": a, "bbox": [x, 10, 10, 10], "iscrowd": 0,
         "segmentation": [[x, 10, x + 10, 10, x + 10, 20, x, 20]], "id": i + 1,
         "image_id": 1, "category_id": 1}
        for i, (s, c, a, x) in enumerate([("circle", "red", 50.0, 10), ("star", "red", 200.0, 70),
                                          ("triangle", "blue", 100.0, 30),
                                          ("square", "green", 120.0, 60)])]
    shapes = {"images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 100}],
              "annotations": objects}
    records, _ = synthetic_task_records(shapes, "/unused")
    by_prompt = {r["prompt"]: _record_with_image(tmp_path, r, 100, 64) for r in records}
    left = by_prompt["the shapes in the left half"]
    assert [a["shape"] for a in left["annotations"]] == ["circle", "triangle"]
    for r in records:
        record = by_prompt[r["prompt"]]
        assert _boxes(_mapped(record, [])) == _xyxy(record["annotations"])
    right = [o for o in left["objects"] if o["shape"] in ("star", "square")]
    assert _boxes(_mapped(left, FLIP)) == sorted(_mirror(b, 100) for b in _xyxy(right))
    red = by_prompt["the red shapes"]
    assert _boxes(_mapped(red, FLIP)) == sorted(_mirror(b, 100)
                                                for b in _xyxy(red["annotations"]))


def test_flip_on_the_task_scenes(generated):
    records = generated[2][0]
    leftmost = [r for r in records if r["prompt"] == "the leftmost triangle"][:3]
    assert leftmost
    for r in leftmost:
        rightmost = max((o for o in r["objects"] if o["shape"] == "triangle"),
                        key=lambda o: o["bbox"][0] + o["bbox"][2] / 2)
        assert _boxes(_mapped(r, FLIP)) == [_mirror(_xyxy([rightmost])[0], 256)]
    for r in records[:NUM_SCENES]:  # posed: 1-3 targets after the flip too
        flipped = _mapped(r, FLIP)
        assert 1 <= len(flipped) <= 3
        if r["prompt"] in ("the largest square", "the dotted circles", "the two smallest stars"):
            assert _boxes(flipped) == sorted(_mirror(b, 256) for b in _xyxy(r["annotations"]))
        assert _boxes(_mapped(r, [])) == _xyxy(r["annotations"])


# --------------------------------------------------------------------------- registration


def _perfect(record):
    inst = Instances((record["height"], record["width"]))
    inst.pred_boxes = Boxes(torch.tensor(_xyxy(record["annotations"]), dtype=torch.float32))
    inst.scores = torch.ones(len(record["annotations"]))
    inst.pred_classes = torch.zeros(len(record["annotations"]), dtype=torch.long)
    # the boxes are sorted: give each its own mask in the same order
    order = sorted(record["annotations"], key=lambda a: BoxMode.convert(
        a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
    inst.pred_masks = torch.stack([torch.from_numpy(segmentation_mask(
        a["segmentation"], record["height"], record["width"])) for a in order])
    return {"instances": inst}


def test_registration_and_evaluation(tmp_path):
    prefix = f"t_task_scenes_{uuid.uuid4().hex[:8]}"
    register_synthetic_task_scenes(str(tmp_path), prefix=prefix)
    assert not os.listdir(tmp_path), "registration must not generate anything"
    assert set(TASK_SCENE_SPLITS) == {"train", "val", "minival", "pilot_train", "pilot_val",
                                     "study_val", "pilot_study_val"}
    assert len({seed for _, seed in TASK_SCENE_SPLITS.values()}) == len(TASK_SCENE_SPLITS)
    name = f"{prefix}_minival"
    records = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["object"] and meta.thing_dataset_id_to_contiguous_id == {1: 0}
    assert meta.task_prompts == {i: t.prompt for i, t in enumerate(SCENE_TASKS)}
    assert meta.task_paraphrases[0] == list(SCENE_TASKS[0].paraphrases)
    assert len({r["source_image_id"] for r in records}) == 8
    with open(meta.json_file) as f:
        gt = json.load(f)
    assert [img["id"] for img in gt["images"]] == [r["image_id"] for r in records]
    assert sorted(os.listdir(tmp_path / "synthetic_task_scenes")) == [
        "annotations", "minival", "pairs"]

    subset = records[:10]
    coco_eval = COCOEvaluator(name, output_dir=str(tmp_path / "eval"))
    task_eval = TaskMaskIoUEvaluator(name)
    for evaluator in (coco_eval, task_eval):
        evaluator.reset()
        evaluator.process([{"image_id": r["image_id"]} for r in subset],
                          [_perfect(r) for r in subset])
    assert coco_eval.evaluate(img_ids=[r["image_id"] for r in subset])["segm"]["AP"] == \
        pytest.approx(100.0)
    seg = task_eval.evaluate()["task_seg"]
    assert seg["mIoU"] == pytest.approx(100.0) and seg["empty_pairs"] == 0.0


def test_data_config():
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "common",
                                       "synthetic_task_scenes_data.py"))
    assert cfg.dataloader.train.dataset.names == "synthetic_task_scenes_train"
    assert cfg.dataloader.test.dataset.names == "synthetic_task_scenes_val"
    assert cfg.dataloader.train.mapper._target_ is TaskDatasetMapper
    assert cfg.dataloader.test.mapper._target_ is TaskDatasetMapper
    assert cfg.dataloader.test.mapper.held_out_prompts is False


def _test_loader_node(held_out_prompts):
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "common",
                                       "synthetic_task_scenes_data.py"))
    cfg.dataloader.test.dataset.names = "synthetic_task_scenes_minival"
    cfg.dataloader.test.num_workers = 0
    cfg.dataloader.test.mapper.held_out_prompts = held_out_prompts
    return cfg.dataloader.test


@pytest.mark.parametrize("held_out_prompts", [False, True])
def test_test_loader_feeds_held_out_paraphrases(held_out_prompts):
    """The switch gives the test inputs their task's first held-out paraphrase as prompt;
    without it they carry the training prompt. Task ids are unchanged."""
    inputs = [batch[0] for _, batch in zip(range(12), instantiate(_test_loader_node(
        held_out_prompts)))]
    assert len({d["task_id"] for d in inputs}) > 1
    for d in inputs:
        task = SCENE_TASKS[d["task_id"]]
        assert d["prompt"] == (task.paraphrases[0] if held_out_prompts else task.prompt)


@pytest.mark.parametrize("paraphrases", [None, []])
def test_held_out_prompts_refuse_records_without_paraphrases(paraphrases):
    mapper = instantiate(_test_loader_node(True).mapper)
    record = dict(DatasetCatalog.get("synthetic_task_scenes_minival")[0])
    record.pop("paraphrases")
    if paraphrases is not None:
        record["paraphrases"] = paraphrases
    with pytest.raises(InputError, match="no held-out paraphrase") as err:
        mapper(record)
    assert len(str(err.value).splitlines()) == 1

