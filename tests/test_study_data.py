"""Tests of the generated scenes of the SViT ablation study (tokenprune.data.synthetic_study):
the spread of object counts, sizes and token shares, exact masks, determinism, the
registration, and the sample picture."""

import json
import os

import numpy as np
import pytest

from helpers import registered_again
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from tokenprune.analysis.drawing import draw_study_samples
from tokenprune.data import (
    STUDY_CLASSES,
    STUDY_SPLITS,
    generate_study_scenes,
    prepare_dataset,
    register_synthetic_study,
    scene_statistics,
)
from tokenprune.data.scene_statistics import segmentation_mask

NUM_IMAGES = 36


def _generate(root, num_images=NUM_IMAGES, seed=7, image_size=256):
    json_file = os.path.join(root, "annotations", "scenes.json")
    image_dir = os.path.join(root, "images")
    generate_study_scenes(json_file, image_dir, num_images, seed, image_size)
    return json_file, image_dir


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """36 generated scenes of 256x256: (json dict, image folder, json file)."""
    json_file, image_dir = _generate(tmp_path_factory.mktemp("study"))
    with open(json_file) as f:
        return json.load(f), image_dir, json_file


@pytest.fixture(scope="module")
def stats(scenes):
    return scene_statistics(scenes[2])


def test_categories_are_shape_by_texture(scenes):
    coco, image_dir, _ = scenes
    assert [c["id"] for c in coco["categories"]] == list(range(1, 7))
    assert [c["name"] for c in coco["categories"]] == list(STUDY_CLASSES)
    assert set(STUDY_CLASSES) == {f"{t} {s}" for t in ("striped", "dotted")
                                  for s in ("circle", "square", "triangle")}
    name_of = {c["id"]: c["name"] for c in coco["categories"]}
    for ann in coco["annotations"]:
        assert name_of[ann["category_id"]] == f"{ann['texture']} {ann['shape']}"
        assert len(ann["color"]) == 3 and all(0 <= v <= 255 for v in ann["color"])
        assert isinstance(ann["camouflaged"], bool)
    assert len({ann["category_id"] for ann in coco["annotations"]}) == 6
    with Image.open(os.path.join(image_dir, coco["images"][0]["file_name"])) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (256, 256)


def test_object_counts_by_density(stats):
    counts = np.array(stats["objects_per_image"])
    density = np.array(stats["density"])
    for name, low, high in (("sparse", 0, 2), ("medium", 3, 11), ("crowded", 12, 25)):
        assert (density == name).sum() == NUM_IMAGES // 3  # exact thirds
        got = counts[density == name]
        assert got.max() <= high
        if name != "crowded":  # placement gives up on objects in full images only
            assert got.min() >= low
    crowded = counts[density == "crowded"]
    assert (crowded >= 12).mean() >= 0.8 and crowded.min() >= 9
    assert counts.min() == 0 and counts.max() >= 20


def test_sizes_token_shares_and_camouflage_are_spread(stats):
    sizes = stats["area_fractions"]
    assert sum(sizes.values()) == pytest.approx(1.0)
    assert sizes["small"] > 0.3 and sizes["medium"] > 0.2 and sizes["large"] > 0.01
    shares = np.array(stats["token_share"])
    assert shares.min() < 0.05 and shares.max() > 0.4
    density = np.array(stats["density"])
    assert np.median(shares[density == "crowded"]) > 4 * np.median(shares[density == "sparse"])
    assert 0.1 < stats["camouflaged_share"] < 0.3
    assert stats["num_objects"] == sum(stats["objects_per_image"])


def test_masks_are_exact_and_drawn(scenes):
    coco, image_dir, _ = scenes
    kinds = set()
    for img in coco["images"]:
        pixels = np.asarray(Image.open(os.path.join(image_dir, img["file_name"])), np.float32)
        covered = np.zeros((img["height"], img["width"]), bool)
        for ann in (a for a in coco["annotations"] if a["image_id"] == img["id"]):
            mask = segmentation_mask(ann["segmentation"], img["height"], img["width"])
            kinds.add(type(ann["segmentation"]).__name__)
            if isinstance(ann["segmentation"], list):
                assert ann["shape"] != "circle"
            assert mask.sum() == ann["area"] > 0
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            tight = [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]
            assert ann["bbox"] == [float(v) for v in tight] and ann["iscrowd"] == 0
            assert not (covered & mask).any(), "visible masks of one image must not overlap"
            covered |= mask
            # its pixels are its colour (plus noise of sd 4) or its texture's second colour
            near = (np.abs(pixels[mask] - ann["color"]) <= 15).all(axis=1).mean()
            assert near > 0.3, (img["id"], ann["id"], near)
    assert kinds == {"list", "dict"}  # polygons for whole polygonal shapes, RLE otherwise


