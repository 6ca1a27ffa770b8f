"""VLTP: guided gate, task-conditioned Mask R-CNN, the three guidance sources end to end."""
import json
import os

import pytest
import torch

from detectron2.config import instantiate

from helpers import SVIT_CFG, TINY_SVIT, TINY_VLTP, VLTP_CFG
from tokenprune.config import load_config
from tokenprune.errors import InputError
from tokenprune.modeling import GuidedGate
from tokenprune.modeling.vltp import relevance_ranking_loss


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
    with torch.no_grad(), vit.pruning(keep_ratio=0.5):
        # make the guidance decisive: distinct task embeddings
        model.guidance.embedding.weight.normal_(std=3.0)
        image = _inputs([0])[0]["image"]
        masks = []
        for t in (0, 5):
            out = model.inference([{"image": image, "height": 64, "width": 64, "task_id": t}])
            masks.append(vit.last_keep_masks[1].clone())
            assert "instances" in out[0]
    assert not torch.equal(masks[0], masks[1])


def test_relevance_ranking_loss_orders_tokens_and_ignores_the_level():
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]])
    right = torch.tensor([[2.0, 1.0, -1.0, -2.0, -1.5]])
    wrong = -right
    assert relevance_ranking_loss(right, targets) < 0.2 < relevance_ranking_loss(wrong, targets)
    # shifting every score (the keep level) leaves the loss unchanged
    assert torch.allclose(relevance_ranking_loss(right + 5.0, targets),
                          relevance_ranking_loss(right, targets))
    # all relevant, or nothing relevant: no pair, no loss
    for t in (torch.ones(1, 5), torch.zeros(1, 5)):
        assert relevance_ranking_loss(right, t).item() == 0.0


