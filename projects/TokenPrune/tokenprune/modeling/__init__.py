"""Token-pruned ViTDet backbones, gates and meta-architectures."""
from .gates import GATE_REGISTRY, MLPGate, gumbel_keep_decision
from .meta_arch import TokenPruningRCNN, find_pruned_vit
from .pruned_vit import PrunedViT, svit_schedule

__all__ = [
    "GATE_REGISTRY", "MLPGate", "gumbel_keep_decision", "PrunedViT", "svit_schedule",
    "TokenPruningRCNN", "find_pruned_vit",
]
