"""End to end: Detectron2's dense ViTDet Mask R-CNN and the pruned one built from the same
weights with every token kept give the same boxes, scores, classes and masks (fp32)."""
import pytest
import torch

from detectron2.config import instantiate

from helpers import DENSE_CFG, SVIT_CFG, TINY, TINY_SVIT
from tokenprune.checkpoint import TokenPruneCheckpointer
from tokenprune.config import load_config
from tokenprune.modeling import PrunedViT

WINDOWS = {"global": "[]", "windowed": "[0,2]"}


@pytest.mark.parametrize("attention", sorted(WINDOWS))
def test_dense_and_keep_all_pruned_mask_rcnn_agree(attention):
    window = f"model.backbone.net.window_block_indexes={WINDOWS[attention]}"
    extra = [window, "model.roi_heads.box_predictor.test_score_thresh=0.0"]
    torch.manual_seed(0)
    dense = instantiate(load_config(DENSE_CFG, TINY + extra).model).eval()
    assert type(dense.backbone.net) is not PrunedViT
    with torch.no_grad():  # trained-looking rel-pos tables (ViTDet starts them at zero)
        for name, p in dense.named_parameters():
            if "rel_pos" in name:
                p.normal_(std=0.5)
    pruned = instantiate(load_config(
        SVIT_CFG, TINY_SVIT + extra + ["model.backbone.net.fixed_keep_ratio=1.0"]).model).eval()
    checkpointer = TokenPruneCheckpointer(pruned)
    checkpointer._load_model({"model": dict(dense.state_dict())})
    assert all(".gates." in k for k in checkpointer.last_report.new)

    torch.manual_seed(1)
    image = (torch.rand(3, 200, 240) * 255).round()
    inputs = [{"image": image, "height": 200, "width": 240}]
    with torch.no_grad():
        (want,), (got,) = dense(inputs), pruned(inputs)
    want, got = want["instances"], got["instances"]
    assert len(want) > 10 and len(got) == len(want)
    assert torch.equal(got.pred_classes, want.pred_classes)
    assert torch.allclose(got.pred_boxes.tensor, want.pred_boxes.tensor, atol=1e-4)
    assert torch.allclose(got.scores, want.scores, atol=1e-5)
    assert torch.equal(got.pred_masks, want.pred_masks)
    vit = pruned.backbone.net
    assert all(bool(m.all()) for m in vit.last_keep_masks.values())
