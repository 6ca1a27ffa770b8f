"""PrunedViT: Detectron2's ViTDet ``ViT`` with SViT token pruning.

The four SViT findings are switches (see DESIGN.md):

* ``preserve``: a pruned token skips the block but keeps its feature, so the output map is
  complete; off = the discarding variant (dropped tokens are zero in the output map and
  never come back).
* ``reactivate``: every gate scores all tokens, so a token pruned at block l can come back
  at block l+1; off = once pruned, a token stays pruned ("inherit").
* ``dynamic``: at inference a token is kept iff its gate says keep (count varies per
  image); off = a fixed top-k rate equal to the block's target keep ratio.
* ``gate``: the gate kind from :data:`GATE_REGISTRY` (SViT's 2-layer MLP by default;
  baselines in :mod:`.baselines`: ``attention`` (EViT), ``random``, ``attention_net``).
* ``reducer``: instead of gates, a token reducer from :data:`REDUCER_REGISTRY` (``tome``:
  token merging, :mod:`.tome`) reduces each pruned block's tokens to ``ceil(r * N)``, runs
  the block on them and restores the full map; the gate switches do not apply to it.

Training runs every token with the keep decision as a soft key mask (differentiable,
straight-through Gumbel). Inference gathers the kept tokens, runs the block on them only
and scatters them back (:func:`run_block_gathered`).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from detectron2.modeling.backbone.utils import get_abs_pos
from detectron2.modeling.backbone.vit import ViT

from .gates import GATE_REGISTRY, gumbel_keep_decision
from .sparse_block import run_block_gathered, run_block_masked
from .tome import REDUCER_REGISTRY

__all__ = ["PrunedViT", "svit_schedule"]


class PrunedViT(ViT):
    """ViTDet backbone whose blocks in ``pruned_blocks`` process only the tokens a gate keeps.

    Accepts every argument of :class:`detectron2.modeling.ViT` and keeps its parameter
    names; gate parameters live under ``gates.<block index>``.

    Statistics of the last forward pass (for hooks and tools):
    ``last_keep_ratios`` {block index: (B,) kept fraction of the image's tokens},
    ``last_keep_masks`` {block index: (B, H*W) bool} (inference only), ``last_grid`` (H, W),
    and, in training, ``last_gate_log_probs`` {block index: (B, H*W, 2)} and
    ``last_keep_ratio_loss`` (a scalar, already weighted).
    """

    def __init__(
        self,
        *,
        pruned_blocks: Sequence[int] = (),
        keep_ratios: Union[float, Sequence[float]] = 0.7,
        gate: str = "mlp",
        gate_kwargs: Optional[dict] = None,
        preserve: bool = True,
        reactivate: bool = True,
        dynamic: bool = True,
        fixed_keep_ratio: Union[None, float, Sequence[float]] = None,
        keep_ratio_loss_weight: float = 4.0,
        keep_ratio_loss_per_image: bool = False,
        gumbel_tau: float = 1.0,
        gumbel_noise: float = 1.0,
        execution: str = "gather",
        reducer: Optional[str] = None,
        reducer_kwargs: Optional[dict] = None,
        **vit_kwargs,
    ):
        """
        Args:
            pruned_blocks: indices of the blocks that get a gate.
            keep_ratios: target keep ratio per pruned block (or one for all), in (0, 1].
            gate: a name in GATE_REGISTRY ("mlp" = "MLPGate"); gate_kwargs go to it.
                A gate with ``learned = False`` decides in training as at inference (hard,
                no keep-ratio loss); one with ``needs_block = True`` also receives
                ``block``, ``hw`` and ``active`` (see :mod:`.baselines`).
            preserve, reactivate, dynamic: SViT's findings 1-3 (see module docstring).
            fixed_keep_ratio: force a top-k rate at inference (a float or one per pruned
                block); 1.0 keeps every token. None: use the gates (``dynamic``).
            keep_ratio_loss_weight: weight of ``(mean(keep) - target)^2`` averaged over gates.
            keep_ratio_loss_per_image: take the mean per image, then average the squares.
            gumbel_tau: Gumbel-softmax temperature in training.
            gumbel_noise: scale of the Gumbel noise in training: 1 samples each decision from
                the gate's keep probability (SViT), 0 takes the inference threshold
                (see :func:`gumbel_keep_decision`); :class:`tokenprune.engine.GateNoiseHook`
                anneals it.
            execution: "gather" (compute kept tokens only) or "masked" (compute all tokens,
                mask keys; a reference that saves no time).
            reducer: a name in REDUCER_REGISTRY ("tome") to use instead of gates;
                reducer_kwargs go to it. Each pruned block keeps ``ceil(r * N)`` tokens at
                its ratio r (``fixed_keep_ratio`` if set, else ``keep_ratios``).
            vit_kwargs: arguments of detectron2's ViT.
        """
        super().__init__(**vit_kwargs)
        depth = len(self.blocks)
        self.pruned_blocks = sorted(int(i) for i in pruned_blocks)
        if len(set(self.pruned_blocks)) != len(self.pruned_blocks) or any(
            not 0 <= i < depth for i in self.pruned_blocks
        ):
            raise ValueError(f"pruned_blocks must be distinct indices in [0, {depth}), "
                             f"got {list(pruned_blocks)}")
        for i in self.pruned_blocks:
            if self.blocks[i].use_residual_block:
                raise ValueError(f"block {i} has a residual conv block and cannot be pruned")
        self.keep_ratios = self._per_block(keep_ratios, "keep_ratios")
        self.fixed_keep_ratio = (
            None if fixed_keep_ratio is None
            else self._per_block(fixed_keep_ratio, "fixed_keep_ratio")
        )
        if execution not in ("gather", "masked"):
            raise ValueError(f"execution must be 'gather' or 'masked', got {execution!r}")
        self.preserve = preserve
        self.reactivate = reactivate and preserve  # discarded tokens cannot come back
        self.dynamic = dynamic
        self.keep_ratio_loss_weight = keep_ratio_loss_weight
        self.keep_ratio_loss_per_image = keep_ratio_loss_per_image
        self.gumbel_tau = gumbel_tau
        self.gumbel_noise = gumbel_noise
        self.execution = execution
        embed_dim = self._out_feature_channels[self._out_features[0]]
        self.reducer = None
        if reducer:
            name = _registry_name(REDUCER_REGISTRY, reducer, "reducer")
            self.reducer = REDUCER_REGISTRY.get(name)(**(reducer_kwargs or {}))
        self.gates = nn.ModuleDict(
            {} if self.reducer is not None else
            {str(i): GATE_REGISTRY.get(_gate_class_name(gate))(dim=embed_dim, **(gate_kwargs or {}))
             for i in self.pruned_blocks}
        )
        self._guidance: Optional[Tensor] = None
        self.last_keep_ratios: Dict[int, Tensor] = {}
        self.last_keep_masks: Dict[int, Tensor] = {}
        self.last_keep_ratio_loss: Optional[Tensor] = None
        self.last_gate_log_probs: Dict[int, Tensor] = {}
        self.last_grid = (0, 0)

    def _per_block(self, value, name: str) -> Dict[int, float]:
        values = [float(value)] * len(self.pruned_blocks) if isinstance(value, (int, float)) \
            else [float(v) for v in value]
        if len(values) != len(self.pruned_blocks):
            raise ValueError(f"{name} has {len(values)} entries for "
                             f"{len(self.pruned_blocks)} pruned blocks")
        if any(not 0.0 < v <= 1.0 for v in values):
            raise ValueError(f"{name} must lie in (0, 1], got {values}")
        return dict(zip(self.pruned_blocks, values))

    @contextmanager
    def guided(self, guidance: Optional[Tensor]) -> Iterator[None]:
        """Within the context, gates receive ``guidance`` (B, D) (for guided gates)."""
        self._guidance = guidance
        try:
            yield
        finally:
            self._guidance = None

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """x: (B, 3, H, W) image -> {out_feature: (B, C, H/16, W/16)}."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token,
                                (x.shape[1], x.shape[2]))
        B, H, W, C = x.shape
        active = torch.ones(B, H * W, dtype=torch.bool, device=x.device)
        losses = []
        self.last_keep_ratios, self.last_keep_masks, self.last_gate_log_probs = {}, {}, {}
        self.last_grid = (H, W)
        for i, blk in enumerate(self.blocks):
            if self.reducer is not None and i in self.keep_ratios:
                x = self._run_reduced(i, blk, x)
                continue
            if str(i) not in self.gates:
                x = blk(x)
                continue
            gate = self.gates[str(i)]
            if getattr(gate, "needs_block", False):
                log_probs = gate(x.reshape(B, H * W, C), guidance=self._guidance, block=blk,
                                 hw=(H, W), active=active)
            else:
                log_probs = gate(x.reshape(B, H * W, C), guidance=self._guidance)
            if self.training and not getattr(gate, "learned", True):
                # a score without parameters: hard decision as at inference, no loss
                with torch.no_grad():
                    hard = self._inference_decision(i, log_probs.detach(), active)
                if not self.reactivate:
                    active = hard
                keep = hard.to(x.dtype)
                x = run_block_masked(blk, x, keep)
                ratio = keep.mean(dim=1)
            elif self.training:
                self.last_gate_log_probs[i] = log_probs
                keep = gumbel_keep_decision(log_probs, self.gumbel_tau, self.gumbel_noise)
                if not self.reactivate:
                    keep = keep * active
                    active = keep.detach() > 0
                x = run_block_masked(blk, x, keep)
                losses.append(self._keep_ratio_loss(keep, self.keep_ratios[i]))
                ratio = keep.detach().mean(dim=1)
            else:
                keep = self._inference_decision(i, log_probs, active)
                if not self.reactivate:
                    active = keep
                if bool(keep.all()):
                    x = blk(x)
                elif self.execution == "gather":
                    x = run_block_gathered(blk, x, keep)
                else:
                    x = run_block_masked(blk, x, keep.float())
                self.last_keep_masks[i] = keep
                ratio = keep.float().mean(dim=1)
            self.last_keep_ratios[i] = ratio
        if not self.preserve and self.gates:
            x = x * active.view(B, H, W, 1).to(x.dtype)
        self.last_keep_ratio_loss = (
            self.keep_ratio_loss_weight * torch.stack(losses).mean() if losses else None
        )
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}

    def _run_reduced(self, i: int, blk: nn.Module, x: Tensor) -> Tensor:
        """Pruned block ``i`` with the token reducer: reduce, run the block, restore."""
        B, H, W, C = x.shape
        N = H * W
        ratio = (self.fixed_keep_ratio or self.keep_ratios)[i]
        n = min(max(1, math.ceil(ratio * N - 1e-6)), N)
        if n == N:
            x = blk(x)
        else:
            tokens, state = self.reducer.reduce(x, n)
            x = self.reducer.restore(self.reducer.run_block(blk, tokens, state), state)
        self.last_keep_ratios[i] = x.new_full((B,), n / N)
        return x

    def _inference_decision(self, i: int, log_probs: Tensor, active: Tensor) -> Tensor:
        """(B, N, 2) gate log-probs -> (B, N) bool keep mask, at least one token per image.

        Raises FloatingPointError for a NaN score (NaN input or weights), which would
        otherwise drop every token but one.
        """
        score = log_probs[..., 0] - log_probs[..., 1]
        nan = torch.isnan(score)
        if bool(nan.any()):
            raise FloatingPointError(f"the gate of block {i} gave NaN keep scores for "
                                     f"{int(nan.sum())} of {nan.numel()} tokens (NaN in the "
                                     f"input image or the weights?)")
        if not self.reactivate:
            score = score.masked_fill(~active, float("-inf"))
        ratio = None
        if self.fixed_keep_ratio is not None:
            ratio = self.fixed_keep_ratio[i]
        elif not self.dynamic:
            ratio = self.keep_ratios[i]
        N = score.shape[1]
        if ratio is not None:
            k = min(max(1, math.ceil(ratio * N - 1e-6)), N)
            if not self.reactivate:
                k = min(k, int(active.sum(dim=1).min()))
            if k == N:
                return torch.ones_like(active)
            top = score.topk(k, dim=1).indices
            return torch.zeros_like(active).scatter_(1, top, 1)
        keep = score > 0
        empty = ~keep.any(dim=1)
        if bool(empty.any()):
            keep[empty, score[empty].argmax(dim=1)] = True
        return keep

    def _keep_ratio_loss(self, keep: Tensor, target: float) -> Tensor:
        if self.keep_ratio_loss_per_image:
            return ((keep.mean(dim=1) - target) ** 2).mean()
        return (keep.mean() - target) ** 2


def _gate_class_name(kind: str) -> str:
    """Gate names in configs are short ("mlp", "attention_net"); registry names are class
    names ("MLPGate", "AttentionNetGate")."""
    return _registry_name(GATE_REGISTRY, kind, "gate")


def _registry_name(registry, kind: str, suffix: str) -> str:
    """A short, case- and underscore-insensitive name -> the registered class name."""
    aliases = {name.lower().removesuffix(suffix): name for name in registry._obj_map}
    return aliases.get(kind.lower().replace("_", ""), kind)


def svit_schedule(depth: int, dense_fraction: float = 0.25, base: float = 0.7) -> dict:
    """SViT's schedule for a ViT of ``depth`` blocks: the first quarter dense, the rest in
    three equal stages keeping ``base``, ``base**2``, ``base**3`` (0.7 / 0.49 / 0.343).

    Returns ``dict(pruned_blocks=[...], keep_ratios=[...])`` for :class:`PrunedViT`.
    """
    first = int(round(depth * dense_fraction))
    blocks = list(range(first, depth))
    ratios = [round(base ** (1 + min(2, 3 * k // len(blocks))), 4) for k in range(len(blocks))]
    return dict(pruned_blocks=blocks, keep_ratios=ratios)
