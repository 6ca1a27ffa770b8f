"""Token gates: per-token keep/drop scores for one pruned ViT block.

Every gate maps tokens ``x`` of shape (B, N, C) to log-probabilities of shape (B, N, 2),
index 0 = keep, index 1 = drop. Gates are built by name from :data:`GATE_REGISTRY` with
``GATE_REGISTRY.get(name)(dim=C, **kwargs)``. A gate may read an optional per-image
guidance embedding (B, D); gates that ignore it accept and ignore it.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from detectron2.utils.registry import Registry

from ..config import did_you_mean
from ..errors import ConfigError

GATE_REGISTRY = Registry("TOKEN_GATE")
GATE_REGISTRY.__doc__ = "Token gates for PrunedViT: (B, N, C) tokens -> (B, N, 2) log-probs."

__all__ = ["GATE_REGISTRY", "MLPGate", "gumbel_keep_decision", "build_gates", "registry_name"]


@GATE_REGISTRY.register()
class MLPGate(nn.Module):
    """SViT's gate: LayerNorm -> Linear(C, hidden) -> GELU -> Linear(hidden, 2) -> log-softmax.

    The keep logit starts ``init_keep_bias`` above the drop logit, so a gate inserted into a
    dense model starts by keeping most tokens (p_keep = sigmoid(init_keep_bias)).
    """

    def __init__(self, dim: int, hidden_dim: Optional[int] = None, init_keep_bias: float = 1.0):
        super().__init__()
        hidden_dim = hidden_dim or max(dim // 4, 16)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, 2)
        nn.init.trunc_normal_(self.fc1.weight, std=0.02)
        nn.init.zeros_(self.fc1.bias)
        nn.init.trunc_normal_(self.fc2.weight, std=0.02)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor([init_keep_bias, 0.0]))

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, 2) log-probabilities (keep, drop); guidance is ignored."""
        return F.log_softmax(self.fc2(self.act(self.fc1(self.norm(x)))), dim=-1)


def gumbel_keep_decision(log_probs: torch.Tensor, tau: float = 1.0,
                         noise: float = 1.0) -> torch.Tensor:
    """Hard Gumbel-softmax keep decision with straight-through gradients.

    Args:
        log_probs: (B, N, 2) gate output (keep, drop).
        tau: softmax temperature of the gradient path (the hard decision does not depend
            on it).
        noise: scale of the Gumbel noise. 1: a sample from the gate's keep probability (the
            standard Gumbel-softmax); 0: the deterministic decision p_keep > p_drop, the one
            a dynamic-rate model takes at inference. Gradients flow at every scale.
    Returns:
        (B, N) float tensor with values exactly 0 or 1; gradients flow to ``log_probs``.
    """
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    logits = log_probs
    if noise > 0:
        gumbel = -torch.empty_like(log_probs).exponential_().log()
        logits = log_probs + noise * gumbel
    soft = (logits / tau).softmax(dim=-1)[..., 0]
    hard = (logits[..., 0] > logits[..., 1]).to(soft.dtype)
    return hard - soft.detach() + soft


def registry_name(registry: Registry, kind: str, suffix: str) -> str:
    """A short, case- and underscore-insensitive name as configs give it ("mlp",
    "attention_net", "tome") -> the registered class name ("MLPGate", "AttentionNetGate",
    "ToMeReducer"); ``suffix``: the class names' common ending ("gate", "reducer").
    ConfigError naming the valid names (and the close ones) for an unknown ``kind``."""
    if kind in registry:
        return kind
    aliases = {name.lower().removesuffix(suffix): name for name in registry._obj_map}
    short = str(kind).lower().replace("_", "")
    if short not in aliases:
        raise ConfigError(f"unknown {suffix} {kind!r}{did_you_mean(short, aliases)}; valid: "
                          f"{', '.join(sorted(aliases))} (case and '_' ignored)")
    return aliases[short]


def build_gates(kind: str, dim: int, blocks: Sequence[int], **kwargs) -> Dict[str, nn.Module]:
    """{str(block): gate} with one gate of ``kind`` (see :func:`registry_name`) per block,
    built as ``cls(dim=dim, **kwargs)``."""
    cls = GATE_REGISTRY.get(registry_name(GATE_REGISTRY, kind, "gate"))
    return {str(i): cls(dim=dim, **kwargs) for i in blocks}
