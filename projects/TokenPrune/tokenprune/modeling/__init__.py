"""Token-pruned ViTDet backbones, gates, guidance sources and meta-architectures."""
from .gates import GATE_REGISTRY, MLPGate, gumbel_keep_decision
from .baselines import AttentionGate, AttentionNetGate, RandomGate
from .guidance import GUIDANCE_REGISTRY, build_guidance
from .meta_arch import TokenPruningRCNN, find_pruned_vit
from .pruned_vit import PrunedViT
from .schedule import keep_count, svit_schedule
from .tome import REDUCER_REGISTRY, ToMeReducer
from .vltp import GuidedGate, TaskConditionedRCNN

__all__ = [
    "GATE_REGISTRY", "MLPGate", "gumbel_keep_decision", "GUIDANCE_REGISTRY", "build_guidance",
    "PrunedViT", "keep_count", "svit_schedule", "TokenPruningRCNN", "find_pruned_vit", "GuidedGate",
    "TaskConditionedRCNN", "AttentionGate", "AttentionNetGate", "RandomGate",
    "REDUCER_REGISTRY", "ToMeReducer",
]
