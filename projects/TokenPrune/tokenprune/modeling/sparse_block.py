"""Running a Detectron2 ViTDet ``Block`` on a subset of its tokens, or densely.

Three executions share the attention kernels of :mod:`.attention` (an
:class:`~.attention.AttentionKernel` object, chosen by :class:`PrunedViT`):

* **gather** (inference, :func:`run_block_gathered`): the kept tokens are gathered into
  groups (one per image for a global block, one per image-window for a windowed block),
  run through the block (:func:`run_block_on_groups`: q/k/v, projection and MLP on the kept
  tokens only, attention within each group) and scattered back. Groups of different sizes
  are not padded to the longest one: they are bucketed by their length rounded up to a
  multiple of ``quantum`` tokens, and each bucket is one batched attention call (the flex
  kernel packs every group in one sequence with a block-diagonal mask instead). An optional
  key bias (ToMe's log token size, :mod:`.tome`) is added to every query's logit of a key.
* **masked** (training, and a reference, :func:`run_block_masked`): every token is
  computed; a soft key weight (the straight-through keep decision) removes pruned tokens
  as attention keys.
* **dense** (:func:`run_block_dense`): every token, Detectron2's own ``Block.forward``
  (eager kernel) or the same computation through the kernel's ``attend`` (sdpa, flex),
  windowed blocks over ViTDet's zero-padded windows exactly as Detectron2 computes them.

Relative position terms are computed from each token's grid (or in-window) coordinates,
never from its position in the packed sequence, so they are exact on any subset.
Padding positions that ViTDet adds to fill the last window are not keys in the gathered
and masked executions; with every token kept, :class:`PrunedViT` runs the block densely.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from detectron2.modeling.backbone.utils import window_partition, window_unpartition

from .attention import AttentionKernel, policy_attention, profiled

__all__ = ["TokenGroups", "group_kept_tokens", "gather_groups", "run_block_on_groups",
           "run_block_gathered", "run_block_masked", "run_block_dense", "DEFAULT_QUANTUM"]

DEFAULT_QUANTUM = 8


@dataclass
class TokenGroups:
    """Kept tokens of a (B, H, W) grid packed into G padded groups of length L.

    Attributes:
        flat_index: (M,) indices of the kept tokens into the flattened (B * H * W) grid,
            ordered group by group.
        group: (M,) group of each kept token; slot: (M,) its position inside the group.
        num_groups, length: G and L.
        coords: (G, L, 2) long, the (row, col) of each slot in its attention frame
            (the image grid for global blocks, the window for windowed blocks).
        key_valid: (G, L) bool, False on padding slots; None when no group is padded.
        frame: (h, w) size of the attention frame (for relative positions).
        counts: the G group sizes (host ints); empty when built by :meth:`from_tensors`
            (inside compiled code: one bucket only).
    """

    flat_index: Tensor
    group: Tensor
    slot: Tensor
    num_groups: int
    length: int
    coords: Tensor
    key_valid: Optional[Tensor]
    frame: Tuple[int, int]
    counts: List[int]

    @classmethod
    def from_tensors(cls, flat_index: Tensor, group: Tensor, slot: Tensor, coords: Tensor,
                     key_valid: Optional[Tensor], frame: Tuple[int, int]) -> "TokenGroups":
        """Groups from their tensors alone (G and L from ``coords``, no host sizes), as a
        compiled function receives them; they run in one bucket (``quantum`` 0)."""
        return cls(flat_index, group, slot, coords.shape[0], coords.shape[1], coords,
                   key_valid, frame, [])

    @profiled("tp::pack")
    def pack(self, tokens: Tensor) -> Tensor:
        """(M, C) kept tokens in ``flat_index`` order -> (G, L, C), zeros on padding."""
        if self.key_valid is None:
            return tokens.view(self.num_groups, self.length, tokens.shape[-1])
        out = tokens.new_zeros(self.num_groups, self.length, tokens.shape[-1])
        out[self.group, self.slot] = tokens
        return out

    @profiled("tp::unpack")
    def unpack(self, packed: Tensor) -> Tensor:
        """(G, L, C) -> (M, C), dropping padding slots."""
        if self.key_valid is None:
            return packed.reshape(-1, packed.shape[-1])
        return packed[self.group, self.slot]

    def bucket_lengths(self, quantum: int) -> List[int]:
        """Per group, the length of its bucket: its size rounded up to a multiple of
        ``quantum``, at most the longest group's (so buckets never pad more than one bucket
        would); ``quantum`` 0: the longest group (one bucket). The lengths come from the
        multiples of ``quantum`` and the longest size, so shapes repeat (``torch.compile``)."""
        if quantum <= 0:
            return [self.length] * self.num_groups
        return [min(-(-c // quantum) * quantum, self.length) for c in self.counts]

    @profiled("tp::buckets")
    def buckets(self, quantum: int) -> List[Tuple[Optional[Tensor], "TokenGroups"]]:
        """The groups split into buckets of one length (see :meth:`bucket_lengths`).

        Returns [(rows, bucket)]: ``rows`` (M_b,) the bucket's tokens among the M kept ones
        (None: all of them, in order), ``bucket`` their TokenGroups of G_b groups.
        """
        if quantum <= 0:
            return [(None, self)]
        lengths = self.bucket_lengths(quantum)
        if len(set(lengths)) == 1 and lengths[0] == self.length:
            return [(None, self)]
        device = self.group.device
        by_length = torch.tensor(lengths, device=device)[self.group]  # (M,)
        out = []
        for length in sorted(set(lengths), reverse=True):
            members = [g for g, n in enumerate(lengths) if n == length]
            renumber = torch.full((self.num_groups,), -1, dtype=torch.long, device=device)
            renumber[torch.tensor(members, device=device)] = torch.arange(len(members),
                                                                           device=device)
            rows = (by_length == length).nonzero().squeeze(1)
            group, slot = renumber[self.group[rows]], self.slot[rows]
            coords = self.coords.new_zeros(len(members), length, 2)
            coords[group, slot] = self.coords[self.group[rows], slot]
            counts = [self.counts[g] for g in members]
            key_valid = None
            if any(c != length for c in counts):
                key_valid = torch.zeros(len(members), length, dtype=torch.bool, device=device)
                key_valid[group, slot] = True
            out.append((rows, TokenGroups(self.flat_index[rows], group, slot, len(members),
                                          length, coords, key_valid, self.frame, counts)))
        return out

    def token_coords(self) -> Tensor:
        """(M, 2) long: each kept token's (row, col) in its attention frame."""
        return self.coords[self.group, self.slot]


