"""``tokenprune.engine.predictor.Predictor`` on the tiny SViT model (random weights, gates
that prune): same output as the model, batches as single calls, every kind of image file,
COCO results that pycocotools loads."""
import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import SVIT_CFG, TINY_SVIT, TINY_VLTP, VLTP_CFG, prune_some

from tokenprune.engine.predictor import CONFIDENCE_THRESHOLD, Predictor, read_image
from tokenprune.engine.results import coco_results
from tokenprune.errors import BadImageError, DeviceError, InputError
from tokenprune.modeling import find_pruned_vit

LIGHT = ["model.roi_heads.box_predictor.test_topk_per_image=5",
         "model.proposal_generator.post_nms_topk=[100,50]"]


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    p = Predictor(SVIT_CFG, overrides=TINY_SVIT + LIGHT, device="cpu", confidence_threshold=0.0,
                  allow_untrained_gates=True)  # gates set by prune_some
    prune_some(p.model)
    return p


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _same_instances(a, b, atol=0.0):
    assert a.image_size == b.image_size and len(a) == len(b) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=atol, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=atol, rtol=0)
    assert torch.equal(a.pred_classes, b.pred_classes)
    if atol == 0:
        assert torch.equal(a.pred_masks, b.pred_masks)
    else:  # a float difference may flip a few border pixels
        assert (a.pred_masks != b.pred_masks).float().mean() < 1e-3


def test_equals_model_inference(predictor):
    """The test resize (ResizeShortestEdge 256) by hand, then the meta-arch's own inference."""
    import detectron2.data.transforms as T

    image = _rgb(150, 200)
    pred = predictor(image)
    resized = T.ResizeShortestEdge(256, max_size=256).get_transform(image).apply_image(image)
    assert resized.shape == (192, 256, 3) and pred.image.shape == resized.shape
    inp = {"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": 150,
           "width": 200}
    with torch.no_grad():
        ref = predictor.model.inference([inp])[0]["instances"]
    vit = find_pruned_vit(predictor.model)
    _same_instances(pred.instances, ref)
    assert pred.keep_ratios == {i: float(r[0]) for i, r in vit.last_keep_ratios.items()}
    assert sorted(pred.keep_ratios) == [1, 2, 3]
    assert min(pred.keep_ratios.values()) < 1.0, "the gates should prune some tokens"
    for i, m in pred.keep_masks.items():
        assert m.shape == (16, 16) and m.mean() == pytest.approx(pred.keep_ratios[i])


def test_batch_equals_single_calls(predictor):
    images = [_rgb(150, 200, 1), _rgb(300, 120, 2), _rgb(256, 256, 3)]
    batch = predictor.predict_batch(images)
    for image, b in zip(images, batch):
        single = predictor(image)
        _same_instances(b.instances, single.instances, atol=1e-3)
        assert b.instances.image_size == image.shape[:2]
        assert b.keep_ratios == pytest.approx(single.keep_ratios)


def test_compiled_predictor_gives_the_eager_predictions(predictor):
    """compile=True: the inference compiled once (the first call pays it); the boxes, scores
    and keep ratios of the eager predictor; ``model`` stays the eager module."""
    compiled = Predictor(predictor.cfg, device="cpu", confidence_threshold=0.0,
                         allow_untrained_gates=True, compile=True)
    compiled.model.load_state_dict(predictor.model.state_dict())
    assert compiled.compile == "default" and find_pruned_vit(compiled.model) is not None
    image = _rgb(150, 200, 5)
    eager, pred = predictor(image), compiled(image)
    _same_instances(pred.instances, eager.instances, atol=1e-3)
    assert pred.keep_ratios == pytest.approx(eager.keep_ratios, abs=1e-6)
    assert min(pred.keep_ratios.values()) < 1.0
    for i, m in pred.keep_masks.items():
        assert np.array_equal(m, eager.keep_masks[i])


def test_compile_bad_mode_and_unavailable_compiler(predictor, monkeypatch, caplog):
    """A bad mode is one ConfigError naming the modes; without a C++ compiler the model
    runs eagerly after one warning line."""
    from tokenprune.errors import ConfigError
    from tokenprune.modeling import compiled

    with pytest.raises(ConfigError, match=r"compile must be one of none, default, freeze, "
                                          r"got 'fast'"):
        Predictor(predictor.cfg, device="cpu", compile="fast", allow_untrained_gates=True)
    monkeypatch.setattr(compiled, "compile_unavailable", lambda device="cpu": "no compiler")
    caplog.clear()
    with caplog.at_level("WARNING", logger="tokenprune"):
        p = Predictor(predictor.cfg, device="cpu", confidence_threshold=0.0,
                      allow_untrained_gates=True, compile="freeze")
    assert [r.getMessage() for r in caplog.records] == [
        "torch.compile is unavailable (no compiler): running eagerly"]
    p.model.load_state_dict(predictor.model.state_dict())
    image = _rgb(150, 200, 6)
    _same_instances(p(image).instances, predictor(image).instances)


