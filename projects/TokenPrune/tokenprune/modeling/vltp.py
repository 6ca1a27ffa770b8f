"""VLTP: token pruning guided by a task / language embedding (Chen et al., arXiv 2409.08464).

* :class:`GuidedGate` -- the pruning decoder, a gate kind for :class:`PrunedViT`: a few
  cross-attention layers between the guidance embedding (as K guidance tokens) and the
  image tokens, then a per-token relevance head giving keep / drop log-probabilities.
* :class:`TaskConditionedRCNN` -- a Mask R-CNN that predicts the instances relevant to the
  task: the guidance (from ``guidance(batched_inputs)``) steers the gates and modulates
  the pyramid features and the box head's region features (FiLM), so the heads know which
  objects are wanted; an optional relevance loss teaches the gates to rank the tokens that
  overlap the relevant ground-truth masks above the others.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BitMasks

from ..errors import InputError
from .gates import GATE_REGISTRY
from .meta_arch import TokenPruningRCNN

__all__ = ["GuidedGate", "TaskConditionedRCNN", "relevance_targets", "relevance_ranking_loss"]


class _CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention with a residual: q (B, Lq, h) reads kv (B, Lk, h)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        kv = self.norm_kv(kv)
        return q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]


@GATE_REGISTRY.register()
class GuidedGate(nn.Module):
    """VLTP's pruning decoder: (B, N, C) tokens + (B, D) guidance -> (B, N, 2) log-probs.

    Per layer, the K guidance tokens read the image (K x N attention), then every image
    token reads the guidance tokens (N x K attention), so the cost is linear in N.
    """

    def __init__(self, dim: int, guidance_dim: int, hidden_dim: Optional[int] = None,
                 num_guidance_tokens: int = 4, num_layers: int = 2, num_heads: int = 4,
                 init_keep_bias: float = 1.0):
        super().__init__()
        hidden_dim = hidden_dim or max(dim // 4, 32)
        self.guidance_dim = guidance_dim
        self.num_guidance_tokens = num_guidance_tokens
        self.token_in = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim))
        self.guidance_in = nn.Linear(guidance_dim, num_guidance_tokens * hidden_dim)
        self.guidance_pos = nn.Parameter(torch.zeros(1, num_guidance_tokens, hidden_dim))
        self.read_image = nn.ModuleList(
            _CrossAttention(hidden_dim, num_heads) for _ in range(num_layers))
        self.read_guidance = nn.ModuleList(
            _CrossAttention(hidden_dim, num_heads) for _ in range(num_layers))
        self.head = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, 2))
        nn.init.trunc_normal_(self.guidance_pos, std=0.02)
        with torch.no_grad():
            self.head[1].weight.mul_(0.1)
            self.head[1].bias.copy_(torch.tensor([init_keep_bias, 0.0]))

    def forward(self, x: Tensor, guidance: Optional[Tensor] = None) -> Tensor:
        if guidance is None:
            raise InputError("a guided gate needs a guidance embedding (task id, prompt or "
                             "'guidance' vector in the input)")
        B, N, _ = x.shape
        if guidance.shape != (B, self.guidance_dim):
            raise InputError(f"guidance must have shape ({B}, {self.guidance_dim}), "
                             f"got {tuple(guidance.shape)}")
        t = self.token_in(x)
        g = self.guidance_in(guidance).view(B, self.num_guidance_tokens, -1) + self.guidance_pos
        for read_image, read_guidance in zip(self.read_image, self.read_guidance):
            g = read_image(g, t)
            t = read_guidance(t, g)
        return F.log_softmax(self.head(t), dim=-1)


def relevance_targets(batched_inputs: List[Dict], padded_hw: tuple, patch_size: int,
                      device: torch.device) -> Tensor:
    """(B, H/p * W/p) float: 1 where a token's patch overlaps a relevant ground-truth mask.

    Masks come from ``batched_inputs[i]["instances"].gt_masks`` (bitmasks or polygons) at
    the input image size; the padded image is ``padded_hw``.
    """
    Hp, Wp = padded_hw
    targets = []
    for inp in batched_inputs:
        union = torch.zeros(Hp, Wp, device=device)
        inst = inp.get("instances")
        if inst is not None and len(inst) > 0 and inst.has("gt_masks"):
            masks = inst.gt_masks
            tensor = masks.tensor if isinstance(masks, BitMasks) else \
                BitMasks.from_polygon_masks(masks, *inst.image_size).tensor
            m = tensor.to(device).float().amax(dim=0)
            union[: m.shape[0], : m.shape[1]] = m
        targets.append(F.max_pool2d(union[None, None], patch_size).flatten())
    return torch.stack(targets)


def relevance_ranking_loss(keep_logits: Tensor, targets: Tensor) -> Tensor:
    """Pairwise logistic ranking loss: relevant tokens should score above irrelevant ones.

    Args:
        keep_logits: (B, N) gate scores, log p_keep - log p_drop.
        targets: (B, N) 1 for relevant tokens, 0 otherwise.
    Returns:
        scalar: mean of ``softplus(s_irrelevant - s_relevant)`` over all (relevant,
        irrelevant) token pairs of each image; images with no such pair add nothing (0 when
        no image has one). It fixes the order, not the level: how many tokens are kept is
        the keep-ratio loss's job, so the two do not pull against each other.
    """
    pos = (targets > 0.5).to(keep_logits.dtype)
    pairs = pos[:, :, None] * (1 - pos)[:, None, :]  # (B, N relevant, N irrelevant)
    margin = keep_logits[:, None, :] - keep_logits[:, :, None]  # s_irrelevant - s_relevant
    return (F.softplus(margin) * pairs).sum() / pairs.sum().clamp(min=1.0)


@META_ARCH_REGISTRY.register()
class TaskConditionedRCNN(TokenPruningRCNN):
    """Mask R-CNN for task-oriented instance segmentation (the instances relevant to a task).

    ``guidance(batched_inputs) -> (B, D)`` conditions the model in three places: the
    PrunedViT's guided gates (if any), FiLM on every pyramid level and FiLM on the box
    head's region features (``f * (1 + gamma) + beta``, zero-initialised, so the model
    starts as the unconditioned one). The box head is where relevance is decided: it sees
    each region's appearance, and the FiLM makes its relevant-vs-background score a
    per-task function of it. Training adds ``loss_relevance`` (:func:`relevance_ranking_loss`
    of every gate against the token-level union of relevant masks) when its weight is > 0.
    """

    def __init__(self, *, guidance: nn.Module, guidance_dim: int,
                 relevance_loss_weight: float = 0.0, **kwargs):
        super().__init__(guidance=guidance, **kwargs)
        shapes = self.backbone.output_shape()
        self.film = nn.ModuleDict({
            name: nn.Linear(guidance_dim, 2 * shape.channels) for name, shape in shapes.items()
        })
        box_channels = self.roi_heads.box_head.output_shape.channels
        self.box_film = nn.Linear(guidance_dim, 2 * box_channels)
        for lin in [*self.film.values(), self.box_film]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.relevance_loss_weight = relevance_loss_weight
        self._boxes_per_image: Optional[List[int]] = None
        self.backbone.register_forward_hook(self._film_hook)
        self.roi_heads.box_pooler.register_forward_pre_hook(self._count_boxes_hook)
        self.roi_heads.box_head.register_forward_hook(self._box_film_hook)

    def forward(self, batched_inputs: List[Dict]):
        out = super().forward(batched_inputs)
        if self.training and self.relevance_loss_weight > 0 and self.pruned_vit is not None:
            out["loss_relevance"] = self._relevance_loss(batched_inputs)
        return out

    def _film_hook(self, module: nn.Module, inputs, features: Dict[str, Tensor]):
        """Forward hook on the backbone: FiLM every pyramid level with the current guidance."""
        guidance = self.current_guidance
        if guidance is None:
            raise InputError("TaskConditionedRCNN got no guidance for this input")
        out = {}
        for name, f in features.items():
            gamma, beta = self.film[name](guidance).chunk(2, dim=1)
            out[name] = f * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return out

    def _count_boxes_hook(self, module: nn.Module, inputs) -> None:
        """Pre-hook on the box pooler: remember how many regions each image has."""
        self._boxes_per_image = [len(boxes) for boxes in inputs[1]]

    def _box_film_hook(self, module: nn.Module, inputs, features: Tensor) -> Tensor:
        """Forward hook on the box head: FiLM each (R, C) region feature with its image's
        guidance."""
        guidance = self.current_guidance
        if guidance is None or self._boxes_per_image is None:
            raise InputError("TaskConditionedRCNN got no guidance for this input")
        counts = torch.as_tensor(self._boxes_per_image, device=guidance.device)
        self._boxes_per_image = None
        gamma, beta = self.box_film(guidance).repeat_interleave(counts, dim=0).chunk(2, dim=1)
        return features * (1 + gamma) + beta

    def _relevance_loss(self, batched_inputs: List[Dict]) -> Tensor:
        vit = self.pruned_vit
        if not vit.last_gate_log_probs:
            return torch.zeros((), device=self.device)
        log_probs = vit.last_gate_log_probs
        any_lp = next(iter(log_probs.values()))
        grid = vit.last_grid
        patch = vit.patch_embed.proj.stride[0]
        target = relevance_targets(batched_inputs, (grid[0] * patch, grid[1] * patch), patch,
                                   any_lp.device)
        losses = [relevance_ranking_loss(lp[..., 0] - lp[..., 1], target)
                  for lp in log_probs.values()]
        return self.relevance_loss_weight * torch.stack(losses).mean()
