"""Turn a dense ViTDet Mask R-CNN config into a task-conditioned model, and that into VLTP."""
from tokenprune.modeling import PrunedViT, TaskConditionedRCNN, svit_schedule

from .guidance import GUIDANCE_DIM, guidance_node
from .svit import make_svit


def make_task_conditioned(model, num_tasks: int) -> None:
    """In place: predicts the instances relevant to the input's task (one class); a learned
    embedding per task id modulates the feature pyramid and the box head (FiLM)."""
    model._target_ = TaskConditionedRCNN
    model.guidance = guidance_node(num_tasks=num_tasks)
    model.guidance_dim = GUIDANCE_DIM
    model.relevance_loss_weight = 0.0
    model.roi_heads.num_classes = 1
    # a PrunedViT without pruned blocks is Detectron2's ViT; make_vltp adds the decoders
    model.backbone.net._target_ = PrunedViT
    model.backbone.net.pruned_blocks = []
    model.backbone.net.keep_ratios = []


def make_vltp(model, depth: int = 12, base: float = 0.75) -> None:
    """In place, on a task-conditioned model: guided pruning decoders at SViT's blocks with
    the schedule of ``base`` (base, base^2, base^3 per stage), inherit mode (reactivated in
    the output map), top-k at inference, the relevance loss on."""
    make_svit(model, depth=depth)
    net = model.backbone.net
    net.update(svit_schedule(depth, base=base))
    net.reactivate = False
    net.dynamic = False
    net.gate = "guided"
    # inherit mode: a token must pass every decoder, so each starts by keeping ~95% (not 73%)
    net.gate_kwargs = dict(guidance_dim=GUIDANCE_DIM, init_keep_bias=3.0)
    model.relevance_loss_weight = 1.0
