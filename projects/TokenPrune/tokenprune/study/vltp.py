"""The VLTP study's rows, findings and recipe, on the task scenes (``synthetic_task_scenes_*``).

Run by :func:`tokenprune.study.vltp_runner.run_vltp_study`
(``python -m tokenprune.tools.ablation --study vltp``), judged by the verdict rule of the
SViT study (:func:`tokenprune.study.statistics.verdict`), reported by
:mod:`tokenprune.study.vltp_report`.

One unpruned task model (``configs/Study/mask_rcnn_vit_study_task_dense.py``: the SViT study's
12-block, 128-wide ViT, task-conditioned) is trained once, from a detector pretrained on the
SViT study's scenes (``configs/Study/mask_rcnn_vit_study_dense.py``, all objects, 6 classes:
the stand-in for the pretrained encoder every VLTP model starts from; trained from scratch,
the task model reached 1-7 mIoU in the pilot). In each of two settings every
trained row is fine-tuned from it for the same budget, once per seed (the seed sets the data
order and the new weights):

* ``frozen`` (the paper's setting, the headline): the ViT encoder's own weights frozen at the
  unpruned model, the pruning decoders trained at 10x the learning rate, the pyramid, heads,
  guidance and FiLM layers at the fine-tune rate;
* ``whole``: every weight fine-tuned (decoders at 10x).

The fine-tunes (:data:`TRAININGS`): the unpruned model itself (same budget, no decoders: the
reference), guided decoders (task id), guided decoders (text prompt, ``frozen`` only) and
unguided MLP gates, all trained towards the middle keep schedule. Every pruned row is then
evaluated with top-k at each keep point of :data:`KEEP_POINTS` (the same token count per
block for every row: matched), and random keep (the unguided run's weights, tokens chosen
at random) gives the floor. The text rows are evaluated on the held-out prompt paraphrases.

Findings (:func:`findings`) are paired over seeds at one keep point and one setting;
validity checks (:data:`VALIDITY`) come first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..config import load_config, project_config
from ..engine.lr import gate_lr
from ..modeling.baselines import BASELINE_ARGS, net_overrides

__all__ = ["Row", "Finding", "Scale", "TRAININGS", "SETTINGS", "KEEP_POINTS", "TRAIN_BASE",
           "SCALES", "VALIDITY", "KEEP_TOLERANCE", "MIOU_MARGIN", "TASK_DENSE_CONFIG",
           "VLTP_CONFIG", "PRETRAIN_CONFIG", "PRETRAIN_SEED", "rows", "findings", "keep_schedule", "row_config", "units",
           "unit_cost"]

NET = "model.backbone.net"
PRETRAIN_CONFIG = "Study/mask_rcnn_vit_study_dense.py"
TASK_DENSE_CONFIG = "Study/mask_rcnn_vit_study_task_dense.py"
VLTP_CONFIG = "Study/mask_rcnn_vit_study_vltp.py"

#: The settings: label of each table.
SETTINGS: Dict[str, str] = {
    "frozen": "ViT encoder frozen at the unpruned task model; decoders, pyramid, heads, "
              "guidance and FiLM trained (the paper's setting)",
    "whole": "whole model fine-tuned",
}

#: Keep points: name -> (base b, label). Top-k keeps b, b^2, b^3 of all tokens in the three
#: stages of pruned blocks (inherit mode). The bases were chosen before any run from fvcore
#: counts of the study model's ViT, decoders included (random weights: top-k counts do not
#: depend on them): 0.75x, 0.60x and 0.47x of the unpruned ViT's FLOPs. The study measures
#: and reports each row's own ratio.
KEEP_POINTS: Dict[str, Tuple[float, str]] = {
    "25": (0.794, "about 25% fewer ViT FLOPs"),
    "40": (0.642, "about 40% fewer ViT FLOPs"),
    "53": (0.45, "about 53% fewer ViT FLOPs (the tighter point)"),
}
#: The decoders' training targets: the middle point's schedule.
TRAIN_BASE = KEEP_POINTS["40"][0]
#: Points evaluated in the whole-model table (the two claims' points).
WHOLE_POINTS = ("25", "40")
#: The pretraining's seed, the same at every scale: the pilot's pretrained detector is the
#: full run's (``--pretrained``), and retraining it gives the same recipe.
PRETRAIN_SEED = 0
#: Learning-rate factor of the decoders (both settings), as in the SViT study.
GATE_LR_FACTOR = 10.0

_TEXT = ("model.guidance.name=text",)
_HELD_OUT = ("dataloader.test.mapper.held_out_prompts=True",)
_UNGUIDED = (f"{NET}.gate=mlp", f"{NET}.gate_kwargs={{init_keep_bias:3.0}}",
             "model.relevance_loss_weight=0.0")

#: Fine-tuning runs per seed and setting: overrides of the VLTP config.
TRAININGS: Dict[str, Tuple[str, ...]] = {
    "unpruned": (f"{NET}.pruned_blocks=[]", f"{NET}.keep_ratios=[]",
                 "model.relevance_loss_weight=0.0"),
    "guided": (),
    "text": _TEXT,
    "unguided": _UNGUIDED,
}
#: The trainings of each setting.
SETTING_TRAININGS: Dict[str, Tuple[str, ...]] = {
    "frozen": ("unpruned", "guided", "text", "unguided"),
    "whole": ("unpruned", "guided", "unguided"),
}


@dataclass(frozen=True)
class Row:
    """One evaluated row: ``setting``, the ``method`` (a training's name or ``random``), the
    keep ``point`` (None: unpruned). ``train``: the fine-tune whose weights it evaluates."""

    setting: str
    method: str
    point: Optional[str]

    @property
    def name(self) -> str:
        return f"{self.setting}_{self.method}" + (f"_{self.point}" if self.point else "")

    @property
    def train(self) -> str:
        return "unguided" if self.method == "random" else self.method


#: Row labels.
METHOD_LABELS: Dict[str, str] = {
    "unpruned": "unpruned, fine-tuned with the same budget",
    "guided": "guided decoders (task id)",
    "text": "guided decoders (text prompt; held-out paraphrases at evaluation)",
    "unguided": "unguided MLP gates",
    "random": "random keep (the unguided run's weights)",
}


def rows(setting: str) -> List[Row]:
    """The rows of ``setting`` in table order."""
    points = list(KEEP_POINTS) if setting == "frozen" else list(WHOLE_POINTS)
    methods = [m for m in SETTING_TRAININGS[setting] if m != "unpruned"]
    if setting == "frozen":
        methods.append("random")
    return [Row(setting, "unpruned", None),
            *(Row(setting, m, p) for p in points for m in methods)]


@dataclass(frozen=True)
class Finding:
    """A paired claim at one setting and keep point: row ``a`` against row ``b`` in mIoU,
    "above" (a beats b) or "comparable" (a within :data:`MIOU_MARGIN` of b)."""

    claim: str
    a: str
    b: str
    kind: str


#: "No loss": the 90% interval of guided - unpruned lies within +-1 mIoU (the issue's rule).
MIOU_MARGIN = 1.0
#: Paired rows must keep the same fraction of tokens within this (top-k makes them equal).
KEEP_TOLERANCE = 0.01


def findings() -> List[Finding]:
    """The findings, per setting and keep point."""
    out = []
    for setting in SETTINGS:
        points = KEEP_POINTS if setting == "frozen" else WHOLE_POINTS
        for p in points:
            pct = KEEP_POINTS[p][1].split(" (")[0]
            out.append(Finding(f"{setting}: guided (task id) loses nothing at {pct}",
                               f"{setting}_guided_{p}", f"{setting}_unpruned", "comparable"))
            out.append(Finding(f"{setting}: guided (task id) > unguided at {pct}",
                               f"{setting}_guided_{p}", f"{setting}_unguided_{p}", "above"))
            if setting == "frozen":
                out.append(Finding(f"{setting}: guided (text) > unguided at {pct}",
                                   f"{setting}_text_{p}", f"{setting}_unguided_{p}", "above"))
    return out


#: Checks before any verdict: (statement, row a, row b) where a must beat b (95% interval
#: of the paired mIoU difference above 0).
VALIDITY: List[Tuple[str, str, str]] = [
    ("the unguided gates' choice beats random keep at the tighter point (frozen ViT)",
     "frozen_unguided_53", "frozen_random_53"),
    ("the guided decoders' choice beats random keep at the tighter point (frozen ViT)",
     "frozen_guided_53", "frozen_random_53"),
]


@dataclass(frozen=True)
class Scale:
    """How big a run is. ``pretrain_iters`` / ``dense_iters`` / ``finetune_iters``:
    iterations (batch 4) of the pretrained detector, the unpruned task model and each
    fine-tune; ``pretrain_data``: the pretraining's (train, test) dataset names;
    ``overrides``: every task config (``model_overrides``: also the pretraining's);
    ``pruned_blocks``: three equal stages; ``seeds``: the fine-tune seeds; ``dense_seed``:
    the task model's (the pretraining's is :data:`PRETRAIN_SEED`); ``dense_threads``; ``flops_images``."""

    pretrain_iters: int
    pretrain_data: Tuple[str, str]
    model_overrides: Tuple[str, ...]
    dense_iters: int
    finetune_iters: int
    overrides: Tuple[str, ...]
    pruned_blocks: Tuple[int, ...]
    seeds: Tuple[int, ...]
    dense_seed: int
    dense_threads: int
    flops_images: int
    log_period: int
    description: str = ""


def _data(train: str, test: str, prefix: str = "synthetic_task_scenes") -> Tuple[str, ...]:
    return (f"dataloader.train.dataset.names={prefix}_{train}",
            f"dataloader.test.dataset.names={prefix}_{test}",
            "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
            "train.num_threads=1")


# at most 3 objects are relevant: 10 detections per pair are plenty
_TOPK = ("model.roi_heads.box_predictor.test_topk_per_image=10",)
_TINY = (f"{NET}.depth=4", f"{NET}.embed_dim=64", f"{NET}.num_heads=2", *_TOPK)


SCALES: Dict[str, Scale] = {
    "quick": Scale(pretrain_iters=4, pretrain_data=("minival", "minival"),
                   model_overrides=_TINY, dense_iters=6, finetune_iters=2,
                   overrides=(*_data("minival", "minival"), *_TINY),
                   pruned_blocks=(1, 2, 3), seeds=(0, 1), dense_seed=0, dense_threads=1,
                   flops_images=1, log_period=2,
                   description="4-block 64-wide ViT, blocks 1-3 pruned, the task scenes' "
                               "minival (8 images) for training and evaluation: a smoke "
                               "test, the numbers mean nothing"),
    "pilot": Scale(pretrain_iters=2000, pretrain_data=("pilot_train", "pilot_val"),
                   model_overrides=_TOPK, dense_iters=1000, finetune_iters=100,
                   overrides=(*_data("pilot_train", "pilot_study_val"), *_TOPK),
                   pruned_blocks=tuple(range(3, 12)), seeds=(0, 1), dense_seed=0,
                   dense_threads=2, flops_images=2, log_period=50,
                   description="12-block 128-wide ViT, blocks 3-11 pruned, the pilot's task "
                               "scenes (800 training images, 64 evaluation images)"),
    "full": Scale(pretrain_iters=2000, pretrain_data=("pilot_train", "pilot_val"),
                  model_overrides=_TOPK, dense_iters=1000, finetune_iters=100,
                  overrides=(*_data("train", "study_val"), *_TOPK),
                  pruned_blocks=tuple(range(3, 12)), seeds=(1, 2, 3, 4, 5), dense_seed=1,
                  dense_threads=2, flops_images=2, log_period=50,
                  description="12-block 128-wide ViT, blocks 3-11 pruned, fresh task scenes "
                              "(800 training images, 64 evaluation images, about 600 pairs) "
                              "and fine-tune seeds 1-5"),
}


def keep_schedule(blocks: Sequence[int], base: float) -> List[float]:
    """Kept fraction of all tokens per pruned block: ``base ** (stage + 1)`` over three equal
    stages of ``blocks``."""
    blocks = list(blocks)
    if not blocks or len(blocks) % 3:
        raise ValueError(f"{len(blocks)} pruned blocks do not split into 3 stages")
    per = len(blocks) // 3
    return [base ** (i // per + 1) for i in range(len(blocks))]


def _list(values: Sequence[float]) -> str:
    return "[" + ",".join(f"{v:.6g}" for v in values) + "]"


def row_config(scale: Scale, setting: str, method: str, point: Optional[str] = None,
               training: bool = False, configs: Optional[Tuple[str, str]] = None):
    """The LazyConfig of a fine-tune (``training``) or of an evaluated row.

    ``method``: a :data:`TRAININGS` name, ``"random"``, ``"task_dense"`` (the unpruned task
    model's own training) or ``"pretrain"`` (the detector it starts from); ``configs``: (task dense, VLTP) config paths, default the
    project's."""
    dense_path, vltp_path = configs or (project_config(TASK_DENSE_CONFIG),
                                        project_config(VLTP_CONFIG))
    if method == "pretrain":
        return load_config(project_config(PRETRAIN_CONFIG),
                           [*_data(*scale.pretrain_data, prefix="synthetic_study"),
                            *scale.model_overrides])
    if method == "task_dense":
        return load_config(dense_path, list(scale.overrides))
    blocks = list(scale.pruned_blocks)
    overrides = [*scale.overrides, f"{NET}.pruned_blocks={blocks}",
                 f"{NET}.keep_ratios={_list(keep_schedule(blocks, TRAIN_BASE))}"]
    overrides += TRAININGS["unguided" if method == "random" else method]
    if not training:
        if method == "random":
            overrides += (*net_overrides(BASELINE_ARGS["random"], NET), f"{NET}.gate_kwargs={{}}")
        if method == "text":
            overrides += _HELD_OUT
        if point is not None:
            base = KEEP_POINTS[point][0]
            overrides.append(f"{NET}.fixed_keep_ratio={_list(keep_schedule(blocks, base))}")
    cfg = load_config(vltp_path, overrides)
    if training and setting == "whole":
        gate_lr(cfg.optimizer, GATE_LR_FACTOR)
    return cfg


def units(scale: Scale) -> List[Tuple[str, int]]:
    """The work units (setting, seed): each trains its setting's fine-tunes for the seed and
    evaluates its rows."""
    return [(setting, seed) for seed in scale.seeds for setting in SETTINGS]


def unit_cost(setting: str) -> float:
    """A unit's relative cost for balancing the workers: a 100-iteration fine-tune counts 5,
    an evaluation 3 (measured: about 75 s and 45 s on one thread)."""
    return 5 * len(SETTING_TRAININGS[setting]) + 3 * len(rows(setting))
