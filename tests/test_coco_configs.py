"""Every COCO and COCO-Tasks recipe instantiates, trains one iteration and runs inference.

The config's dataset names are registered, for the test only, to tiny generated datasets in
the exact COCO (COCO-Tasks) format; the image size is reduced through overrides (ViTDet-B's
depth and width stay the recipe's). Weights start from scratch (no downloads here).
"""
import glob
import json
import os

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.utils.logger import setup_logger

from helpers import ROOT
from tokenprune.config import load_config
from tokenprune.data.coco import write_coco_layout
from tokenprune.data.coco_tasks import register_coco_tasks, write_coco_tasks_layout
from tokenprune.engine import build_model, check_train_config, do_train, prepare_datasets
from tokenprune.engine import train_loop
from tokenprune.engine.train_loop import dataset_names

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "COCO*", "*.py")))
SIZE = 128  # input side in pixels (the recipes: 1024)


def small(out_dir: str) -> list:
    return [
        f"model.backbone.net.img_size={SIZE}", f"model.backbone.square_pad={SIZE}",
        f"dataloader.train.mapper.augmentations.1.target_height={SIZE}",
        f"dataloader.train.mapper.augmentations.1.target_width={SIZE}",
        f"dataloader.train.mapper.augmentations.2.crop_size=[{SIZE},{SIZE}]",
        f"dataloader.test.mapper.augmentations.0.short_edge_length={SIZE}",
        f"dataloader.test.mapper.augmentations.0.max_size={SIZE}",
        "dataloader.train.total_batch_size=1", "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "model.roi_heads.box_predictor.test_score_thresh=0.0",  # untrained: scores are low
        # fewer regions: the 4-conv box head on 1000 proposals dominates the CPU time
        "model.proposal_generator.post_nms_topk=[64,32]", "model.roi_heads.batch_size_per_image=32",
        "model.roi_heads.box_predictor.test_topk_per_image=10",
        "train.device=cpu", "train.amp.enabled=False", "train.init_checkpoint=",
        "train.max_iter=1", "train.eval_period=1", "train.flops_period=0",
        "train.flops_num_images=0",  # ViTDet-B's FLOPs at evaluation: tested on the tiny model
        "train.checkpointer.period=1000", "train.log_period=1", f"train.output_dir={out_dir}",
    ]


def _rle_as_crowd(json_file: str) -> None:
    """COCO's own convention: RLE masks only on crowd regions (the recipes' polygon mask
    format cannot take an RLE instance); the generator writes RLE for circles too."""
    with open(json_file) as f:
        data = json.load(f)
    for ann in data["annotations"]:
        ann["iscrowd"] = int(isinstance(ann["segmentation"], dict))
    with open(json_file, "w") as f:
        json.dump(data, f)


def register_tiny(monkeypatch, names, root):
    """Register ``names`` (COCO 2017 or COCO-Tasks) to generated files under ``root``."""
    splits = {n: "train2017" if "train" in n else "val2017" for n in names
              if not n.startswith("coco_tasks")}
    for split in set(splits.values()):  # uses the builtin COCO metadata: before replacing it
        write_coco_layout(root, split=split, num_images=3)
        _rle_as_crowd(os.path.join(root, "coco", "annotations", f"instances_{split}.json"))
    for name in names:
        monkeypatch.delitem(DatasetCatalog.data, name, raising=False)
        monkeypatch.delitem(MetadataCatalog.data, name, raising=False)
    for name, split in splits.items():
        json_file = os.path.join(root, "coco", "annotations", f"instances_{split}.json")
        image_root = os.path.join(root, "coco", split)
        DatasetCatalog.register(name, lambda j=json_file, i=image_root, n=name:
                                load_coco_json(j, i, n))
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                      evaluator_type="coco", **_get_builtin_metadata("coco"))
    if len(splits) < len(names):  # COCO-Tasks: the config's names hold task 1 only
        for split, count in (("train", 6), ("test", 2)):
            write_coco_tasks_layout(root, splits=(split,), task_ids=(1,), num_images=count,
                                    image_size=SIZE)
        register_coco_tasks(root, prefix="tiny_coco_tasks")
        for name in set(names) - set(splits):
            tiny = name.replace("coco_tasks", "tiny_coco_tasks_task1")
            DatasetCatalog.register(name, DatasetCatalog.data[tiny])
            MetadataCatalog.get(name).set(**{k: v for k, v in MetadataCatalog.get(tiny).as_dict()
                                             .items() if k != "name"})


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.basename(c) for c in CONFIGS])
def test_recipe_trains_one_iteration_and_evaluates(config, tmp_path, monkeypatch):
    setup_logger(name="detectron2")  # so the trainer's own failures are visible
    out = str(tmp_path / "out")
    cfg = load_config(config, small(out))
    check_train_config(cfg)
    register_tiny(monkeypatch, dataset_names(cfg), str(tmp_path / "datasets"))
    prepare_datasets(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.backbone.net.parameters()) > 80e6  # ViTDet-B
    saved = []  # saving ViTDet-B with AdamW state (1 GB) would take most of the test's time
    monkeypatch.setattr(train_loop.TokenPruneCheckpointer, "save",
                        lambda self, name, **kw: saved.append(name))
    results = do_train(cfg, model)
    assert saved == ["model_final"]
    assert "bbox" in results and "segm" in results
    if "COCOTasks" in config:
        assert "task_seg" in results
    assert os.path.isfile(os.path.join(out, "metrics.json"))
