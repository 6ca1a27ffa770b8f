"""The analytic cost model of a (pruned) ViTDet backbone: multiply-accumulates per block.

One multiply-accumulate is one flop, fvcore's convention. Per block and image: q/k/v and
the output projection linear in the tokens that attend, attention quadratic per attention
group (the kept tokens of an image for a global block, of a window for a windowed block,
grouped as :func:`tokenprune.modeling.sparse_block.group_kept_tokens` groups them), the
decomposed relative positions linear, the MLP linear in the kept tokens, a residual conv
block on all tokens; the gates on all tokens and the patch embedding. The dense count
follows Detectron2's dense block (windowed blocks attend over padded windows). Used by
the benchmark (predicted speedups), the FLOP tests and the ablation's checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..modeling.keep_policy import keep_count
from ..modeling.sparse_block import group_kept_tokens

__all__ = ["BackboneSpec", "attention_groups", "block_cost", "block_macs", "backbone_macs",
           "uniform_keep_speedups"]


@dataclass
class BackboneSpec:
    """What the MAC count of a ViTDet backbone depends on (one image).

    Attributes:
        grid: (H, W) token grid.
        embed_dim: C. mlp_hidden: hidden width of the blocks' MLP.
        patch_macs: MACs of the patch embedding per token (in_chans * p * p * C).
        window_sizes: per block, 0 for global attention.
        use_rel_pos: per block, decomposed relative positions on/off.
        residual_macs: per block, MACs per token of its residual conv block (0 if none).
        gate_macs: {block: MACs per token of its gate's linear layers}.
    """

    grid: Tuple[int, int]
    embed_dim: int
    mlp_hidden: int
    patch_macs: int
    window_sizes: List[int]
    use_rel_pos: List[bool]
    residual_macs: List[int] = field(default_factory=list)
    gate_macs: Dict[int, int] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return len(self.window_sizes)

    @classmethod
    def from_vit(cls, vit: nn.Module, grid: Tuple[int, int],
                 guidance: Optional[torch.Tensor] = None) -> "BackboneSpec":
        """The spec of a (Pruned)ViT on a ``grid`` of tokens; ``guidance`` (1, D) is what
        guided gates receive (their MACs are counted by fvcore on one image)."""
        proj = vit.patch_embed.proj
        kh, kw = proj.kernel_size
        blocks = list(vit.blocks)
        residual = []
        for blk in blocks:
            macs = 0
            if getattr(blk, "use_residual_block", False):
                for conv in blk.residual.modules():
                    if isinstance(conv, nn.Conv2d):
                        k = conv.kernel_size[0] * conv.kernel_size[1]
                        macs += conv.in_channels * conv.out_channels * k // conv.groups
            residual.append(macs)
        gates = getattr(vit, "gates", {})
        return cls(
            grid=(int(grid[0]), int(grid[1])),
            embed_dim=int(proj.out_channels),
            mlp_hidden=int(blocks[0].mlp.fc1.out_features),
            patch_macs=int(proj.in_channels * kh * kw * proj.out_channels // proj.groups),
            window_sizes=[int(blk.window_size) for blk in blocks],
            use_rel_pos=[bool(blk.attn.use_rel_pos) for blk in blocks],
            residual_macs=residual,
            gate_macs={int(i): _gate_macs_per_token(g, int(proj.out_channels), grid, guidance)
                       for i, g in gates.items()},
        )


_MLP_PARTS = (nn.Linear, nn.LayerNorm, nn.GELU, nn.ReLU, nn.SiLU, nn.Identity, nn.Dropout,
              nn.Sequential, nn.ModuleList)


def _gate_macs_per_token(gate: nn.Module, dim: int, grid: Tuple[int, int],
                         guidance: Optional[torch.Tensor]) -> int:
    """MACs per token of a gate: exact for per-token MLP gates (their linear layers); for
    other gates (guided pruning decoders) fvcore's count on one image, divided by N."""
    if all(isinstance(m, _MLP_PARTS) for m in gate.modules() if m is not gate):
        return sum(m.in_features * m.out_features for m in gate.modules()
                   if isinstance(m, nn.Linear))
    from fvcore.nn import FlopCountAnalysis

    n = grid[0] * grid[1]
    p = next(gate.parameters())
    x = torch.zeros(1, n, dim, device=p.device, dtype=p.dtype)
    g = None if guidance is None else guidance[:1].to(p.device)
    flops = FlopCountAnalysis(gate, (x, g))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    with torch.no_grad():
        return int(round(flops.total() / n))


def attention_groups(spec: BackboneSpec, block: int, keep: Optional[torch.Tensor],
                     quantum: Optional[int] = None) -> Tuple[List[int], int, int]:
    """Attention groups of ``block`` for one image.

    Returns (sizes of the groups, tokens through q/k/v and projection, tokens through the
    MLP). ``keep``: (H*W) bool, or None / all True for the dense block (windowed blocks
    then attend over padded windows, as Detectron2 computes them). ``quantum``: the group
    sizes as the gathered execution pads them into buckets (see
    :meth:`~tokenprune.modeling.sparse_block.TokenGroups.bucket_lengths`; 0: every group to
    the longest); None: the kept counts themselves.
    """
    H, W = spec.grid
    N = H * W
    ws = spec.window_sizes[block]
    if keep is None or bool(keep.all()):
        if not ws:
            return [N], N, N
        hp, wp = -(-H // ws) * ws, -(-W // ws) * ws
        return [ws * ws] * (hp * wp // (ws * ws)), hp * wp, N
    keep = keep.reshape(1, -1).bool().cpu()
    kept = int(keep.sum())
    groups = group_kept_tokens(keep, (H, W), ws)
    sizes = groups.counts if quantum is None else groups.bucket_lengths(quantum)
    return sizes, kept, kept


def block_cost(spec: BackboneSpec, block: int, keep: Optional[torch.Tensor] = None,
               quantum: Optional[int] = None) -> Dict[str, int]:
    """Multiply-accumulates of one block for one image, by part (dense if ``keep`` is None).

    ``quantum``: the attention products over the groups padded into buckets as the
    gathered execution computes them (q/k/v and the projection run on the kept tokens
    only); None: over the kept tokens exactly.
    Returns {"qkv", "attn_qk", "attn_v", "proj", "rel_pos", "mlp", "residual", "total"}.
    """
    C, H, W = spec.embed_dim, *spec.grid
    groups, attn_tokens, mlp_tokens = attention_groups(spec, block, keep, quantum)
    ws = spec.window_sizes[block]
    fh, fw = (ws, ws) if ws else (H, W)
    pairs = sum(g * g for g in groups)
    cost = dict(qkv=attn_tokens * 3 * C * C, attn_qk=pairs * C, attn_v=pairs * C,
                proj=attn_tokens * C * C,
                rel_pos=attn_tokens * (fh + fw) * C if spec.use_rel_pos[block] else 0,
                mlp=mlp_tokens * 2 * C * spec.mlp_hidden,
                residual=H * W * spec.residual_macs[block] if spec.residual_macs else 0)
    cost["total"] = sum(cost.values())
    return cost


def block_macs(spec: BackboneSpec, block: int, keep: Optional[torch.Tensor] = None) -> int:
    """Multiply-accumulates of one block for one image (dense if ``keep`` is None)."""
    return block_cost(spec, block, keep)["total"]


def backbone_macs(spec: BackboneSpec, keep_masks: Optional[Dict[int, torch.Tensor]] = None,
                  gates: bool = True) -> int:
    """MACs of the backbone for one image: patch embedding, blocks, and (``gates``) every
    gate of ``spec.gate_macs`` on all tokens. ``keep_masks``: {block: (H*W) bool kept}."""
    keep_masks = keep_masks or {}
    N = spec.grid[0] * spec.grid[1]
    total = N * spec.patch_macs
    total += sum(block_macs(spec, i, keep_masks.get(i)) for i in range(spec.depth))
    if gates:
        total += N * sum(spec.gate_macs.values())
    return total


def uniform_keep_speedups(spec: BackboneSpec, pruned: Sequence[int],
                          ratios: Sequence[float]) -> List[float]:
    """Predicted speedup of forcing ``r`` on every pruned block, for each ``r`` of ``ratios``:
    the first ``keep_count(r, n)`` tokens (raster order) of every window / the image kept."""
    H, W = spec.grid
    dense = backbone_macs(spec, gates=False)
    out = []
    for r in ratios:
        masks = {}
        for i in pruned:
            ws = spec.window_sizes[i] or max(H, W)
            keep = torch.zeros(H, W, dtype=torch.bool)
            for y0 in range(0, H, ws):
                for x0 in range(0, W, ws):
                    h, w = min(ws, H - y0), min(ws, W - x0)
                    flat = torch.zeros(h * w, dtype=torch.bool)
                    flat[:keep_count(r, h * w)] = True
                    keep[y0:y0 + h, x0:x0 + w] = flat.view(h, w)
            masks[i] = keep.view(-1)
        out.append(dense / backbone_macs(spec, masks))
    return out