def test_guided_gate_learns_task_dependent_relevance():
    """Tokens carry one of two attributes; task 0 wants attribute 0, task 1 attribute 1.
    Only the guidance tells the gate which: trained with the ranking loss, it ranks the
    wanted tokens first for both tasks on the same tokens."""
    torch.manual_seed(0)
    dim, n = 16, 24
    gate = GuidedGate(dim=dim, guidance_dim=8, hidden_dim=16, num_heads=2)
    task_emb = torch.randn(2, 8)
    opt = torch.optim.Adam(gate.parameters(), lr=3e-3)

    def batch(tasks):
        attr = torch.randint(0, 2, (len(tasks), n))
        x = torch.randn(len(tasks), n, dim) * 0.3
        x[..., 0] += 2.0 * attr - 1.0
        return x, attr, (attr == tasks[:, None]).float()

    for _ in range(200):
        tasks = torch.randint(0, 2, (16,))
        x, _, target = batch(tasks)
        lp = gate(x, guidance=task_emb[tasks])
        loss = relevance_ranking_loss(lp[..., 0] - lp[..., 1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, attr, _ = batch(torch.zeros(1, dtype=torch.long))
    with torch.no_grad():
        for task in (0, 1):
            lp = gate(x, guidance=task_emb[task:task + 1])
            top = (lp[0, :, 0] - lp[0, :, 1]).topk(int((attr[0] == task).sum())).indices
            assert (attr[0, top] == task).float().mean() > 0.9


def test_box_head_is_task_conditioned():
    """With the box FiLM active, the same image scores its regions differently per task."""
    model = _tiny_model().eval()
    with torch.no_grad():
        model.guidance.embedding.weight.normal_(std=3.0)
        model.box_film.weight.normal_(std=0.5)
        image = _inputs([0])[0]["image"]
        model.roi_heads.box_predictor.test_score_thresh = 0.0
        scores = [model.inference([{"image": image, "height": 64, "width": 64, "task_id": t}],
                                  do_postprocess=False)[0].scores for t in (0, 5)]
    assert len(scores[0]) > 0 and not torch.equal(scores[0], scores[1])


@pytest.mark.parametrize("source", ["task", "text", "vector"])
def test_synthetic_vltp_trains_and_evaluates_with_each_guidance_source(source, tmp_path,
                                                                      train_in_process,
                                                                      monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the text encoder's weights ship with it
    out = str(tmp_path / source)
    train_in_process(VLTP_CFG, TINY_VLTP + [
        f"model.guidance.name={source}", "train.max_iter=2", "train.flops_period=2",
        f"train.output_dir={out}", "train.eval_period=0"])
    with open(os.path.join(out, "metrics.json")) as f:
        keys = set().union(*(json.loads(line) for line in f if line.strip()))
    assert {"keep_ratio/mean", "keep_ratio/layer1", "loss_keep_ratio", "loss_relevance",
            "flops/backbone_ratio", "task_seg/mIoU", "segm/AP"} <= keys


SCENES_CFGS = [VLTP_CFG.replace("_vltp.py", f"_scenes_{name}.py")
               for name in ("task_dense", "vltp_frozen_vit")]
# TINY_VLTP on the task scenes, trained and evaluated on the 8 minival scenes (the 800
# training scenes would take a test most of a minute to generate)
TINY_SCENES = [o for o in TINY_VLTP if not o.startswith("dataloader.test.dataset")] + [
    f"dataloader.{split}.dataset.names=synthetic_task_scenes_minival"
    for split in ("train", "test")]


@pytest.mark.parametrize("config", SCENES_CFGS, ids=["task_dense", "vltp_frozen_vit"])
def test_task_scene_configs_train_and_evaluate(config, tmp_path, train_in_process):
    cfg = load_config(config, [])
    assert cfg.model.guidance.num_tasks == 11
    assert cfg.dataloader.test.dataset.names == "synthetic_task_scenes_val"
    # the tiny unpruned task model keeps no gates
    overrides = TINY_SCENES if "vltp" in config else [
        o for o in TINY_SCENES if not o.startswith(("model.backbone.net.pruned_blocks",
                                                    "model.backbone.net.keep_ratios"))]
    out = str(tmp_path / "out")
    train_in_process(config, overrides + ["train.max_iter=2", "train.eval_period=0",
                                          "train.flops_period=0", f"train.output_dir={out}"])
    with open(os.path.join(out, "metrics.json")) as f:
        keys = set().union(*(json.loads(line) for line in f if line.strip()))
    assert {"task_seg/mIoU", "segm/AP"} <= keys


def test_frozen_vit_trains_only_decoders_and_heads():
    """The paper's setting: the ViT's own weights get a zero rate, its decoders 10x, the
    neck, heads, guidance and FiLM the base rate; one AdamW step moves only those."""
    cfg = load_config(SCENES_CFGS[1], [o for o in TINY_SCENES if not o.startswith("dataloader")])
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    group_lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        frozen = name.startswith("backbone.net.") and ".gates." not in name
        expected = 0.0 if frozen else 1e-3 if ".gates." in name else 1e-4
        assert group_lr[id(p)] == pytest.approx(expected), name
        assert torch.equal(p, before[name]) == frozen, name


def test_new_module_lr_factor():
    from tokenprune.engine.lr import new_module_lr_factor

    kw = dict(modules=("gates",), factor=10.0)
    assert new_module_lr_factor("backbone.net.gates.3.head.1.weight", **kw) == 10.0
    assert new_module_lr_factor("backbone.net.blocks.3.attn.qkv.weight", **kw) == 1.0
    assert new_module_lr_factor("backbone.net.blocks.3.attn.qkv.weight", **kw, rest=0.0) == 0.0


@pytest.mark.parametrize("config,overrides,gate_lr,rest_lr", [
    (VLTP_CFG, TINY_VLTP, 1e-3, 1e-4),  # decoders at 10x the rate of the pretrained model
    (VLTP_CFG.replace("_vltp.py", "_vltp_decoders_only.py"), TINY_VLTP, 1e-3, 0.0),  # rest frozen
    (SVIT_CFG.replace("_svit.py", "_svit_gates_only.py"), TINY_SVIT, 1e-3, 0.0),
])
def test_decoder_learning_rates(config, overrides, gate_lr, rest_lr):
    cfg = load_config(config, [o for o in overrides if not o.startswith("dataloader")])
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    gate_params = {id(p) for p in model.backbone.net.gates.parameters()}
    for group in optimizer.param_groups:
        is_gate = {id(p) in gate_params for p in group["params"]}
        assert len(is_gate) == 1  # no group mixes gates and other parameters
        assert group["lr"] == pytest.approx(gate_lr if is_gate.pop() else rest_lr)
    # one AdamW step: the gates move, a zero rate leaves a parameter exactly as it was
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (".gates." in name or rest_lr > 0), name
