"""Mixed precision: bf16 autocast on a CPU for a training step and for inference of the
pruned model; train.amp.precision through the trainer. (A 2-process run with bf16 and fp16
gradient compression: tests/test_determinism.py.)"""

import pytest
import torch

from detectron2.config import instantiate
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import EventStorage

from helpers import SVIT_CFG, TINY_SVIT
from tokenprune.config import load_config
from tokenprune.engine import AutocastModel, build_trainer, prepare_datasets
from tokenprune.errors import ConfigError

PRUNED = TINY_SVIT + ["model.backbone.net.fixed_keep_ratio=[0.7,0.49,0.343]"]


def _cfg(opts=()):
    cfg = load_config(SVIT_CFG, PRUNED + ["train.device=cpu", *opts])
    prepare_datasets(cfg)
    return cfg


def _model(cfg):
    torch.manual_seed(0)
    return instantiate(cfg.model)


def test_bf16_training_step_is_finite_and_close_to_fp32():
    cfg = _cfg(["model.backbone.net.gumbel_noise=0.0"])  # same decisions in both precisions
    model = _model(cfg).train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    with EventStorage(0):
        torch.manual_seed(1)
        fp32 = model(batch)
        torch.manual_seed(1)
        bf16 = AutocastModel(model, "cpu", torch.bfloat16)(batch)
    assert set(bf16) == set(fp32)
    for name, loss in bf16.items():
        assert torch.isfinite(loss), name
        assert float(loss) == pytest.approx(float(fp32[name]), rel=0.1, abs=0.02), name
    sum(bf16.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) > 100 and all(torch.isfinite(g).all() for g in grads)
    assert all(g.dtype == torch.float32 for g in grads)  # parameters stay fp32
    gate = model.backbone.net.gates["1"]
    assert gate.fc1.weight.grad.abs().sum() > 0


def test_bf16_inference_of_the_pruned_model():
    cfg = _cfg(["model.roi_heads.box_predictor.test_score_thresh=0.0"])
    model = _model(cfg).eval()
    vit = model.backbone.net
    torch.manual_seed(2)
    image = (torch.rand(3, 256, 256) * 255).round()
    inputs = [{"image": image, "height": 256, "width": 256}]
    with torch.no_grad():
        want = model(inputs)[0]["instances"]
        masks32 = {i: m.clone() for i, m in vit.last_keep_masks.items()}
        feats32 = model.backbone(model.preprocess_image(inputs).tensor)
        bf16 = AutocastModel(model, "cpu", torch.bfloat16)
        got = bf16(inputs)[0]["instances"]
        feats16 = bf16.backbone(model.preprocess_image(inputs).tensor)  # attributes pass through
        masks16 = vit.last_keep_masks
    assert all(0 < m.float().mean() < 1 for m in masks16.values())  # the gather path ran
    for i in masks32:  # top-k decisions barely move
        assert (masks16[i] == masks32[i]).float().mean() > 0.9
    for k in feats32:
        assert feats16[k].dtype == torch.float32 or torch.isfinite(feats16[k]).all()
        err = (feats16[k].float() - feats32[k]).norm() / feats32[k].norm()
        assert err < 0.1, (k, float(err))
    assert len(got) > 0 and len(want) > 0
    assert torch.isfinite(got.pred_boxes.tensor).all() and torch.isfinite(got.scores).all()
    assert got.scores.min() >= 0 and got.scores.max() <= 1
    assert got.pred_masks.dtype == torch.bool and got.pred_masks.shape[-2:] == (256, 256)
    assert 0 < got.pred_masks.float().mean() < 1  # neither overflowed to all-on nor empty


def test_trainer_follows_train_amp():
    cfg = _cfg()
    model = _model(cfg)
    loader, opt = [], torch.optim.SGD(model.parameters(), lr=0.0)
    assert type(build_trainer(cfg, model, loader, opt).model) is type(model)
    cfg.train.amp.enabled = True
    cfg.train.amp.precision = "bfloat16"
    trainer = build_trainer(cfg, model, loader, opt)
    assert isinstance(trainer, SimpleTrainer) and isinstance(trainer.model, AutocastModel)
    assert trainer.model.dtype == torch.bfloat16
    cfg.train.amp.precision = "float16"
    with pytest.raises(ConfigError, match="float16 autocast needs CUDA"):
        build_trainer(cfg, model, loader, opt)