def test_colour_says_nothing_of_the_class(scenes):
    coco, _, _ = scenes
    colors = np.array([a["color"] for a in coco["annotations"]], float)
    classes = np.array([a["category_id"] for a in coco["annotations"]])
    overall = colors.mean(axis=0)
    for c in range(1, 7):
        assert np.abs(colors[classes == c].mean(axis=0) - overall).max() < 40
        assert np.ptp(colors[classes == c].mean(axis=1)) > 120  # dark and bright ones alike


def test_same_seed_gives_identical_files_and_is_not_rewritten(tmp_path):
    json_a, images_a = _generate(tmp_path / "a", 4, 3, 128)
    json_b, images_b = _generate(tmp_path / "b", 4, 3, 128)
    json_c, images_c = _generate(tmp_path / "c", 4, 4, 128)
    assert _read(json_a) == _read(json_b) != _read(json_c)
    names = sorted(os.listdir(images_a))
    assert names == sorted(os.listdir(images_b)) and len(names) == 4
    for name in names:
        assert _read(os.path.join(images_a, name)) == _read(os.path.join(images_b, name))
        assert _read(os.path.join(images_a, name)) != _read(os.path.join(images_c, name))
    with open(json_a + ".stamp") as f:
        assert json.load(f)["seed"] == 3
    past = 1_000_000_000
    os.utime(json_a, (past, past))
    _generate(tmp_path / "a", 4, 3, 128)
    assert os.stat(json_a).st_mtime == past


def test_a_changed_scene_constant_regenerates_the_files(tmp_path, monkeypatch):
    from tokenprune.data import synthetic_study

    json_a, _ = _generate(tmp_path / "a", 2, 3, 128)
    before = _read(json_a)
    monkeypatch.setitem(synthetic_study._SCENE_CONSTANTS, "camouflaged", 0.5)
    _generate(tmp_path / "a", 2, 3, 128)  # same version and arguments, another constant
    with open(json_a + ".stamp") as f:
        assert json.load(f)["scene"]["camouflaged"] == 0.5
    # rewritten (the stamp names the new value); the drawing reads the module constants, which
    # this test left alone, so the files come out the same
    assert _read(json_a) == before


def test_splits():
    assert {n: v[1:] for n, v in STUDY_SPLITS.items()} == {
        "synthetic_study_train": (800, 40),
        "synthetic_study_val": (300, 41),
        "synthetic_study_minival": (8, 42),
        "synthetic_study_pilot_train": (800, 50),
        "synthetic_study_pilot_val": (300, 51),
    }
    assert len({v[0] for v in STUDY_SPLITS.values()}) == len(STUDY_SPLITS)


@pytest.fixture
def study_registered_in_tmp(tmp_path, monkeypatch):
    """Re-register the study datasets under ``tmp_path``; restore the originals after."""
    monkeypatch.setenv("TOKENPRUNE_DATA", str(tmp_path))
    with registered_again(STUDY_SPLITS, register_synthetic_study):
        yield tmp_path


def test_registration_is_cheap_and_loads(study_registered_in_tmp):
    root = study_registered_in_tmp
    assert not os.listdir(root), "registration must not generate anything"
    base = root / "synthetic_study"
    for name, (split, num_images, seed) in STUDY_SPLITS.items():
        meta = MetadataCatalog.get(name)
        assert meta.json_file == str(base / "annotations" / f"{split}.json")
        assert meta.image_root == str(base / split)
        assert meta.thing_classes == list(STUDY_CLASSES)
        assert meta.thing_dataset_id_to_contiguous_id == {k + 1: k for k in range(6)}
        assert len(meta.thing_colors) == 6 and meta.evaluator_type == "coco"
        assert meta.generated_on_load is True
        assert meta.synthetic_params == {"num_images": num_images, "seed": seed,
                                         "image_size": 256}

    prepare_dataset("synthetic_study_minival")
    meta = MetadataCatalog.get("synthetic_study_minival")
    assert os.path.isfile(meta.json_file)
    dicts = DatasetCatalog.get("synthetic_study_minival")
    assert len(dicts) == 8
    num_anns = 0
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and d["height"] == d["width"] == 256
        for a in d["annotations"]:
            num_anns += 1
            assert a["bbox_mode"] == BoxMode.XYWH_ABS
            assert STUDY_CLASSES[a["category_id"]] == f"{a['texture']} {a['shape']}"
            assert {"color", "camouflaged"} <= set(a)
    assert num_anns > len(dicts)
    assert sorted(os.listdir(base)) == ["annotations", "minival"], "only the used split"


def test_sample_picture(scenes, tmp_path):
    coco, image_dir, json_file = scenes
    out = draw_study_samples(json_file, image_dir, str(tmp_path / "samples.png"))
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 2 * im.height > 0
    assert os.path.getsize(out) < 400_000