@profiled("tp::group_kept_tokens")
def group_kept_tokens(keep: Tensor, hw: Tuple[int, int], window_size: int = 0) -> TokenGroups:
    """Pack the kept tokens of each image (or image-window) into groups.

    Args:
        keep: (B, H * W) bool, at least one True per image.
        hw: grid size (H, W).
        window_size: 0 for global attention, else the attention window size.
    One host synchronisation (the group sizes).
    """
    B, N = keep.shape
    H, W = hw
    device = keep.device
    rows = torch.arange(H, device=device).repeat_interleave(W)
    cols = torch.arange(W, device=device).repeat(H)
    if window_size > 0:
        win_w = (W + window_size - 1) // window_size
        win_id = (rows // window_size) * win_w + cols // window_size
        num_win = ((H + window_size - 1) // window_size) * win_w
        local = torch.stack([rows % window_size, cols % window_size], dim=-1)
        frame = (window_size, window_size)
        # sort kept tokens by (image, window), raster order inside a window
        key = (torch.arange(B, device=device)[:, None] * num_win + win_id) * N + torch.arange(
            N, device=device
        )
        kept_keys = key[keep]
        kept_keys, _ = kept_keys.sort()
        flat_index = (kept_keys // N // num_win) * N + kept_keys % N
        raw_group = kept_keys // N
    else:
        local = torch.stack([rows, cols], dim=-1)
        frame = (H, W)
        flat_index = keep.reshape(-1).nonzero().squeeze(1)
        raw_group = flat_index // N
    # renumber non-empty groups 0..G-1; raw_group is sorted
    counts_all = torch.bincount(raw_group)
    nonempty = counts_all > 0
    group = (torch.cumsum(nonempty.long(), 0) - 1)[raw_group]
    counts_t = counts_all[nonempty]
    counts = counts_t.tolist()
    G, L = len(counts), max(counts)
    starts = torch.cumsum(counts_t, 0) - counts_t
    slot = torch.arange(flat_index.numel(), device=device) - starts[group]
    coords = torch.zeros(G, L, 2, dtype=torch.long, device=device)
    coords[group, slot] = local[flat_index % N]
    key_valid = None
    if min(counts) != L:
        key_valid = torch.zeros(G, L, dtype=torch.bool, device=device)
        key_valid[group, slot] = True
    return TokenGroups(flat_index, group, slot, G, L, coords, key_valid, frame, counts)


def gather_groups(flat: Tensor, keep: Tensor, hw: Tuple[int, int],
                  window_size: int) -> Tuple[TokenGroups, Tensor]:
    """The kept tokens of a (B * H * W, C) token map, grouped as a block of ``window_size``
    attends them (:func:`group_kept_tokens`): their groups and their (M, C) features in the
    groups' ``flat_index`` order. ``keep``: (B, H * W) bool, at least one True per image."""
    groups = group_kept_tokens(keep, hw, window_size)
    return groups, flat.index_select(0, groups.flat_index)


def run_block_on_groups(block: torch.nn.Module, tokens: Tensor, groups: TokenGroups,
                        kernel: AttentionKernel, quantum: int = DEFAULT_QUANTUM,
                        key_bias: Optional[Tensor] = None) -> Tensor:
    """A ViTDet ``Block`` on grouped tokens: (M, C) in ``groups.flat_index`` order -> (M, C).

    The norms, the q/k/v and output projections and the MLP run on the M tokens only; each
    token attends to its own group (``kernel.gathered``: buckets of ``quantum``, or packed).
    ``key_bias``: (M,) float added to every query's logit of that key (ToMe), or None.
    """
    attn = block.attn
    attended = attn.proj(kernel.gathered(attn, attn.qkv(block.norm1(tokens)), groups, quantum,
                                         key_bias))
    return _residual_and_mlp(block, tokens, attended)


def _residual_and_mlp(block: torch.nn.Module, x: Tensor, attended: Tensor) -> Tensor:
    """The rest of a ViTDet ``Block`` after its attention: ``x + attended``, then the MLP
    with its residual (any shape (..., C))."""
    x = x + block.drop_path(attended)
    return x + block.drop_path(block.mlp(block.norm2(x)))


def run_block_gathered(block: torch.nn.Module, x: Tensor, keep: Tensor,
                       kernel: AttentionKernel, quantum: int = DEFAULT_QUANTUM,
                       key_bias: Optional[Tensor] = None) -> Tensor:
    """Run ``block`` on the kept tokens only; pruned tokens keep their input features.

    Args:
        block: a Detectron2 ViTDet ``Block`` (eval mode; no residual conv block).
        x: (B, H, W, C) token map.
        keep: (B, H * W) bool, at least one True per image.
        kernel, quantum: see :func:`run_block_on_groups`.
        key_bias: (B, H * W) float added to the logits of every key, or None.
    Returns:
        (B, H, W, C): updated kept tokens, unchanged pruned tokens.
    """
    B, H, W, C = x.shape
    flat = x.reshape(B * H * W, C)
    groups, tokens = gather_groups(flat, keep, (H, W), block.window_size)
    if key_bias is not None:
        key_bias = key_bias.reshape(B * H * W).index_select(0, groups.flat_index)
    tokens = run_block_on_groups(block, tokens, groups, kernel, quantum, key_bias)
    return flat.index_copy(0, groups.flat_index, tokens).view(B, H, W, C)


def _run_block_all_tokens(block: torch.nn.Module, x: Tensor, kernel: Optional[AttentionKernel],
                          weight: Optional[Tensor] = None) -> Tensor:
    """``block`` on every token, the attention through ``kernel.attend``, or, with
    ``weight`` (B, H, W, 1) key weights, through :func:`~.attention.policy_attention`."""
    B, H, W, C = x.shape
    h = block.norm1(x)
    ws = block.window_size
    weight_w = weight
    if ws > 0:
        h, pad_hw = window_partition(h, ws)
        if weight is not None:
            weight_w, _ = window_partition(weight, ws)  # padding gets weight 0: not a key
        frame = (ws, ws)
    else:
        frame = (H, W)
    n_groups = h.shape[0]
    fh, fw = frame
    attn = block.attn
    qkv = attn.qkv(h.reshape(n_groups, fh * fw, C))
    if weight_w is None:
        core = kernel.attend(attn, qkv, None, frame)
    else:
        core = policy_attention(attn, qkv, None, frame, weight_w.reshape(n_groups, fh * fw))
    attended = attn.proj(core).view(n_groups, fh, fw, C)
    if ws > 0:
        attended = window_unpartition(attended, ws, pad_hw, (H, W))
    out = _residual_and_mlp(block, x, attended)
    if getattr(block, "use_residual_block", False):
        out = block.residual(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return out


def run_block_masked(block: torch.nn.Module, x: Tensor, keep: Tensor) -> Tensor:
    """Run ``block`` on every token with pruned tokens removed as attention keys.

    Returns ``keep * block(x) + (1 - keep) * x``, differentiable in ``keep`` (the
    straight-through path of SViT's training form); the attention is
    :func:`~.attention.policy_attention` whatever the kernel.

    Args:
        x: (B, H, W, C) token map.
        keep: (B, H * W) float in [0, 1] (hard 0/1 decisions in practice).
    """
    B, H, W, C = x.shape
    weight = keep.view(B, H, W, 1).to(x.dtype)
    out = _run_block_all_tokens(block, x, None, weight)
    return weight * out + (1 - weight) * x


def run_block_dense(block: torch.nn.Module, x: Tensor, kernel: AttentionKernel) -> Tensor:
    """(B, H, W, C) -> (B, H, W, C): the dense block, Detectron2's own ``forward`` if
    ``kernel.block_forward`` (eager), else the same computation through ``kernel.attend``."""
    if kernel.block_forward:
        return block(x)
    return _run_block_all_tokens(block, x, kernel)
