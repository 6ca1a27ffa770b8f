"""Token-pruned ViTDet backbones, gates, guidance sources and meta-architectures."""
from .attention import ATTENTION_KERNELS, DEFAULT_ATTENTION, AttentionKernel, attention_kernel
from .gates import GATE_REGISTRY, MLPGate, gumbel_keep_decision
from .compiled import COMPILE_MODES, compile_model, compile_unavailable
from .baselines import AttentionGate, AttentionNetGate, RandomGate
from .guidance import GUIDANCE_REGISTRY, build_guidance
from .keep_policy import KeepPolicy, keep_count, svit_schedule
from .meta_arch import TokenPruningRCNN, find_pruned_vit
from .pruned_vit import InferenceSettings, PrunedViT
from .tome import REDUCER_REGISTRY, ToMeReducer
from .vltp import GuidedGate, TaskConditionedRCNN

__all__ = [
    "GATE_REGISTRY", "MLPGate", "gumbel_keep_decision", "GUIDANCE_REGISTRY", "build_guidance",
    "PrunedViT", "InferenceSettings", "KeepPolicy", "keep_count", "svit_schedule",
    "AttentionKernel", "attention_kernel", "ATTENTION_KERNELS", "DEFAULT_ATTENTION",
    "TokenPruningRCNN", "find_pruned_vit", "GuidedGate", "TaskConditionedRCNN",
    "COMPILE_MODES", "compile_model", "compile_unavailable", "AttentionGate", "AttentionNetGate", "RandomGate", "REDUCER_REGISTRY", "ToMeReducer",
]
