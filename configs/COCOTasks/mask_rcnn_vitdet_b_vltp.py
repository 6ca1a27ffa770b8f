"""VLTP on COCO-Tasks: ViTDet-B Mask R-CNN that segments the objects preferred for a task.

14 tasks ("step on something", ..., "pound carpet"); the guidance is a learned embedding
per task id (``model.guidance.name=text`` encodes the task's prompt with the packaged
all-MiniLM-L6-v2; ``=vector`` reads an input ``"guidance"`` vector, e.g. a multimodal LLM's
SEG token, of size ``model.guidance.in_dim``). Guided pruning decoders at blocks 3-11 with
keep targets 0.8 / 0.67 / 0.53 (about 25% fewer backbone FLOPs), inherit mode, pruned
tokens reactivated in the output map. Fine-tuned from the dense ViTDet-B COCO model.
Needs ``$DETECTRON2_DATASETS/coco-tasks/annotations`` and ``$DETECTRON2_DATASETS/coco``.
"""
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator

from tokenprune.evaluation import TaskMaskIoUEvaluator
from tokenprune.modeling import PrunedViT, TaskConditionedRCNN

from ..common.guidance import GUIDANCE_DIM, guidance_node
from ..common.svit import make_svit
from ..COCO.mask_rcnn_vitdet_b_svit import dataloader, lr_multiplier, model, optimizer, train

model._target_ = TaskConditionedRCNN
model.guidance = guidance_node(num_tasks=14, first_task_id=1)
model.guidance_dim = GUIDANCE_DIM
model.relevance_loss_weight = 1.0
model.roi_heads.num_classes = 1
model.backbone.net._target_ = PrunedViT
model.backbone.net.window_block_indexes = [0, 1, 3, 4, 6, 7, 9, 10]
make_svit(model, depth=12)
model.backbone.net.keep_ratios = [0.8] * 3 + [0.67] * 3 + [0.53] * 3
model.backbone.net.reactivate = False
model.backbone.net.gate = "guided"
model.backbone.net.gate_kwargs = dict(guidance_dim=GUIDANCE_DIM)

dataloader.train.dataset.names = "coco_tasks_train"
dataloader.train.mapper.instance_mask_format = "bitmask"
dataloader.test.dataset.names = "coco_tasks_test"
dataloader.evaluator = [
    # COCO-Tasks pairs are not a COCO json: the evaluator writes one to output_dir
    L(COCOEvaluator)(dataset_name="${...test.dataset.names}",
                     output_dir="${....train.output_dir}/inference"),
    L(TaskMaskIoUEvaluator)(dataset_name="${...test.dataset.names}"),
]
train.output_dir = "output/cocotasks_vitdet_b_vltp"
