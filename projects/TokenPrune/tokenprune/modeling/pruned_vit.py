"""PrunedViT: Detectron2's ViTDet ``ViT`` with SViT token pruning.

The four SViT findings are switches:

* ``preserve``: a pruned token skips the block but keeps its feature, so the output map is
  complete; off = the discarding variant (dropped tokens are zero in the output map and
  never come back).
* ``reactivate``: every gate scores all tokens, so a token pruned at block l can come back
  at block l+1; off = once pruned, a token stays pruned ("inherit"), and a block without a
  gate after the first gate runs on the tokens still in play (gates at blocks 3, 6, 9 hold
  each decision for three blocks, as SViT's public inherit variant).
* ``dynamic``: at inference a token is kept iff its gate says keep (count varies per
  image); off = a fixed top-k rate equal to the block's target keep ratio.
* ``gate``: the gate kind from :data:`GATE_REGISTRY` (SViT's 2-layer MLP by default;
  baselines in :mod:`.baselines`: ``attention`` (EViT), ``random``, ``attention_net``).
* ``reducer``: instead of gates, a token reducer from :data:`REDUCER_REGISTRY` (``tome``:
  token merging, :mod:`.tome`) reduces each pruned block's tokens to ``ceil(r * N)``, runs
  the block on them and restores the full map; the gate switches do not apply to it.

Training runs every token with the keep decision as a soft key mask (differentiable,
straight-through Gumbel). Inference gathers the kept tokens, runs the block on them only
and scatters them back (:func:`.sparse_block.run_block_gathered`). The inference
configuration is one :class:`InferenceSettings`: the :class:`~.keep_policy.KeepPolicy`
that takes the keep decisions (from ``dynamic``, ``fixed_keep_ratio`` and ``reactivate``),
the attention kernel of the dense and gathered blocks (``attention``, turned once into an
:class:`~.attention.AttentionKernel`: ``sdpa`` by default, ``eager`` = Detectron2's
arithmetic and its own dense ``Block.forward``, ``flex`` for the gathered blocks) and
whether the gates run at all.

Callers switch inference without touching attributes: :meth:`PrunedViT.pruning` swaps the
settings (a forced top-k rate, per image if asked, another kernel, or the gates off: the
dense ViT), :meth:`PrunedViT.observed` hands the decisions and the gathered blocks to a
:class:`PruningObserver` (FLOP counting).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from detectron2.modeling.backbone.utils import get_abs_pos
from detectron2.modeling.backbone.vit import ViT

from .attention import DEFAULT_ATTENTION, AttentionKernel, attention_kernel, profiler_range
from .compiled import check_compiled_kernel, checked_compile_mode, compiled_blocks
from .observer import PruningObserver
from .gates import build_gates, gumbel_keep_decision
from .keep_policy import (KeepPolicy, Ratios, checked_pruned_blocks, keep_count, per_block_ratios,
                          target_keep_ratios)
from .sparse_block import (DEFAULT_QUANTUM, group_kept_tokens, run_block_dense,
                           run_block_gathered, run_block_masked)
from .tome import build_reducer

__all__ = ["PrunedViT", "InferenceSettings", "PruningObserver"]


@dataclass(frozen=True)
class InferenceSettings:
    """How a :class:`PrunedViT` runs at inference (:meth:`PrunedViT.pruning` swaps them).

    Attributes:
        policy: the keep decision of the gated blocks (and the reducer's rate, if it has
            ``ratios``).
        kernel: the attention kernel of the dense and gathered blocks.
        gates: False runs every block densely, without gates or reducer: the dense ViT.
        compile: "none" (eager), "default" or "freeze": the blocks run as compiled
            functions (:mod:`.compiled`; inference only).
    """

    policy: KeepPolicy
    kernel: AttentionKernel
    gates: bool = True
    compile: str = "none"


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

    # a config override of one of these arguments clears the other (tokenprune.config)
    config_alternatives: ClassVar[Tuple[Tuple[str, ...], ...]] = (("keep_ratios", "keep_base"),)

    def __init__(
        self,
        *,
        pruned_blocks: Sequence[int] = (),
        keep_ratios: Union[None, float, Sequence[float]] = None,
        keep_base: Optional[float] = None,
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
        attention: str = DEFAULT_ATTENTION,
        bucket_quantum: int = DEFAULT_QUANTUM,
        reducer: Optional[str] = None,
        reducer_kwargs: Optional[dict] = None,
        **vit_kwargs,
    ):
        """
        Args:
            pruned_blocks: indices of the blocks that get a gate.
            keep_ratios: target keep ratio per pruned block (or one for all), in (0, 1];
                None: SViT's schedule from ``keep_base`` (:func:`.svit_ratios`), else 0.7.
            keep_base: that schedule's base (base x3, base^2 x3, base^3 x3 for 9 blocks).
            gate: a name in GATE_REGISTRY ("mlp" = "MLPGate"); gate_kwargs go to it.
                A gate with ``learned = False`` decides in training as at inference (hard,
                no keep-ratio loss); one with ``needs_block = True`` also receives
                ``block``, ``hw`` and ``active`` (see :mod:`.baselines`).
            preserve, reactivate, dynamic: SViT's findings 1-3 (see module docstring).
            fixed_keep_ratio: force a top-k rate at inference (a float, one per pruned
                block or {block: ratio}); 1.0 keeps every token. None: use the gates
                (``dynamic``).
            keep_ratio_loss_weight: weight of ``(mean(keep) - target)^2`` averaged over gates.
            keep_ratio_loss_per_image: take the mean per image, then average the squares.
            gumbel_tau: Gumbel-softmax temperature in training.
            gumbel_noise: scale of the Gumbel noise in training: 1 samples each decision from
                the gate's keep probability (SViT), 0 takes the inference threshold
                (see :func:`gumbel_keep_decision`); :class:`tokenprune.engine.GateNoiseHook`
                anneals it.
            execution: "gather" (compute kept tokens only) or "masked" (compute all tokens,
                mask keys; a reference that saves no time).
            attention: inference kernel, "sdpa", "eager" or "flex" (see the module docstring).
            bucket_quantum: gathered groups attend in buckets of their size rounded up to a
                multiple of this (0: one bucket, every group padded to the longest).
            reducer: a name in REDUCER_REGISTRY ("tome") to use instead of gates;
                reducer_kwargs go to it. Each pruned block keeps ``ceil(r * N)`` tokens at
                its ratio r (``fixed_keep_ratio`` if set, else ``keep_ratios``), through
                the model's attention kernel.
            vit_kwargs: arguments of detectron2's ViT.
        """
        super().__init__(**vit_kwargs)
        self.pruned_blocks = checked_pruned_blocks(pruned_blocks, self.blocks)
        self.keep_ratios = target_keep_ratios(self.pruned_blocks, keep_ratios, keep_base)
        ratios = None
        if fixed_keep_ratio is not None:
            ratios = per_block_ratios(fixed_keep_ratio, self.pruned_blocks, "fixed_keep_ratio")
        elif not dynamic:
            ratios = dict(self.keep_ratios)
        self.preserve = preserve
        self._settings = InferenceSettings(  # discarded tokens cannot come back
            KeepPolicy(ratios, inherit=not (reactivate and preserve)),
            attention_kernel(attention))
        self.keep_ratio_loss_weight = keep_ratio_loss_weight
        self.keep_ratio_loss_per_image = keep_ratio_loss_per_image
        self.gumbel_tau = gumbel_tau
        self.gumbel_noise = gumbel_noise
        self.execution, self.bucket_quantum = _checked_execution(execution, bucket_quantum)
        self.reducer = build_reducer(reducer, **(reducer_kwargs or {})) if reducer else None
        embed_dim = self._out_feature_channels[self._out_features[0]]
        self.gates = nn.ModuleDict({} if self.reducer is not None else build_gates(
            gate, embed_dim, self.pruned_blocks, **(gate_kwargs or {})))
        self._guidance: Optional[Tensor] = None
        self._observer = PruningObserver()
        self.last_keep_ratio_loss: Optional[Tensor] = None
        self._clear_statistics((0, 0))

    @property
    def inference_settings(self) -> InferenceSettings:
        """The settings inference runs with now: as configured, or as :meth:`pruning` set."""
        return self._settings

    @property
    def reactivate(self) -> bool:
        """SViT's finding 2: pruned tokens are scored again at the next block (not inherit)."""
        return not self._settings.policy.inherit

    @property
    def dynamic(self) -> bool:
        """At inference the gates decide per image (no fixed top-k rate)."""
        return self._settings.policy.ratios is None

    def _clear_statistics(self, grid: Tuple[int, int]) -> None:
        self.last_keep_ratios: Dict[int, Tensor] = {}
        self.last_keep_masks: Dict[int, Tensor] = {}
        self.last_gate_log_probs: Dict[int, Tensor] = {}
        self.last_grid = grid

    @contextmanager
    def guided(self, guidance: Optional[Tensor]) -> Iterator[None]:
        """Within the context, gates receive ``guidance`` (B, D) (for guided gates)."""
        self._guidance = guidance
        try:
            yield
        finally:
            self._guidance = None

    @contextmanager
    def pruning(self, *, keep_ratio: Optional[Ratios] = None, gates: bool = True,
                attention: Optional[str] = None, image_scales: Optional[Sequence[float]] = None,
                policy: Optional[KeepPolicy] = None,
                compile: Optional[str] = None) -> Iterator[None]:
        """Within the context, inference prunes as asked instead of as configured.

        Args:
            keep_ratio: a top-k rate forced on every pruned block (a float, one per pruned
                block, or {block: ratio}); 1.0 keeps every token. None: the gates decide
                per image (the dynamic rate), whatever ``dynamic`` and ``fixed_keep_ratio``
                say.
            gates: False runs every block densely without its gate or reducer: exactly
                the dense ViT (the keep policy is then ignored).
            attention: the kernel's name (see ``__init__``); None keeps the current one.
            image_scales: one factor per image of the batch: image b keeps the top
                ``min(1, keep_ratio * image_scales[b])`` of its tokens (unequal counts per
                image at a known mean); only with a forced ``keep_ratio``.
            policy: a :class:`KeepPolicy` to use as it is, instead of ``keep_ratio`` and
                ``image_scales`` (which take the current ``inherit``); its ``ratios`` (if
                any) must name every pruned block, and a discarding model (``preserve``
                off) needs ``inherit``.
            compile: a mode of :data:`~.compiled.COMPILE_MODES` for the blocks; None keeps
                the current one.
        """
        if policy is None:
            ratios = (None if keep_ratio is None
                      else per_block_ratios(keep_ratio, self.pruned_blocks, "keep_ratio"))
            scales = None if image_scales is None else tuple(float(s) for s in image_scales)
            policy = KeepPolicy(ratios, scales, inherit=self._settings.policy.inherit)
        elif keep_ratio is not None or image_scales is not None:
            raise ValueError("pruning() takes a policy or keep_ratio / image_scales, not both")
        elif policy.ratios is not None and not set(self.pruned_blocks) <= set(policy.ratios):
            raise ValueError(f"the policy's ratios name blocks {sorted(policy.ratios)}, "
                             f"not every pruned block {self.pruned_blocks}")
        elif not (self.preserve or policy.inherit):
            raise ValueError("a model that discards tokens needs an inherit policy")
        kernel = self._settings.kernel if attention is None else attention_kernel(attention)
        mode = self._settings.compile if compile is None else checked_compile_mode(compile)
        check_compiled_kernel(mode, kernel)
        saved, self._settings = self._settings, InferenceSettings(policy, kernel, gates, mode)
        try:
            yield
        finally:
            self._settings = saved

    def compile_blocks(self, mode: str = "default") -> None:
        """From now on, inference runs every block as a compiled function in ``mode``
        (:data:`~.compiled.COMPILE_MODES`; "none": eager again). The graphs are built at
        the first calls and bounded whatever the kept counts (see :mod:`.compiled`)."""
        check_compiled_kernel(checked_compile_mode(mode), self._settings.kernel)
        self._settings = replace(self._settings, compile=mode)

    @contextmanager
    def observed(self, observer: "PruningObserver") -> Iterator[None]:
        """Within the context, ``observer`` takes the inference decisions and runs the pruned
        blocks (see :class:`PruningObserver`; FLOP counting scopes and ties them)."""
        saved, self._observer = self._observer, observer
        try:
            yield
        finally:
            self._observer = saved

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """x: (B, 3, H, W) image -> {out_feature: (B, C, H/16, W/16)}.

        Under an enclosing ``torch.compile`` (:func:`~.compiled.compile_model`), a pruning
        forward runs eagerly around its compiled blocks (its keep decisions are data); the
        dense one (``pruning(gates=False)``) is traced whole."""
        if self._settings.compile != "none" and self._settings.gates and not self.training:
            return self._forward_outside_graph(x)
        return self._forward(x)

    @torch.compiler.disable
    def _forward_outside_graph(self, x: Tensor) -> Dict[str, Tensor]:
        return self._forward(x)

    def _forward(self, x: Tensor) -> Dict[str, Tensor]:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token,
                                (x.shape[1], x.shape[2]))
        B, H, W, C = x.shape
        active = torch.ones(B, H * W, dtype=torch.bool, device=x.device)
        losses: List[Tensor] = []
        self._clear_statistics((H, W))
        pruning = self._settings.gates
        for i, blk in enumerate(self.blocks):
            if pruning and self.reducer is not None and i in self.keep_ratios:
                x = self._reduced_block(i, blk, x)
            elif not pruning or not self.gates:
                x = self._dense_block(i, blk, x)
            elif str(i) not in self.gates:
                x = self._ungated_block(i, blk, x, active)
            else:
                x, active = self._gated_block(i, blk, x, active, losses)
        if not self.preserve and self.gates and pruning:
            x = x * active.view(B, H, W, 1).to(x.dtype)
        self.last_keep_ratio_loss = (
            self.keep_ratio_loss_weight * torch.stack(losses).mean() if losses else None
        )
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}

    def _gated_block(self, i: int, blk: nn.Module, x: Tensor, active: Tensor,
                     losses: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Gate ``i`` scores the tokens, block ``i`` runs on the kept ones; returns (x, active)."""
        B, H, W, C = x.shape
        gate = self.gates[str(i)]
        with profiler_range("tp::gate"):
            if getattr(gate, "needs_block", False):
                log_probs = gate(x.reshape(B, H * W, C), guidance=self._guidance, block=blk,
                                 hw=(H, W), active=active)
            else:
                log_probs = gate(x.reshape(B, H * W, C), guidance=self._guidance)
        if not self.training:
            x, active = self._inference_block(i, blk, x, log_probs, active)
        elif getattr(gate, "learned", True):
            x, active = self._training_block(i, blk, x, log_probs, active, losses)
        else:
            x, active = self._unlearned_training_block(i, blk, x, log_probs, active)
        return x, active

    def _training_block(self, i: int, blk: nn.Module, x: Tensor, log_probs: Tensor,
                        active: Tensor, losses: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Training with a learned gate: straight-through Gumbel decisions, soft key mask."""
        self.last_gate_log_probs[i] = log_probs
        keep = gumbel_keep_decision(log_probs, self.gumbel_tau, self.gumbel_noise)
        if not self.reactivate:
            keep = keep * active
            active = keep.detach() > 0
        x = run_block_masked(blk, x, keep)
        losses.append(self._keep_ratio_loss(keep, self.keep_ratios[i]))
        self.last_keep_ratios[i] = keep.detach().mean(dim=1)
        return x, active

    def _unlearned_training_block(self, i: int, blk: nn.Module, x: Tensor, log_probs: Tensor,
                                  active: Tensor) -> Tuple[Tensor, Tensor]:
        """Training with a score without parameters: hard decision as at inference, no loss."""
        with torch.no_grad():
            hard = self._decision(i, log_probs.detach(), active)
        if not self.reactivate:
            active = hard
        keep = hard.to(x.dtype)
        x = run_block_masked(blk, x, keep)
        self.last_keep_ratios[i] = keep.mean(dim=1)
        return x, active

    def _inference_block(self, i: int, blk: nn.Module, x: Tensor, log_probs: Tensor,
                         active: Tensor) -> Tuple[Tensor, Tensor]:
        """Inference: the kept tokens are gathered, computed and scattered back."""
        observer = self._observer
        keep = observer.decide(i, lambda: self._decision(i, log_probs, active), log_probs)
        if not self.reactivate:
            active = keep
        if bool(keep.all()):
            x = self._dense_block(i, blk, observer.before_dense_block(i, x))
        else:
            x = self._kept_tokens_block(i, blk, x, keep)
        self.last_keep_masks[i] = keep
        self.last_keep_ratios[i] = keep.float().mean(dim=1)
        return x, active

    def _kept_tokens_block(self, i: int, blk: nn.Module, x: Tensor, keep: Tensor) -> Tensor:
        """Inference of block ``i`` on the (B, N) bool ``keep`` tokens: gathered (or
        masked), the others unchanged."""
        if self.execution == "gather":
            with self._observer.block_scope(i), profiler_range("tp::gathered_block"):
                if self._settings.compile != "none":
                    groups = group_kept_tokens(keep, x.shape[1:3], blk.window_size)
                    return compiled_blocks(self._settings.compile).run_gathered(
                        blk, x, groups, self._settings.kernel)
                return run_block_gathered(blk, x, keep, self._settings.kernel,
                                          self.bucket_quantum)
        with self._observer.block_scope(i):
            return run_block_masked(blk, x, keep.float())

    def _ungated_block(self, i: int, blk: nn.Module, x: Tensor, active: Tensor) -> Tensor:
        """Block ``i`` without a gate: every token, except after a gate of an inherit model
        (``reactivate`` off), which holds its decision: the block runs on the tokens still
        in play (SViT's public inherit variant: 3 gates, each decision held for 3 blocks)."""
        if self.reactivate or i < self.pruned_blocks[0] or bool(active.all()):
            return self._dense_block(i, blk, x)
        if self.training:
            x = run_block_masked(blk, x, active.to(x.dtype))
        else:
            x = self._kept_tokens_block(i, blk, x, active)
            self.last_keep_masks[i] = active
        self.last_keep_ratios[i] = active.float().mean(dim=1)
        return x

    def _reduced_block(self, i: int, blk: nn.Module, x: Tensor) -> Tensor:
        """Pruned block ``i`` with the token reducer: reduce, run the block, restore."""
        B, H, W, C = x.shape
        N = H * W
        n = keep_count((self._settings.policy.ratios or self.keep_ratios)[i], N)
        if n == N:
            x = self._dense_block(i, blk, x)
        else:
            tokens, state = self.reducer.reduce(x, n)
            tokens = self.reducer.run_block(blk, tokens, state, self._settings.kernel,
                                            self.bucket_quantum)
            x = self.reducer.restore(tokens, state)
        self.last_keep_ratios[i] = x.new_full((B,), n / N)
        return x

    def _dense_block(self, i: int, blk: nn.Module, x: Tensor) -> Tensor:
        """Every token through block ``i`` (Detectron2's ``forward`` in training, and at
        inference with a ``block_forward`` kernel; else the kernel's, in the observer's
        scope)."""
        kernel = self._settings.kernel
        with profiler_range("tp::dense_block"):
            if self.training:
                return blk(x)
            if self._settings.compile != "none" and not torch.compiler.is_compiling():
                with self._observer.block_scope(i):  # (an enclosing trace inlines it)
                    return compiled_blocks(self._settings.compile).dense(blk, x, kernel)
            if kernel.block_forward:
                return blk(x)
            with self._observer.block_scope(i):
                return run_block_dense(blk, x, kernel)

    def _decision(self, i: int, log_probs: Tensor, active: Tensor) -> Tensor:
        """(B, N, 2) gate log-probs of block ``i`` -> (B, N) bool: the policy's decision."""
        return self._settings.policy.decide(i, log_probs[..., 0] - log_probs[..., 1], active)

    def _keep_ratio_loss(self, keep: Tensor, target: float) -> Tensor:
        if self.keep_ratio_loss_per_image:
            return ((keep.mean(dim=1) - target) ** 2).mean()
        return (keep.mean() - target) ** 2


def _checked_execution(execution: str, quantum: int) -> Tuple[str, int]:
    if execution not in ("gather", "masked"):
        raise ValueError(f"execution must be 'gather' or 'masked', got {execution!r}")
    if quantum < 0:
        raise ValueError(f"bucket_quantum must be >= 0, got {quantum}")
    return execution, int(quantum)
