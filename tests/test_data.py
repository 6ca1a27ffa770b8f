"""Tests of the synthetic shapes dataset, its Detectron2 registration and the COCO helpers."""

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import registered_again
from PIL import Image
from pycocotools.coco import COCO

try:
    import detectron2  # noqa: F401
except ImportError as e:
    raise ImportError(
        "the TokenPrune tests need Detectron2, which is not installed in this Python "
        "environment; install it as described in "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    ) from e

import tokenprune
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode
from tokenprune.data import (
    MIXED_COLOR_SPLITS,
    SHAPE_CLASSES,
    SYNTHETIC_SPLITS,
    default_data_root,
    generate_synthetic_shapes,
    prepare_dataset,
    register_synthetic_shapes,
    write_coco_layout,
)
from tokenprune.errors import DatasetNotFoundError

BASE_RGB = {
    "circle": ("red", (220, 40, 40)),
    "square": ("green", (40, 170, 60)),
    "triangle": ("blue", (40, 80, 220)),
    "star": ("yellow", (235, 205, 30)),
}


def _generate(root, num_images=6, seed=3, image_size=96, class_colors=True):
    json_file = os.path.join(root, "annotations", "shapes.json")
    image_dir = os.path.join(root, "images")
    generate_synthetic_shapes(json_file, image_dir, num_images, seed, image_size,
                              class_colors=class_colors)
    return json_file, image_dir


