"""The ablation study's rows and recipe: SViT's four findings and the baseline reducers.

Run by :func:`tokenprune.study.runner.run_ablation` (``python -m tokenprune.tools.ablation``),
reported by :mod:`tokenprune.study.report`.

Trains the dense synthetic ViTDet-T Mask R-CNN (``configs/Synthetic/mask_rcnn_vitdet_t_dense.py``)
once per seed, on the mixed-colour shapes (``synthetic_mixcolor_*``: an object's colour says
nothing about its class, so classifying it takes its outline, the deeper blocks' work),
fine-tunes every variant from it with the same budget (the SViT recipe of
``configs/Synthetic/mask_rcnn_vitdet_t_svit.py``: its schedule, learning rate and keep-ratio
loss, with the keep targets of :data:`KEEP_TARGETS`, the gates at :data:`GATE_LR_FACTOR`
times the learning rate and their Gumbel noise annealed to 0 over the first
:data:`GATE_NOISE_ANNEAL` of the run), and evaluates every variant the same way: box and
mask AP on the validation set, backbone FLOPs (:func:`tokenprune.analysis.count_model_flops`
on the first validation images, gates included), backbone latency (the ViT alone on the
same preprocessed images, dense and variant interleaved, median) and the mean kept
fraction of the tokens.

Rows (each a config override of the SViT config, see :data:`VARIANTS`): dense (the starting
point) and dense fine-tuned with the same recipe and budget but no gates (the reference
every claim about dense is measured against: the pruned rows get that much more training);
SViT; SViT without preserve (discard); without reactivation (inherit); with a fixed rate;
with the heavier attention gate; DynamicViT; EViT; ToMe; random; SViT's weights with a
random choice of tokens (does the learned choice matter once the model is fine-tuned?); and,
because learned gates keep a different number of tokens at inference than their training
targets, top-k versions of the inherit and heavy-gate runs, so every finding has a pair of
rows at the same keep ratio (:data:`FINDINGS`, stated under the table). Variants whose training is
identical share one fine-tuning run: the ``dynamic`` switch acts only at inference for a
learned gate, so "SViT with a fixed rate" evaluates SViT's weights with top-k, and
DynamicViT evaluates the discard run's weights with top-k. ToMe is training-free (it runs
on the dense weights). ``--seeds N`` repeats the rows marked ``all_seeds`` (dense, dense
fine-tuned, random keep, SViT and its fixed-rate and random-choice rows, ToMe) for N seeds
(the others use seed 0); the table gives mean +- sample standard deviation.

Outputs in DIR: ``table.md``, ``results.csv`` (written atomically after every run),
``ap_vs_flops.png`` (at the end), ``results/<variant>_seed<k>.json`` (one per evaluation), ``runs/``
(training folders and checkpoints), ``ablation.json`` (scale, durations) and ``log.txt``
(Detectron2's log). Resumable: a result file that exists is not computed again, a finished
training is not repeated, an interrupted one resumes from its last checkpoint; a folder
made with another recipe (iterations, gate learning-rate factor, noise annealing) is
refused.

Scales: ``quick`` (a 4-block, 96-wide ViT on one thread, a few iterations trained and
evaluated on the 8-image minival set, 10 detections per image; about a minute on 2 CPU cores, for tests and CI; its
numbers mean nothing) and ``full`` (the
12-block ViT-T synthetic config, 300 dense iterations per seed, 150 per variant, the
128-image validation set, 2 seeds by default; about an hour on 2 CPU cores).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..config import load_config, project_config
from ..engine.lr import gate_lr
from ..modeling.baselines import BASELINE_ARGS, net_overrides

__all__ = ["Variant", "VARIANTS", "TRAININGS", "FINDINGS", "Scale", "SCALES", "KEEP_TARGETS",
           "GATE_LR_FACTOR", "GATE_NOISE_ANNEAL", "DENSE_CONFIG", "SVIT_CONFIG", "NET",
           "study_configs", "variant_config", "seeds_of"]

NET = "model.backbone.net"
#: The two configs of the study, by name in the project's configs
#: (:func:`tokenprune.config.project_config`: installed with the package or in the checkout).
DENSE_CONFIG = "Synthetic/mask_rcnn_vitdet_t_dense.py"
SVIT_CONFIG = "Synthetic/mask_rcnn_vitdet_t_svit.py"


# --------------------------------------------------------------------------- variants

@dataclass(frozen=True)
class Variant:
    """One row of the table.

    Attributes:
        name: file and CSV name. label: the table's description.
        overrides: applied to the SViT config for evaluation (``None`` = the dense config).
        train: the fine-tuning run in :data:`TRAININGS` whose weights it evaluates; ``None``
            = the dense weights (the dense row, training-free reducers).
        all_seeds: evaluated for every seed (else seed 0 only).
    """

    name: str
    label: str
    overrides: Optional[Tuple[str, ...]]
    train: Optional[str]
    all_seeds: bool = False


_RANDOM_CHOICE = net_overrides(BASELINE_ARGS["random"], NET)  # random keep at the targets

#: Fine-tuning runs: overrides of the SViT config used for training.
TRAININGS: Dict[str, Tuple[str, ...]] = {
    "dense_ft": (f"{NET}.pruned_blocks=[]", f"{NET}.keep_ratios=[]"),  # the recipe, no gates
    "svit": (),
    "discard": (f"{NET}.preserve=False",),
    "inherit": (f"{NET}.reactivate=False",),
    "heavy_gate": (f"{NET}.gate=attention_net",),
    "evit": net_overrides(BASELINE_ARGS["evit"], NET),
    "random": _RANDOM_CHOICE,
}

VARIANTS: List[Variant] = [
    Variant("dense", "Dense ViTDet, the starting point (not fine-tuned)", None, None,
            all_seeds=True),
    Variant("dense_ft", "Dense ViTDet fine-tuned with the same budget (the reference)",
            TRAININGS["dense_ft"], "dense_ft", all_seeds=True),
    Variant("random", "Random keep at the target rates (the floor)", TRAININGS["random"],
            "random", all_seeds=True),
    Variant("svit", "SViT: MLP gate, preserve, reactivate, dynamic rate", (), "svit",
            all_seeds=True),
    Variant("svit_fixed_rate", "SViT with a fixed rate (top-k at the targets)",
            (f"{NET}.dynamic=False",), "svit", all_seeds=True),
    Variant("svit_random_choice", "SViT's fine-tuned weights, tokens chosen at random (fixed "
            "rate)", _RANDOM_CHOICE, "svit", all_seeds=True),
    Variant("svit_no_preserve", "SViT without preserve (pruned tokens discarded)",
            TRAININGS["discard"], "discard"),
    Variant("svit_no_reactivate", "SViT without reactivation (pruned tokens stay pruned)",
            TRAININGS["inherit"], "inherit"),
    Variant("svit_no_reactivate_fixed", "SViT without reactivation, fixed rate (top-k)",
            (*TRAININGS["inherit"], f"{NET}.dynamic=False"), "inherit"),
    Variant("svit_heavy_gate", "SViT with a heavier gate (self-attention + MLP)",
            TRAININGS["heavy_gate"], "heavy_gate"),
    Variant("svit_heavy_gate_fixed", "SViT with the heavier gate, fixed rate (top-k)",
            (*TRAININGS["heavy_gate"], f"{NET}.dynamic=False"), "heavy_gate"),
    Variant("dynamicvit", "DynamicViT: MLP gate, fixed top-k, discard",
            (f"{NET}.preserve=False", f"{NET}.dynamic=False"), "discard"),
    Variant("evit", "EViT: top-k by received attention, inattentive tokens kept as is",
            TRAININGS["evit"], "evit"),
    Variant("tome", "ToMe: bipartite token merging, unmerged for the neck (training-free)",
            net_overrides(BASELINE_ARGS["tome"], NET), None, all_seeds=True),
]


#: The comparisons the table states: (claim, row A, row B, how A should compare with B).
#: "above": A's box AP higher; "matches": A within 1.0 box AP of B or above it, both as the
#: mean difference over the seeds the two rows have in common. Dense means
#: the dense model fine-tuned as long as the pruned ones. Except finding 3 (which compares
#: the dynamic rate with the fixed one), the pruned rows of a pair keep the same number of
#: tokens: top-k at the targets.
FINDINGS: List[Tuple[str, str, str, str]] = [
    ("SViT within 1.0 box AP of dense", "svit", "dense_ft", "matches"),
    ("SViT (fixed rate) within 1.0 box AP of dense", "svit_fixed_rate", "dense_ft", "matches"),
    ("1. preserving pruned tokens beats discarding them", "svit_fixed_rate", "dynamicvit",
     "above"),
    ("2. reactivation helps", "svit_fixed_rate", "svit_no_reactivate_fixed", "above"),
    ("3. a dynamic rate beats a fixed one", "svit", "svit_fixed_rate", "above"),
    ("4. the MLP gate matches a heavier gate", "svit_fixed_rate", "svit_heavy_gate_fixed",
     "matches"),
    ("SViT (fixed rate) beats random keep", "svit_fixed_rate", "random", "above"),
    ("SViT's learned choice beats a random one on its own weights", "svit_fixed_rate",
     "svit_random_choice", "above"),
    ("SViT (fixed rate) beats EViT", "svit_fixed_rate", "evit", "above"),
    ("SViT (fixed rate) beats ToMe", "svit_fixed_rate", "tome", "above"),
]


# --------------------------------------------------------------------------- scales

@dataclass(frozen=True)
class Scale:
    """How big a run is: iterations, overrides, images and rounds measured, seeds."""

    dense_iters: int
    finetune_iters: int
    overrides: Tuple[str, ...]  # both configs
    svit_overrides: Tuple[str, ...]  # the pruned configs only
    flops_images: int
    latency_images: int
    latency_rounds: int
    seeds: int
    log_period: int
    description: str = ""


_TRAIN_DATA = "dataloader.train.dataset.names=synthetic_mixcolor_train"
#: Keep targets per stage of three pruned blocks: SViT's geometric schedule with ratio 0.5
#: instead of 0.7, so that the last stage keeps about as many tokens as this data's objects
#: cover (9% of the tokens); see docs/study.md.
KEEP_TARGETS = (0.5, 0.25, 0.125)
_FULL_TARGETS = [k for k in KEEP_TARGETS for _ in range(3)]  # blocks 3-11, 3 per stage
#: Data loading in the training process, so that no loader worker competes with the model
#: for the 2 CPU cores (the generated images need no parallel decoding).
_IN_PROCESS_LOADING = ("dataloader.train.num_workers=0", "dataloader.test.num_workers=0")
_TINY = (  # trains on the 8 minival images too: a smoke test needs no 400 generated images
    "dataloader.train.dataset.names=synthetic_mixcolor_minival", f"{NET}.depth=4", f"{NET}.embed_dim=96", f"{NET}.window_block_indexes=[0,2]",
    "dataloader.train.total_batch_size=2", *_IN_PROCESS_LOADING,
    "dataloader.test.dataset.names=synthetic_mixcolor_minival",
    # an untrained model's 100 detections per image would spend half the run in the mask head
    "model.roi_heads.box_predictor.test_topk_per_image=10",
    "train.num_threads=1",  # a model this small runs no faster on 2 threads
)

SCALES: Dict[str, Scale] = {
    "quick": Scale(dense_iters=6, finetune_iters=2, overrides=_TINY,
                   svit_overrides=(f"{NET}.pruned_blocks=[1,2,3]",
                                   f"{NET}.keep_ratios={list(KEEP_TARGETS)}"),
                   flops_images=1, latency_images=1, latency_rounds=3, seeds=1, log_period=2,
                   description="4-block 96-wide ViT, blocks 1-3 pruned at 0.5/0.25/0.125, "
                               "mixed-colour minival (8 images): a smoke test, the numbers "
                               "mean nothing"),
    "full": Scale(dense_iters=300, finetune_iters=150,
                  overrides=(_TRAIN_DATA, "dataloader.test.dataset.names=synthetic_mixcolor_val",
                             *_IN_PROCESS_LOADING),
                  svit_overrides=(f"{NET}.keep_ratios={_FULL_TARGETS}",),
                  flops_images=4, latency_images=8, latency_rounds=5, seeds=2, log_period=20,
                  description="ViT-T (12 blocks, 192 wide), blocks 3-11 pruned at "
                              "0.5/0.25/0.125, mixed-colour shapes, validation set (128 images)"),
}


#: Learning-rate factor of the gates in every fine-tuning run. AdamW moves a parameter by
#: about the learning rate per step, so at the recipe's 1e-4 the gates of a 150-iteration
#: fine-tune cannot reach their targets (measured: SViT still kept 46% of the tokens in
#: training at the end, against targets averaging 29%; the paper fine-tunes for 4-6 COCO
#: epochs). The VLTP config uses the same factor for its new decoders.
GATE_LR_FACTOR = 10.0
#: Fraction of every fine-tuning run over which the gates' Gumbel noise falls from 1 to 0
#: (:class:`tokenprune.engine.GateNoiseHook`). With SViT's constant noise, gates that are
#: still unsure after 150 iterations train on near-random choices, and the deterministic
#: inference decision then leaves 18% of the tokens unprocessed by every pruned block, a
#: state never met in training (measured: top-k lost 2.0-3.4 box AP to a random choice on
#: the same weights). Gates without parameters (random, EViT) decide without noise anyway.
GATE_NOISE_ANNEAL = 0.67


def study_configs(dense_config: Optional[str] = None,
                  svit_config: Optional[str] = None) -> Tuple[str, str]:
    """The paths of the dense and the SViT config: the given files, or the project's
    :data:`DENSE_CONFIG` and :data:`SVIT_CONFIG`."""
    return (dense_config or project_config(DENSE_CONFIG),
            svit_config or project_config(SVIT_CONFIG))


def variant_config(variant: Variant, scale: Scale, dense_config: Optional[str] = None,
                   svit_config: Optional[str] = None, training: bool = False):
    """The LazyConfig of ``variant`` at ``scale`` (its fine-tuning run's when ``training``),
    from :func:`study_configs`."""
    dense_config, svit_config = study_configs(dense_config, svit_config)
    if variant.overrides is None:
        return load_config(dense_config, list(scale.overrides))
    extra = TRAININGS[variant.train] if training and variant.train else variant.overrides
    cfg = load_config(svit_config, [*scale.overrides, *scale.svit_overrides, *extra])
    if training:
        gate_lr(cfg.optimizer, GATE_LR_FACTOR)
        cfg.train.gate_noise_anneal = GATE_NOISE_ANNEAL
    return cfg


def seeds_of(variant: Variant, seeds: int) -> List[int]:
    """The seeds ``variant`` is evaluated with: all ``seeds`` if ``all_seeds``, else 0."""
    return list(range(seeds)) if variant.all_seeds else [0]
