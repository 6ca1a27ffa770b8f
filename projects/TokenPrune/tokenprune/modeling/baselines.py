"""Baseline gate kinds for the ablation study, all run by the same :class:`PrunedViT`.

Every baseline is a config override of the SViT config (``model.backbone.net.<key>=...``):

============  ================================================================================
dynamicvit    ``preserve=False dynamic=False`` (the MLP gate; reactivation is then off by
              construction). DynamicViT: a learned per-token score, a *fixed* keep rate (top-k
              of the gate's keep-minus-drop log-odds at each block's target ratio), tokens
              *discarded* (they are no keys in later blocks, never come back, and are zero in
              the output map). Training is SViT's (straight-through Gumbel + keep-ratio loss).
evit          ``gate=attention dynamic=False reactivate=False`` (:class:`AttentionGate`).
              EViT: keep the tokens that receive the most attention; no learned score.
              EViT fuses the inattentive tokens into one extra token; a detection neck needs
              a full map, so here the inattentive tokens keep their last feature instead
              (``preserve=True``) and, as in EViT, never come back (``reactivate=False``).
tome          ``reducer=tome`` (:mod:`tokenprune.modeling.tome`): ToMe's bipartite soft
              matching, training-free; a reducer instead of a keep / drop gate.
random        ``gate=random dynamic=False`` (:class:`RandomGate`): a uniformly random
              subset of exactly ``ceil(r * N)`` tokens, in training too. The floor.
heavy gate    ``gate=attention_net`` (:class:`AttentionNetGate`): one self-attention layer
              over the tokens at reduced width before the MLP head (SViT finding 4 says the
              plain MLP gate is enough).
============  ================================================================================

Two optional gate attributes, read by :class:`PrunedViT`:

* ``learned = False``: the gate has no trained score. In training the keep decision is
  then the inference decision (top-k at the target rate, or the gate's own threshold),
  hard and without gradients, and no keep-ratio loss is added for it.
* ``needs_block = True``: the gate is called as ``gate(x, guidance=..., block=blk,
  hw=(H, W), active=active)``, with the Detectron2 ``Block`` about to run, the token grid
  and the (B, N) bool mask of the tokens still in play (all True unless tokens are
  discarded or inherited-pruned).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .attention import attention_logits
from .gates import GATE_REGISTRY
from .sparse_block import gather_groups

__all__ = ["AttentionGate", "RandomGate", "AttentionNetGate", "mean_received_attention",
           "scores_to_log_probs", "BASELINE_ARGS", "net_overrides"]

#: The :class:`PrunedViT` arguments of the training-free baselines in the table above (the
#: ablation's rows, the trade-off's reducers): config overrides of ``model.backbone.net``.
BASELINE_ARGS: Dict[str, Dict[str, Any]] = {
    "random": dict(gate="random", dynamic=False),
    "evit": dict(gate="attention", dynamic=False, reactivate=False),
    "tome": dict(reducer="tome"),
}


def net_overrides(args: Dict[str, Any], net: str = "model.backbone.net") -> Tuple[str, ...]:
    """{argument: value} -> ``("<net>.argument=value", ...)`` in the overrides' syntax
    (None as ``null``)."""
    return tuple(f"{net}.{k}={'null' if v is None else v}" for k, v in args.items())


def scores_to_log_probs(score: Tensor) -> Tensor:
    """(B, N) keep-minus-drop log-odds -> (B, N, 2) log-probabilities (keep, drop)."""
    return F.log_softmax(torch.stack([score, torch.zeros_like(score)], dim=-1), dim=-1)


def mean_received_attention(block: nn.Module, x: Tensor, hw: Tuple[int, int],
                            active: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Mean attention each token receives in ``block``'s attention (heads and queries averaged).

    The attention is the one ``block`` computes on ``x``: its ``norm1``, its q and k
    projections, its decomposed relative positions, over the whole image (global block) or
    each window (windowed block). Only ``active`` tokens are queries and keys; ViTDet's
    zero padding of incomplete windows is not a key.

    Args:
        block: a Detectron2 ViTDet ``Block``.
        x: (B, N, C) tokens, N = H * W in raster order.
        hw: the grid (H, W).
        active: (B, N) bool or None (all tokens).
    Returns:
        received: (B, N) float, 0 for inactive tokens; sums to 1 over each attention frame
        (image or window) with active tokens.
        frame_keys: (B, N) float, the number of active keys in each token's frame (so
        ``received * frame_keys`` is 1 for a token that gets its fair share).
    """
    B, N, C = x.shape
    if active is None:
        active = torch.ones(B, N, dtype=torch.bool, device=x.device)
    groups, tokens = gather_groups(x.reshape(B * N, C), active, hw, block.window_size)
    h = groups.pack(block.norm1(tokens))  # (G, L, C)
    G, L, _ = h.shape
    attn = block.attn
    nh = attn.num_heads
    # only the q and k rows of the fused qkv projection: the values are not needed
    weight = attn.qkv.weight[: 2 * C]
    bias = attn.qkv.bias[: 2 * C] if attn.qkv.bias is not None else None
    q, k = F.linear(h, weight, bias).reshape(G, L, 2, nh, C // nh).permute(2, 0, 3, 1, 4).unbind(0)
    logits = attention_logits(attn, q, k, groups.coords, groups.frame, groups.key_valid)
    probs = logits.softmax(dim=-1)
    if groups.key_valid is not None:
        valid = groups.key_valid.to(probs.dtype)  # (G, L)
        probs = probs * valid[:, None, :, None]  # padding queries do not vote
        count = valid.sum(dim=1)
    else:
        count = torch.full((G,), float(L), dtype=probs.dtype, device=probs.device)
    received = probs.sum(dim=2).mean(dim=1) / count[:, None]  # (G, L)
    flat_received = groups.unpack(received[..., None])[:, 0]  # (M,)
    flat_count = groups.unpack(count[:, None, None].expand(G, L, 1))[:, 0]
    out = x.new_zeros(B * N).index_copy(0, groups.flat_index, flat_received)
    keys = x.new_zeros(B * N).index_copy(0, groups.flat_index, flat_count)
    return out.view(B, N), keys.view(B, N)


@GATE_REGISTRY.register()
class AttentionGate(nn.Module):
    """EViT-style score: the mean attention a token receives, no parameters.

    ViTDet has no class token, so "attentiveness" is the attention a token receives,
    averaged over heads and queries. It is recomputed from the gate's input with the
    weights of the block about to run (:func:`mean_received_attention`), which is the
    attention that block would use. Cost per pruned block: the q and k projections of the
    active tokens (2 N C^2 multiply-adds) plus q k^T (N^2 C for a global block, N w^2 C for
    windows of w^2 tokens) and the relative-position terms -- about a fifth of a dense ViT-T
    block at 256 tokens. EViT reads the previous block's attention instead (free), which
    Detectron2's attention does not expose; the ablation reports this cost as gate FLOPs.

    Output: log-odds ``log(received * frame_keys)``, positive for a token that receives
    more than the average attention of its frame; with ``dynamic=False`` the top-k tokens
    by received attention are kept.
    """

    learned = False
    needs_block = True

    def __init__(self, dim: int, eps: float = 1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor, guidance: Optional[Tensor] = None, *,
                block: Optional[nn.Module] = None, hw: Optional[Tuple[int, int]] = None,
                active: Optional[Tensor] = None) -> Tensor:
        """x: (B, N, C) -> (B, N, 2) log-probabilities (keep, drop); guidance is ignored."""
        if block is None or hw is None:
            raise ValueError("AttentionGate needs the block about to run and the grid "
                             "(PrunedViT passes block=..., hw=...)")
        received, keys = mean_received_attention(block, x, hw, active)
        score = torch.log(received.clamp_min(self.eps) * keys.clamp_min(1.0))
        return scores_to_log_probs(score)


@GATE_REGISTRY.register()
class RandomGate(nn.Module):
    """Uniformly random scores, in training and at inference: the floor any method must beat.

    With ``dynamic=False`` (what the ablation uses) every block keeps exactly
    ``ceil(r * N)`` tokens drawn uniformly at random; with ``dynamic=True`` every token is
    kept independently with probability ``keep_prob``. Draws use PyTorch's global
    generator (``torch.manual_seed`` makes them repeatable).
    """

    learned = False

    def __init__(self, dim: int, keep_prob: float = 0.5):
        super().__init__()
        if not 0.0 < keep_prob < 1.0:
            raise ValueError(f"keep_prob must lie in (0, 1), got {keep_prob}")
        self.keep_prob = keep_prob

    def forward(self, x: Tensor, guidance: Optional[Tensor] = None) -> Tensor:
        """x: (B, N, C) -> (B, N, 2) random log-probabilities (keep, drop)."""
        u = torch.rand(x.shape[:2], device=x.device, dtype=x.dtype).clamp(1e-6, 1 - 1e-6)
        # logit(u) + logit(p) > 0  <=>  u > 1 - p: keep with probability p; ranks uniform
        score = torch.log(u) - torch.log1p(-u) + math.log(self.keep_prob / (1 - self.keep_prob))
        return scores_to_log_probs(score)


@GATE_REGISTRY.register()
class AttentionNetGate(nn.Module):
    """A heavier learned gate: tokens -> reduced width -> one self-attention layer -> MLP head.

    LayerNorm -> Linear(C, h) -> (pre-norm multi-head self-attention over all N tokens,
    with a residual) -> LayerNorm -> Linear(h, h) -> GELU -> Linear(h, 2) -> log-softmax.
    Every token's score can depend on the whole image (SViT's MLP gate sees one token);
    costs 2 N^2 h multiply-adds for the attention on top of the linear layers.
    """

    def __init__(self, dim: int, hidden_dim: Optional[int] = None, num_heads: int = 2,
                 init_keep_bias: float = 1.0):
        super().__init__()
        hidden_dim = hidden_dim or max(dim // 4, 32)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not a multiple of num_heads {num_heads}")
        self.embed = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim))
        self.norm_attn = nn.LayerNorm(hidden_dim)
        self.attn = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, hidden_dim),
                                  nn.GELU(), nn.Linear(hidden_dim, 2))
        with torch.no_grad():
            self.head[3].weight.mul_(0.1)
            self.head[3].bias.copy_(torch.tensor([init_keep_bias, 0.0]))

    def forward(self, x: Tensor, guidance: Optional[Tensor] = None) -> Tensor:
        """x: (B, N, C) -> (B, N, 2) log-probabilities (keep, drop); guidance is ignored."""
        t = self.embed(x)
        n = self.norm_attn(t)
        t = t + self.attn(n, n, n, need_weights=False)[0]
        return F.log_softmax(self.head(t), dim=-1)