def _files(root):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A generated dataset of 24 images of 128x128: (pycocotools COCO, image folder)."""
    json_file, image_dir = _generate(tmp_path_factory.mktemp("shapes"), 24, 0, 128)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(json_file)
    return coco, image_dir


def test_same_seed_gives_identical_files(tmp_path):
    json_a, images_a = _generate(tmp_path / "a")
    json_b, images_b = _generate(tmp_path / "b")
    assert _read(json_a) == _read(json_b)
    names = sorted(os.listdir(images_a))
    assert names == sorted(os.listdir(images_b)) and len(names) == 6
    for name in names:
        assert _read(os.path.join(images_a, name)) == _read(os.path.join(images_b, name))


def test_different_seeds_differ(tmp_path):
    json_a, images_a = _generate(tmp_path / "a", seed=3)
    json_b, images_b = _generate(tmp_path / "b", seed=4)
    assert _read(json_a) != _read(json_b)
    name = sorted(os.listdir(images_a))[0]
    assert _read(os.path.join(images_a, name)) != _read(os.path.join(images_b, name))


def test_categories_and_images(dataset):
    coco, image_dir = dataset
    cats = coco.loadCats(coco.getCatIds())
    assert [c["id"] for c in cats] == list(range(1, len(SHAPE_CLASSES) + 1))
    assert [c["name"] for c in cats] == list(SHAPE_CLASSES) == list(BASE_RGB)
    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(os.path.join(image_dir, img["file_name"])) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert im.size == (img["width"], img["height"]) == (128, 128)


def test_masks_areas_and_boxes_agree(dataset):
    coco, image_dir = dataset
    kinds = set()
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) > 20
    for ann in anns:
        mask = coco.annToMask(ann).astype(bool)
        kinds.add(type(ann["segmentation"]).__name__)
        assert mask.sum() == ann["area"] > 0
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        tight = [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]
        assert ann["bbox"] == [float(v) for v in tight]
        assert ann["iscrowd"] == 0
        shape = coco.loadCats(ann["category_id"])[0]["name"]
        assert ann["shape"] == shape and ann["color"] == BASE_RGB[shape][0]
    assert kinds == {"list", "dict"}  # polygons for whole polygonal shapes, RLE otherwise


def test_masks_are_the_visible_drawn_pixels(dataset):
    coco, image_dir = dataset
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(os.path.join(image_dir, img["file_name"])), np.float32)
        covered = np.zeros(pixels.shape[:2], bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            mask = coco.annToMask(ann).astype(bool)
            assert not (covered & mask).any(), "visible masks of one image must not overlap"
            covered |= mask
            # colour jitter is +-25 per channel, shading and noise add a few more
            mean = pixels[mask].mean(axis=0)
            assert np.abs(mean - BASE_RGB[ann["shape"]][1]).max() < 40, (img, ann["id"], mean)


def test_mixed_colours_are_drawn_independently_of_the_class(tmp_path):
    json_file, image_dir = _generate(tmp_path, 24, 0, 128, class_colors=False)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(json_file)
    rgb_of = dict(BASE_RGB.values())  # colour name -> RGB
    pairs = set()
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(os.path.join(image_dir, img["file_name"])), np.float32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            shape = coco.loadCats(ann["category_id"])[0]["name"]
            assert ann["shape"] == shape
            mean = pixels[coco.annToMask(ann).astype(bool)].mean(axis=0)
            # the colour the annotation names
            assert np.abs(mean - rgb_of[ann["color"]]).max() < 40, (img, ann["id"], mean)
            pairs.add((shape, ann["color"]))
    assert len(pairs) >= 10  # of the 16 (class, colour) pairs: colour says little of the class
    # the same seed with class colours is the class-coloured dataset, untouched by the switch
    json_a, _ = _generate(tmp_path / "a", 24, 0, 128)
    json_b, _ = _generate(tmp_path / "b", 24, 0, 128)
    assert _read(json_a) == _read(json_b) != _read(json_file)


def test_object_counts_and_empty_images(dataset):
    coco, _ = dataset
    counts = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert len(counts) == 24
    assert counts.count(0) >= 1
    assert all(0 <= c <= 5 for c in counts)
    assert sum(c >= 3 for c in counts) >= 3


def test_generation_is_skipped_when_unchanged(tmp_path):
    json_file, image_dir = _generate(tmp_path, num_images=4)
    files = _files(tmp_path)
    past = 1_000_000_000
    for f in files:
        os.utime(f, (past, past))
    assert _generate(tmp_path, num_images=4) == (json_file, image_dir)
    assert _files(tmp_path) == files
    assert all(os.stat(f).st_mtime == past for f in files)

    # a run interrupted before its stamp was written does not count as complete
    os.remove(json_file + ".stamp")
    _generate(tmp_path, num_images=4)
    assert os.stat(json_file).st_mtime != past

    # a missing image or different parameters regenerate
    os.remove(os.path.join(image_dir, "000002.png"))
    _generate(tmp_path, num_images=4)
    assert os.path.isfile(os.path.join(image_dir, "000002.png"))
    _generate(tmp_path, num_images=5)
    with open(json_file) as f:
        assert len(json.load(f)["images"]) == 5
    with open(json_file + ".stamp") as f:
        assert json.load(f)["num_images"] == 5


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENPRUNE_DATA", str(tmp_path))
    assert default_data_root() == str(tmp_path)
    monkeypatch.delenv("TOKENPRUNE_DATA")
    assert default_data_root() == os.path.expanduser("~/.cache/tokenprune/data")


@pytest.fixture
def synthetic_registered_in_tmp(tmp_path, monkeypatch):
    """Re-register the synthetic datasets under ``tmp_path``; restore the originals after."""
    monkeypatch.setenv("TOKENPRUNE_DATA", str(tmp_path))
    with registered_again([*SYNTHETIC_SPLITS, *MIXED_COLOR_SPLITS], register_synthetic_shapes):
        yield tmp_path


def test_registration_is_cheap_and_loads(synthetic_registered_in_tmp):
    root = synthetic_registered_in_tmp
    assert not os.listdir(root), "registration must not generate anything"
    register_synthetic_shapes(str(root / "elsewhere"))  # already registered: kept as is

    meta = MetadataCatalog.get("synthetic_shapes_val")
    assert meta.json_file == str(root / "synthetic_shapes" / "annotations" / "val.json")
    assert meta.image_root == str(root / "synthetic_shapes" / "val")
    assert meta.thing_classes == list(SHAPE_CLASSES)
    assert len(meta.thing_colors) == len(SHAPE_CLASSES)
    assert meta.evaluator_type == "coco"

    prepare_dataset("synthetic_shapes_val")  # what an evaluator needs before it starts
    assert os.path.isfile(meta.json_file)
    dicts = DatasetCatalog.get("synthetic_shapes_val")
    assert len(dicts) == SYNTHETIC_SPLITS["synthetic_shapes_val"][1]
    num_anns = 0
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and d["height"] == d["width"] == 256
        for a in d["annotations"]:
            num_anns += 1
            assert a["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= a["category_id"] < len(SHAPE_CLASSES)
            assert a["shape"] == SHAPE_CLASSES[a["category_id"]]
            assert a["color"] in {"red", "green", "blue", "yellow"}
            assert isinstance(a["segmentation"], (list, dict)) and a["segmentation"]
    assert num_anns > len(dicts)
    assert not os.path.exists(root / "synthetic_shapes" / "train"), "only the used split"

    mixed = MetadataCatalog.get("synthetic_mixcolor_val")
    assert mixed.json_file == str(root / "synthetic_mixcolor" / "annotations" / "val.json")
    assert mixed.synthetic_params["class_colors"] is False
    assert meta.synthetic_params["class_colors"] is True
    assert not os.path.exists(root / "synthetic_mixcolor")


def test_prepare_dataset_unregistered_name():
    with pytest.raises(DatasetNotFoundError) as e:
        prepare_dataset("synthetic_shapes_tran")
    message = str(e.value)
    assert "\n" not in message
    assert "synthetic_shapes_tran" in message and "synthetic_shapes_train" in message


def test_prepare_dataset_missing_files(tmp_path):
    json_file = str(tmp_path / "missing" / "instances.json")
    register_coco_instances("tokenprune_test_missing", {}, json_file, str(tmp_path / "images"))
    try:
        with pytest.raises(DatasetNotFoundError) as e:
            prepare_dataset("tokenprune_test_missing")
    finally:
        DatasetCatalog.pop("tokenprune_test_missing")
        MetadataCatalog.pop("tokenprune_test_missing")
    message = str(e.value)
    assert "\n" not in message
    assert "tokenprune_test_missing" in message and json_file in message


_BUILTIN_COCO_CHECK = textwrap.dedent(
    """
    import json, os
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from tokenprune.data import prepare_dataset
    from tokenprune.errors import DatasetNotFoundError

    prepare_dataset("coco_2017_val")
    dicts = DatasetCatalog.get("coco_2017_val")
    meta = MetadataCatalog.get("coco_2017_val")
    try:
        prepare_dataset("coco_2017_train")
        error = None
    except DatasetNotFoundError as e:
        error = str(e)
    anns = [a for d in dicts for a in d["annotations"]]
    print(json.dumps({
        "json_file": meta.json_file,
        "num_images": len(dicts),
        "num_annotations": len(anns),
        "files_exist": all(os.path.isfile(d["file_name"]) for d in dicts),
        "all_segmented": all(a["segmentation"] for a in anns),
        "classes": sorted({meta.thing_classes[a["category_id"]] for a in anns}),
        "error": error,
    }))
    """
)


def test_builtin_coco_registration_loads_generated_layout(tmp_path):
    write_coco_layout(str(tmp_path), "val2017", num_images=6, seed=0)
    json_file = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    images = sorted(os.listdir(tmp_path / "coco" / "val2017"))
    assert images == [f"{i:012d}.jpg" for i in range(1, 7)]
    with open(json_file) as f:
        coco_json = json.load(f)
    assert len(coco_json["categories"]) == 80

    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(tokenprune.__file__)))
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_dir, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _BUILTIN_COCO_CHECK],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert result["json_file"] == str(json_file)
    assert result["num_images"] == 6 and result["files_exist"]
    assert result["num_annotations"] == len(coco_json["annotations"]) > 0
    assert result["all_segmented"]
    assert set(result["classes"]) <= {"sports ball", "tv", "kite", "frisbee"}

    error = result["error"]
    assert error is not None and "\n" not in error
    assert "coco_2017_train" in error
    assert str(tmp_path / "coco" / "annotations" / "instances_train2017.json") in error
    assert "DETECTRON2_DATASETS" in error and "coco/" in error
