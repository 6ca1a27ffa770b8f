"""Training settings for the CPU-sized synthetic runs (from Detectron2's common/train.py)."""
import torch
from fvcore.common.param_scheduler import CosineParamScheduler

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

train = model_zoo.get_config("common/train.py").train
train.device = "cuda" if torch.cuda.is_available() else "cpu"
train.max_iter = 400
train.eval_period = 400
train.log_period = 20
train.checkpointer = dict(period=100, max_to_keep=3)
train.seed = 0
# the same seed gives the same numbers (tokenprune.engine.determinism): every RNG seeded,
# deterministic kernels, and a fixed thread count (float sums depend on it; 2 = the cores
# the README's figures were measured on, on any machine)
train.deterministic = True
train.num_threads = 2
train.flops_period = 0
train.flops_num_images = 2  # FLOPs (FlopsHook, evaluation) on the first N test images
train.amp.precision = "bfloat16"  # with train.amp.enabled=True: autocast (also on a CPU)
train.gate_noise_anneal = 0.0  # SViT: Gumbel noise 1 throughout (GateNoiseHook)
train.compile = "none"  # --eval-only: "default" or "freeze" runs the evaluation torch.compiled

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 3e-4
optimizer.weight_decay = 0.05
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.01),
    warmup_length=0.1,
    warmup_factor=0.01,
)