def test_confidence_threshold():
    """The commands' default (``--confidence-threshold``) is the Predictor's."""
    assert inspect.signature(Predictor).parameters["confidence_threshold"].default \
        == CONFIDENCE_THRESHOLD == 0.5
    torch.manual_seed(0)
    p = Predictor(SVIT_CFG, overrides=TINY_SVIT + LIGHT, device="cpu", confidence_threshold=0.3,
                  allow_untrained_gates=True)
    scores = p(_rgb(100, 100)).instances.scores
    assert bool((scores >= 0.3).all())
    with pytest.raises(InputError, match="confidence threshold"):
        Predictor(SVIT_CFG, overrides=TINY_SVIT, device="cpu", confidence_threshold=2.0)


def test_a_device_this_machine_lacks_is_one_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine
    with pytest.raises(DeviceError, match="device=cuda: CUDA is not available on this machine"):
        Predictor(SVIT_CFG, overrides=TINY_SVIT, device="cuda")
    with pytest.raises(DeviceError, match="device=gpu: not a device"):
        Predictor(SVIT_CFG, overrides=TINY_SVIT, device="gpu")


def _image_files(folder):
    """(path, expected (H, W) after EXIF orientation) of every kind of image."""
    files = {}
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "sixteen_bit.png")  # mode I;16
    files["sixteen_bit"] = (folder / "sixteen_bit.png", (48, 64))
    Image.fromarray(_rgb(40, 60)[..., 0]).save(folder / "gray.png")
    files["gray"] = (folder / "gray.png", (40, 60))
    rgba = np.dstack([_rgb(50, 30), np.full((50, 30), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    files["rgba"] = (folder / "rgba.png", (50, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(_rgb(30, 80)).save(folder / "rotated.jpg", exif=exif)
    files["rotated"] = (folder / "rotated.jpg", (80, 30))
    Image.fromarray(_rgb(8, 8)).save(folder / "tiny.png")
    files["tiny"] = (folder / "tiny.png", (8, 8))
    Image.fromarray(_rgb(3000, 4000)).save(folder / "large.jpg", quality=70)
    files["large"] = (folder / "large.jpg", (3000, 4000))
    return files


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    return _image_files(tmp_path_factory.mktemp("kinds"))


@pytest.mark.parametrize("kind", ["sixteen_bit", "gray", "rgba", "rotated", "tiny", "large"])
def test_image_kinds(predictor, image_files, kind):
    path, (h, w) = image_files[kind]
    pred = predictor(str(path))
    assert pred.instances.image_size == (h, w)
    if len(pred.instances):
        assert pred.instances.pred_masks.shape[1:] == (h, w)
        boxes = pred.instances.pred_boxes.tensor
        assert float(boxes[:, 2].max()) <= w and float(boxes[:, 3].max()) <= h
    assert max(pred.image.shape[:2]) == 256 and pred.image.shape[2] == 3  # test resize
    assert len(pred.keep_ratios) == 3


def test_read_image_conversions(image_files):
    sixteen = read_image(str(image_files["sixteen_bit"][0]), "RGB")
    assert sixteen.dtype == np.uint8 and sixteen.shape == (48, 64, 3)
    raw = np.asarray(Image.open(image_files["sixteen_bit"][0])).astype(np.float64)
    np.testing.assert_allclose(sixteen[..., 0], np.round(raw * 255 / 65535), atol=1)
    assert 0 < sixteen.mean() < 255 and len(np.unique(sixteen)) > 10  # scaled, not clipped
    gray = read_image(str(image_files["gray"][0]), "BGR")
    assert gray.shape == (40, 60, 3) and (gray[..., 0] == gray[..., 2]).all()
    assert read_image(str(image_files["rgba"][0]), "RGB").shape == (50, 30, 3)
    rotated = read_image(str(image_files["rotated"][0]), "RGB")
    plain = np.asarray(Image.open(image_files["rotated"][0]).convert("RGB"))
    np.testing.assert_array_equal(rotated, np.rot90(plain, k=-1))  # EXIF 6: 90 deg clockwise


def test_bad_images_one_clear_error(predictor, tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(_rgb(1, 5000)).save(tmp_path / "thin.png")
    cases = {"text.png": "not an image file", "cut.png": "cannot read image",
             "thin.png": "cannot resize a 5000x1 image", "missing.png": "image not found"}
    for name, message in cases.items():
        with pytest.raises(BadImageError, match=message) as e:
            predictor(str(tmp_path / name))
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"\(H, W, 3\) uint8"):
        predictor(np.zeros((10, 10), np.uint8))


def test_task_guided_model_takes_task_id():
    torch.manual_seed(0)
    p = Predictor(VLTP_CFG, overrides=TINY_VLTP + LIGHT, device="cpu", confidence_threshold=0.0,
                  allow_untrained_gates=True)
    image = _rgb(120, 160)
    a, b = p(image, task_id=0), p(image, task_id=3)
    assert a.instances.image_size == (120, 160) and sorted(a.keep_ratios) == [1, 2, 3]
    assert not torch.equal(a.instances.scores, b.instances.scores)  # the task steers it
    with pytest.raises(InputError, match="task_id"):
        p(image)


def test_coco_results_load_with_pycocotools(predictor, tmp_path):
    """Category ids go back to the dataset's ids; pycocotools loads and evaluates them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detectron2.data.catalog import Metadata

    images = [_rgb(150, 200, 5), _rgb(90, 120, 6)]
    dataset_ids = [11, 22, 33, 44]
    meta = Metadata(name="t", thing_dataset_id_to_contiguous_id={d: k for k, d in
                                                               enumerate(dataset_ids)})
    results = []
    for k, pred in enumerate(predictor.predict_batch(images)):
        results += coco_results(pred, k + 1, f"img{k}.png", meta)
    assert results and {r["category_id"] for r in results} <= set(dataset_ids)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)
    gt = {"images": [{"id": k + 1, "file_name": f"img{k}.png", "height": im.shape[0],
                      "width": im.shape[1]} for k, im in enumerate(images)],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 22, "bbox": [10, 10, 50, 40],
                           "area": 2000, "iscrowd": 0,
                           "segmentation": [[10, 10, 60, 10, 60, 50, 10, 50]]}],
          "categories": [{"id": d, "name": f"c{d}"} for d in dataset_ids]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    coco_gt = COCO(str(tmp_path / "gt.json"))
    coco_dt = coco_gt.loadRes(str(tmp_path / "res.json"))
    assert len(coco_dt.getAnnIds()) == len(results)
    for iou_type in ("bbox", "segm"):
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()


def test_precision_runs_the_forward_under_autocast(predictor):
    from tokenprune.errors import ConfigError

    with pytest.raises(ConfigError, match="float16 autocast needs CUDA"):
        Predictor(SVIT_CFG, overrides=TINY_SVIT + LIGHT, device="cpu", precision="float16",
                  allow_untrained_gates=True)
    bf16 = Predictor(predictor.cfg, device="cpu", precision="bfloat16",
                     allow_untrained_gates=True)
    bf16.model.load_state_dict(predictor.model.state_dict())
    image = _rgb(150, 200, 7)
    dtypes = []
    handle = bf16.model.backbone.net.blocks[0].mlp.register_forward_hook(
        lambda module, inputs, output: dtypes.append(output.dtype) and None)
    pred = bf16(image)
    handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert pred.instances.image_size == (150, 200) and sorted(pred.keep_ratios) == [1, 2, 3]


def test_visualize_draws_the_predictors_outputs(predictor, tmp_path, capsys):
    """One PNG per image (names as the demo's stems), one line per image and task, the
    forced keep ratio in every pruned block."""
    from tokenprune.engine.visualize import VisualizeOptions, visualize

    images = [("a/x.png", _rgb(150, 200, 8)), ("b/x.png", _rgb(90, 120, 9))]
    with find_pruned_vit(predictor.model).pruning(keep_ratio=0.5):
        written = visualize(predictor, images, str(tmp_path), VisualizeOptions(task_ids=(0, 2)))
    assert [p.rsplit("/", 1)[1] for p in written] == ["x.png", "x_1.png"]
    for path in written:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["a/x.png task 0", "a/x.png task 2",
                                                 "b/x.png task 0", "b/x.png task 2"]
    assert all("kept: block 1 50%, block 2 50%, block 3 50%" in ln for ln in lines), lines
