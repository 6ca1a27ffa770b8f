"""The SViT study's rows, findings and recipe, on data made for it (``synthetic_study_*``).

Run by :func:`tokenprune.study.runner.run_ablation` (``python -m tokenprune.tools.ablation``),
judged by :mod:`tokenprune.study.statistics`, reported by :mod:`tokenprune.study.report`.

One dense model (``configs/Study/mask_rcnn_vit_study_dense.py``: a plain 12-block, 128-wide
ViT with global attention, the ViTDet Mask R-CNN heads cut down) is trained once; every
trained row is fine-tuned from it for the same budget, once per seed (the seed sets the
fine-tune's data order, Gumbel noise and new weights). Every pruned row of a finding is
evaluated at the keep ratio SViT reaches on the same seed ("matched": top-k at SViT's
measured per-block kept fractions over the validation images), so the two rows of a pair
keep the same number of tokens and cost the same FLOPs:

* SViT (MLP gate, preserve, reactivate, dynamic rate), and its weights at top-k (``svit_topk``,
  the fixed-rate control of findings 2 and 4) and with a random choice (does the choice
  matter?);
* a fixed rate **trained** for it (``fixed``: SViT's per-image keep-ratio loss, targets = SViT's
  measured ratios, top-k at inference; the official code's ``ratio_per_sample``);
* inherit as in SViT's code (``inherit``: gates at the first block of each stage, each
  decision held for the stage, pruned tokens preserved), and the same with pruned tokens
  discarded (``discard``: DynamicViT's design), so finding 1 changes preserve alone;
* the heavier attention gate; random keep trained at the targets (the floor); EViT and
  ToMe, training-free on the dense fine-tuned weights.

Findings (:data:`FINDINGS`) and validity checks (:data:`VALIDITY`) are paired over seeds;
the verdict rule is :func:`tokenprune.study.statistics.verdict`.

Scales: ``quick`` (a 4-block ViT trained and evaluated on the 8 minival images, 2 seeds: a
smoke test for the tests, its numbers mean nothing), ``pilot`` (the recipe's own data seed
and validation images, 2 seeds: where the recipe was fixed) and ``full`` (fresh data, fresh
seeds 1-6: the reported run).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..config import load_config, project_config
from ..engine.lr import gate_lr
from ..modeling.baselines import BASELINE_ARGS, net_overrides

__all__ = ["Variant", "VARIANTS", "TRAININGS", "Finding", "FINDINGS", "VALIDITY", "Scale",
           "SCALES", "KEEP_TARGETS", "GATE_LR_FACTOR", "GATE_NOISE_ANNEAL", "DENSE_CONFIG",
           "SVIT_CONFIG", "NET", "MATCHED_TO", "study_configs", "variant_config",
           "seeds_of", "stage_gates", "matched_overrides", "fixed_training_overrides"]

NET = "model.backbone.net"
#: The two configs of the study, by name in the project's configs
#: (:func:`tokenprune.config.project_config`: installed with the package or in the checkout).
DENSE_CONFIG = "Study/mask_rcnn_vit_study_dense.py"
SVIT_CONFIG = "Study/mask_rcnn_vit_study_svit.py"
#: The row whose measured per-block kept fractions the matched rows of a seed are run at.
MATCHED_TO = "svit"


# --------------------------------------------------------------------------- rows

@dataclass(frozen=True)
class Variant:
    """One row of the table.

    Attributes:
        name: file and CSV name. label: the table's description.
        overrides: applied to the SViT config for evaluation (``None`` = the dense config).
        train: the fine-tuning run in :data:`TRAININGS` whose weights it evaluates; ``None``
            = the dense model.
        matched: evaluated at top-k at :data:`MATCHED_TO`'s measured kept fractions.
        all_seeds: evaluated for every seed (else the scale's first seed only).
    """

    name: str
    label: str
    overrides: Optional[Tuple[str, ...]]
    train: Optional[str]
    matched: bool = True
    all_seeds: bool = True


def stage_gates(pruned_blocks: Sequence[int], stages: int = 3) -> List[int]:
    """The first block of each of ``stages`` equal runs of ``pruned_blocks``: where SViT's
    inherit variant (and DynamicViT) put their gates."""
    blocks = list(pruned_blocks)
    if len(blocks) % stages:
        raise ValueError(f"{len(blocks)} pruned blocks do not split into {stages} stages")
    return blocks[::len(blocks) // stages]


_RANDOM = net_overrides(BASELINE_ARGS["random"], NET)
_STAGED = "staged"  # a marker, not an override: the scale's stage gates and targets instead

#: Fine-tuning runs: overrides of the SViT config used for training. ``_STAGED`` marks the
#: runs whose gates sit at the stages' first blocks (:func:`stage_gates`).
TRAININGS: Dict[str, Tuple[str, ...]] = {
    "dense_ft": (f"{NET}.pruned_blocks=[]", f"{NET}.keep_ratios=[]"),  # the recipe, no gates
    "svit": (),
    "fixed": (f"{NET}.dynamic=False", f"{NET}.keep_ratio_loss_per_image=True"),  # + targets
    "inherit": (_STAGED, f"{NET}.reactivate=False"),
    "discard": (_STAGED, f"{NET}.preserve=False", f"{NET}.reactivate=False"),
    "heavy_gate": (f"{NET}.gate=attention_net",),
    "random": _RANDOM,
}

VARIANTS: List[Variant] = [
    Variant("dense", "Dense, the starting point (not fine-tuned)", None, None, matched=False,
            all_seeds=False),
    Variant("dense_ft", "Dense fine-tuned with the same budget (the reference)",
            TRAININGS["dense_ft"], "dense_ft", matched=False),
    Variant("svit", "SViT: MLP gate, preserve, reactivate, dynamic rate", (), "svit",
            matched=False),
    Variant("svit_topk", "SViT's weights at a fixed rate (top-k at its own kept fractions)",
            (), "svit"),
    Variant("svit_random_choice", "SViT's weights, tokens chosen at random at that rate",
            _RANDOM, "svit"),
    Variant("fixed", "Fixed rate trained for it (per-image keep-ratio loss, top-k)",
            TRAININGS["fixed"], "fixed"),
    Variant("inherit", "No reactivation: 3 gates, each decision held 3 blocks (SViT's code)",
            TRAININGS["inherit"], "inherit"),
    Variant("discard", "As inherit, pruned tokens discarded (DynamicViT)",
            TRAININGS["discard"], "discard"),
    Variant("heavy_gate", "SViT with a heavier gate (self-attention + MLP)",
            TRAININGS["heavy_gate"], "heavy_gate"),
    Variant("random", "Random keep, fine-tuned with it (the floor)", _RANDOM, "random"),
    Variant("evit", "EViT: top-k by received attention (training-free, dense_ft weights)",
            net_overrides(BASELINE_ARGS["evit"], NET), "dense_ft", all_seeds=False),
    Variant("tome", "ToMe: token merging (training-free, dense_ft weights)",
            net_overrides(BASELINE_ARGS["tome"], NET), "dense_ft", all_seeds=False),
]


@dataclass(frozen=True)
class Finding:
    """A paired claim: row ``a`` against row ``b`` over the seeds, judged by
    :func:`~.statistics.verdict` with ``kind`` ("above": a beats b; "comparable": a within
    ``margin`` AP of b)."""

    claim: str
    a: str
    b: str
    kind: str
    margin: float = 1.0


#: SViT's findings, each a pair that differs in one switch at the same kept fraction.
FINDINGS: List[Finding] = [
    Finding("1. preserving pruned tokens beats discarding them", "inherit", "discard", "above"),
    Finding("2. reactivation beats inherit", "svit_topk", "inherit", "above"),
    Finding("3. a dynamic rate beats a fixed rate trained for it", "svit", "fixed", "above"),
    Finding("4. the MLP gate is comparable to a heavier gate", "svit_topk", "heavy_gate",
            "comparable"),
    Finding("SViT is comparable to dense (fine-tuned)", "svit", "dense_ft", "comparable"),
]

#: The checks that come before any verdict: (statement, row a, row b, the least mean
#: a - b in box AP that passes; None = the 95% interval must exclude 0 above).
VALIDITY: List[Tuple[str, str, str, Optional[float]]] = [
    ("random keep loses at least 2 box AP to dense_ft at the study's keep ratio",
     "dense_ft", "random", 2.0),
    ("the learned choice beats a random choice on the same weights",
     "svit_topk", "svit_random_choice", None),
]
#: Paired rows must keep the same fraction of tokens within this.
KEEP_TOLERANCE = 0.01


# --------------------------------------------------------------------------- recipe

#: Keep targets per stage of three pruned blocks in training: SViT's published schedule.
KEEP_TARGETS = (0.7, 0.49, 0.343)
#: Learning-rate factor of the gates in every fine-tuning run: AdamW moves a parameter by
#: about the learning rate per step, and at the recipe's 1e-4 the gates of a short
#: fine-tune do not reach their targets (the earlier study measured 46% kept against 29%
#: targets after 150 iterations); the VLTP config uses the same factor for its decoders.
GATE_LR_FACTOR = 10.0
#: Fraction of every fine-tuning run over which the gates' Gumbel noise falls from 1 to 0
#: (:class:`tokenprune.engine.GateNoiseHook`), so that the end of a short fine-tune takes the
#: decisions the gates take at inference (docs/study.md, "The recipe").
GATE_NOISE_ANNEAL = 0.67


@dataclass(frozen=True)
class Scale:
    """How big a run is.

    Attributes:
        dense_iters, finetune_iters: training iterations (batch 4).
        dense_eval_period: iterations between the dense model's evaluations (its learning
            curve; 0: none).
        overrides: both configs. pruned_blocks: the pruned blocks (3 stages).
        seeds: the fine-tune seeds. dense_seed: the dense model's.
        dense_threads: the dense training's thread count (the fine-tunes' is in overrides).
        flops_images, latency_images, latency_rounds: what the FLOP and latency figures use.
    """

    dense_iters: int
    finetune_iters: int
    dense_eval_period: int
    overrides: Tuple[str, ...]
    pruned_blocks: Tuple[int, ...]
    seeds: Tuple[int, ...]
    dense_seed: int
    dense_threads: int
    flops_images: int
    latency_images: int
    latency_rounds: int
    log_period: int
    description: str = ""


def _data(train: str, test: str) -> Tuple[str, ...]:
    return (f"dataloader.train.dataset.names={train}", f"dataloader.test.dataset.names={test}",
            # in the training process: no loader worker competes with the model for the cores
            "dataloader.train.num_workers=0", "dataloader.test.num_workers=0")


#: One thread per process: the runner runs one process per core (``--jobs``), which trains
#: 1.8x as many iterations per second as one process on two threads (measured: 0.55 s and
#: 0.49 s per iteration); the thread count is part of what makes a seed reproducible.
_ONE_THREAD = ("train.num_threads=1",)
_TINY = (f"{NET}.depth=4", f"{NET}.embed_dim=64", f"{NET}.num_heads=2",
         # an untrained model's 100 detections per image would spend the run in the mask head
         "model.roi_heads.box_predictor.test_topk_per_image=10")

SCALES: Dict[str, Scale] = {
    "quick": Scale(dense_iters=6, finetune_iters=2, dense_eval_period=0,
                   overrides=(*_data("synthetic_study_minival", "synthetic_study_minival"),
                              *_TINY, *_ONE_THREAD),
                   pruned_blocks=(1, 2, 3), seeds=(0, 1), dense_seed=0, dense_threads=1,
                   flops_images=1, latency_images=1, latency_rounds=3, log_period=2,
                   description="4-block 64-wide ViT, blocks 1-3 pruned, the study data's "
                               "minival (8 images) for training and evaluation: a smoke "
                               "test, the numbers mean nothing"),
    "pilot": Scale(dense_iters=2000, finetune_iters=100, dense_eval_period=500,
                   overrides=(*_data("synthetic_study_pilot_train", "synthetic_study_pilot_val"),
                              *_ONE_THREAD),
                   pruned_blocks=tuple(range(3, 12)), seeds=(0, 1), dense_seed=0,
                   dense_threads=2, flops_images=4, latency_images=4, latency_rounds=3,
                   log_period=25,
                   description="12-block 128-wide ViT, blocks 3-11 pruned, the pilot's data "
                               "(800 training, 300 validation images, their own seeds)"),
    "full": Scale(dense_iters=2000, finetune_iters=100, dense_eval_period=500,
                  overrides=(*_data("synthetic_study_train", "synthetic_study_val"),
                             *_ONE_THREAD),
                  pruned_blocks=tuple(range(3, 12)), seeds=(1, 2, 3, 4, 5, 6), dense_seed=1,
                  dense_threads=2, flops_images=4, latency_images=4, latency_rounds=3,
                  log_period=25,
                  description="12-block 128-wide ViT, blocks 3-11 pruned, fresh data (800 "
                              "training, 300 validation images) and fine-tune seeds 1-6"),
}


def study_configs(dense_config: Optional[str] = None,
                  svit_config: Optional[str] = None) -> Tuple[str, str]:
    """The paths of the dense and the SViT config: the given files, or the project's
    :data:`DENSE_CONFIG` and :data:`SVIT_CONFIG`."""
    return (dense_config or project_config(DENSE_CONFIG),
            svit_config or project_config(SVIT_CONFIG))


def _list(values: Sequence[float]) -> str:
    return "[" + ",".join(f"{v:.6g}" for v in values) + "]"


def _staged(variant: Variant) -> bool:
    """Whether ``variant``'s training run gates only the stages' first blocks."""
    return _STAGED in TRAININGS.get(variant.train or "", ())


def _pruning(scale: Scale, staged: bool) -> List[str]:
    """The scale's pruned blocks and targets, or, for a staged run, its stage gates and the
    stage targets."""
    blocks = list(scale.pruned_blocks)
    if staged:
        return [f"{NET}.pruned_blocks={stage_gates(blocks)}",
                f"{NET}.keep_ratios={_list(KEEP_TARGETS)}"]
    per_stage = len(blocks) // len(KEEP_TARGETS)
    return [f"{NET}.pruned_blocks={blocks}",
            f"{NET}.keep_ratios={_list([k for k in KEEP_TARGETS for _ in range(per_stage)])}"]


def matched_overrides(variant: Variant, ratios: Dict[int, float]) -> Tuple[str, ...]:
    """Top-k at ``ratios`` ({block: kept fraction}, :data:`MATCHED_TO`'s) for ``variant``'s
    pruned blocks: a staged run's gate takes the mean of its stage's fractions (the held
    blocks keep what the gate keeps)."""
    blocks = sorted(ratios)
    if _staged(variant):
        per_stage = len(blocks) // len(KEEP_TARGETS)
        values = [sum(ratios[b] for b in blocks[s:s + per_stage]) / per_stage
                  for s in range(0, len(blocks), per_stage)]
    else:
        values = [ratios[b] for b in blocks]
    return (f"{NET}.fixed_keep_ratio={_list(values)}",)


def fixed_training_overrides(ratios: Dict[int, float]) -> Tuple[str, ...]:
    """The ``fixed`` run's targets: :data:`MATCHED_TO`'s measured kept fractions."""
    return (f"{NET}.keep_ratios={_list([ratios[b] for b in sorted(ratios)])}",)


def variant_config(variant: Variant, scale: Scale, dense_config: Optional[str] = None,
                   svit_config: Optional[str] = None, training: bool = False,
                   ratios: Optional[Dict[int, float]] = None):
    """The LazyConfig of ``variant`` at ``scale`` (its fine-tuning run's when ``training``),
    from :func:`study_configs`; ``ratios``: :data:`MATCHED_TO`'s measured kept fractions of
    the seed, needed by a matched evaluation and by the ``fixed`` training."""
    dense_config, svit_config = study_configs(dense_config, svit_config)
    if variant.overrides is None:
        return load_config(dense_config, list(scale.overrides))
    extra = TRAININGS[variant.train] if training else variant.overrides
    overrides = [*scale.overrides, *_pruning(scale, _staged(variant)),
                 *(o for o in extra if o != _STAGED)]
    if variant.train == "fixed":
        overrides += fixed_training_overrides(_need(ratios, variant))
    if variant.matched and not training:
        overrides += matched_overrides(variant, _need(ratios, variant))
    cfg = load_config(svit_config, overrides)
    if training:
        gate_lr(cfg.optimizer, GATE_LR_FACTOR)
        cfg.train.gate_noise_anneal = GATE_NOISE_ANNEAL
    return cfg


def _need(ratios: Optional[Dict[int, float]], variant: Variant) -> Dict[int, float]:
    if not ratios:
        raise ValueError(f"{variant.name} needs the measured kept fractions of "
                         f"{MATCHED_TO} for the same seed")
    return ratios


def seeds_of(variant: Variant, scale: Scale) -> List[int]:
    """The seeds ``variant`` is evaluated with: the scale's, or its first only."""
    return list(scale.seeds) if variant.all_seeds else [scale.seeds[0]]
