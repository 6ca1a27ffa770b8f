"""VLTP: guided gate, task-conditioned Mask R-CNN, the three guidance sources end to end."""
import json
import os

import pytest
import torch

from detectron2.config import instantiate

from helpers import TINY_VLTP, VLTP_CFG, train_net
from tokenprune.config import load_config
from tokenprune.errors import InputError
from tokenprune.modeling import GuidedGate


def test_guided_gate_shapes_and_bad_guidance():
    gate = GuidedGate(dim=48, guidance_dim=16)
    x = torch.randn(2, 30, 48)
    lp = gate(x, guidance=torch.randn(2, 16))
    assert lp.shape == (2, 30, 2)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 30))
    with pytest.raises(InputError, match="needs a guidance"):
        gate(x)
    with pytest.raises(InputError, match="shape"):
        gate(x, guidance=torch.randn(2, 8))


def _tiny_model():
    cfg = load_config(VLTP_CFG, [o for o in TINY_VLTP if not o.startswith("dataloader")])
    cfg.train.device = "cpu"
    torch.manual_seed(0)
    return instantiate(cfg.model)


def _inputs(task_ids, with_instances=False):
    from detectron2.structures import BitMasks, Boxes, Instances

    out = []
    for t in task_ids:
        d = {"image": torch.randint(0, 255, (3, 64, 64)).float(), "height": 64, "width": 64,
             "task_id": t, "prompt": f"task {t}", "guidance": torch.randn(384).tolist()}
        if with_instances:
            inst = Instances((64, 64))
            inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 30.0, 30.0]]))
            inst.gt_classes = torch.tensor([0])
            m = torch.zeros(1, 64, 64, dtype=torch.bool)
            m[0, 8:30, 8:30] = True
            inst.gt_masks = BitMasks(m)
            d["instances"] = inst
        out.append(d)
    return out


def test_training_losses_include_keep_ratio_and_relevance():
    from detectron2.utils.events import EventStorage

    model = _tiny_model().train()
    with EventStorage():
        losses = model(_inputs([0, 3], with_instances=True))
    assert {"loss_keep_ratio", "loss_relevance", "loss_cls", "loss_mask"} <= set(losses)
    sum(losses.values()).backward()
    gate = model.backbone.net.gates["1"]
    assert all(p.grad is not None for p in gate.parameters())
    assert model.guidance.embedding.weight.grad is not None


def test_task_changes_the_kept_tokens():
    model = _tiny_model().eval()
    vit = model.backbone.net
    vit.fixed_keep_ratio = {i: 0.5 for i in vit.pruned_blocks}
    with torch.no_grad():
        # make the guidance decisive: distinct task embeddings
        model.guidance.embedding.weight.normal_(std=3.0)
        image = _inputs([0])[0]["image"]
        masks = []
        for t in (0, 5):
            out = model.inference([{"image": image, "height": 64, "width": 64, "task_id": t}])
            masks.append(vit.last_keep_masks[1].clone())
            assert "instances" in out[0]
    assert not torch.equal(masks[0], masks[1])


@pytest.mark.parametrize("source", ["task", "text", "vector"])
def test_synthetic_vltp_trains_and_evaluates_with_each_guidance_source(source, tmp_path):
    out = str(tmp_path / source)
    proc = train_net(VLTP_CFG, TINY_VLTP + [
        f"model.guidance.name={source}", "train.max_iter=2", "train.flops_period=2",
        f"train.output_dir={out}", "train.eval_period=0"], env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "metrics.json")) as f:
        keys = set().union(*(json.loads(line) for line in f if line.strip()))
    assert {"keep_ratio/mean", "keep_ratio/layer1", "loss_keep_ratio", "loss_relevance",
            "flops/backbone_ratio", "task_seg/mIoU", "segm/AP"} <= keys
