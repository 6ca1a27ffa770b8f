"""``torch.compile`` of a :class:`~.pruned_vit.PrunedViT`'s blocks, in a bounded set of graphs.

Compiling a pruned ViT whole gives one graph per kept count: the counts are shapes and the
keep decisions are data. So the compiled unit is a **block**: the decision and the grouping
of the kept tokens (a few index operations and one host synchronisation) stay eager, and one
compiled function runs the whole block on them: gather, norms, q/k/v, the attention of every
group, projection, MLP, scatter (:func:`gathered_block`). Its varying sizes (kept tokens,
groups, group length) are marked dynamic, so one graph serves every count; the groups are
padded to the longest one (one bucket: :meth:`TokenGroups.buckets` with quantum 0), which
costs little (a windowed group attends at most one window, and at batch 1 a global block has
one group, unpadded). Every block of the same kind (windowed or global, with padding or
not) shares the graph: their weights are inputs. A dense block is a second function.

Modes (:data:`COMPILE_MODES`): ``none`` (eager), ``default`` (inductor) and ``freeze``
(inductor with its ``freezing`` option, for inference; measured, it builds as few graphs as
``default``: 5-7 for ViTDet-B's pruned backbone). Inductor on a CPU needs a C++ compiler:
:func:`compile_unavailable` says why compiling cannot run here, and :func:`compile_model`
falls back to eager with one warning line.

:func:`compile_model` compiles a whole detector for inference: the pruned blocks as above,
and the rest of the network (the patch embedding, the dense ViT when pruning is off, the
feature pyramid, the heads) with ``torch.compile`` of the model, which leaves the pruned
ViT's eager bookkeeping out of its graphs.
"""
from __future__ import annotations

import functools
import logging
import shutil
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .attention import AttentionKernel
from .sparse_block import TokenGroups, run_block_dense, run_block_on_groups

__all__ = ["COMPILE_MODES", "CompiledBlocks", "compiled_blocks", "gathered_block",
           "compile_unavailable", "compile_model", "inductor_options", "RECOMPILE_LIMIT",
           "checked_compile_mode", "check_compiled_kernel", "set_block_compile"]

COMPILE_MODES = ("none", "default", "freeze")
RECOMPILE_LIMIT = 64  # dynamo's limit per function (8 by default): graphs of every mode,
# kernel, precision and block kind share a function's cache

logger = logging.getLogger(__name__)


def inductor_options(mode: str) -> Optional[dict]:
    """``torch.compile``'s ``options`` for a mode of :data:`COMPILE_MODES` (not "none")."""
    if checked_compile_mode(mode, "compile mode") == "none":
        raise ValueError("compile mode 'none' runs eagerly: it has no inductor options")
    return {"freezing": True} if mode == "freeze" else None


def checked_compile_mode(mode: str, name: str = "compile") -> str:
    """``mode`` if it is one of :data:`COMPILE_MODES`, else ValueError naming the setting
    ``name``."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"{name} must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    return mode


def check_compiled_kernel(mode: str, kernel: AttentionKernel) -> None:
    """ValueError for a compile mode with the flex kernel (FlexAttention compiles its own
    kernel on CUDA; inductor cannot lower it inside a compiled block on a CPU)."""
    if mode != "none" and kernel.name == "flex":
        raise ValueError(f"compile {mode!r} runs the sdpa and eager kernels, not flex "
                         "(FlexAttention is compiled on its own on CUDA)")


def gathered_block(block: nn.Module, x: Tensor, flat_index: Tensor, group: Tensor,
                   slot: Tensor, coords: Tensor, key_valid: Optional[Tensor],
                   frame: Tuple[int, int], kernel: AttentionKernel) -> Tensor:
    """``block`` on the kept tokens of ``x`` (B, H, W, C), the others unchanged: the traced
    body of a compiled gathered block. The token groups are a :class:`TokenGroups`' tensors
    (``flat_index`` (M,), ``group`` and ``slot`` (M,), ``coords`` (G, L, 2), ``key_valid``
    (G, L) or None, ``frame``); G and L are read from ``coords``, so they may be dynamic."""
    B, H, W, C = x.shape
    flat = x.reshape(B * H * W, C)
    groups = TokenGroups.from_tensors(flat_index, group, slot, coords, key_valid, frame)
    tokens = run_block_on_groups(block, flat.index_select(0, flat_index), groups, kernel, 0)
    return flat.index_copy(0, flat_index, tokens).view(B, H, W, C)


@dataclass(frozen=True)
class CompiledBlocks:
    """The compiled block functions of one mode.

    Attributes:
        mode: "default" or "freeze".
        dense: ``(block, x, kernel) -> x``, :func:`~.sparse_block.run_block_dense` compiled.
        gathered: :func:`gathered_block` compiled.
    """

    mode: str
    dense: Callable[..., Tensor]
    gathered: Callable[..., Tensor]

    def run_gathered(self, block: nn.Module, x: Tensor, groups: TokenGroups,
                     kernel: AttentionKernel) -> Tensor:
        """:func:`gathered_block` on ``groups``, their varying sizes marked dynamic."""
        mark = torch._dynamo.maybe_mark_dynamic  # a size of 1 stays a constant
        for t in (groups.flat_index, groups.group, groups.slot):
            mark(t, 0)
        for d in (0, 1):
            mark(groups.coords, d)
            if groups.key_valid is not None:
                mark(groups.key_valid, d)
        return self.gathered(block, x.contiguous(), groups.flat_index, groups.group,
                             groups.slot, groups.coords, groups.key_valid, groups.frame, kernel)


@functools.lru_cache(maxsize=None)
def compiled_blocks(mode: str) -> CompiledBlocks:
    """The block functions compiled in ``mode`` ("default" or "freeze"), once per process
    (every model shares them and their graphs). Raises dynamo's recompile limit to
    :data:`RECOMPILE_LIMIT`."""
    options = inductor_options(mode)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                               RECOMPILE_LIMIT)
    return CompiledBlocks(mode, torch.compile(run_block_dense, options=options),
                          torch.compile(gathered_block, options=options))


def compile_unavailable(device: str = "cpu") -> Optional[str]:
    """Why ``torch.compile`` (inductor) cannot run on ``device`` here, or None if it can."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if torch.device(device).type == "cpu":
        from torch._inductor import config as inductor_config

        cxx = inductor_config.cpp.cxx[-1] if inductor_config.cpp.cxx else None
        candidates = [c for c in (cxx, "g++", "c++", "clang++") if c]
        if not any(shutil.which(c) for c in candidates):
            return ("inductor needs a C++ compiler on a CPU and none was found "
                    f"(tried {', '.join(dict.fromkeys(candidates))})")
    return None


def compile_model(model: nn.Module, mode: str = "default", device: str = "cpu") -> nn.Module:
    """``model`` compiled for inference in ``mode`` (:data:`COMPILE_MODES`): its PrunedViTs'
    blocks (:meth:`PrunedViT.compile_blocks`) and the whole model under ``torch.compile``.

    Returns ``model`` itself for "none", or when compiling cannot run here (one warning line
    saying why: :func:`compile_unavailable`). Compilation happens at the first calls.
    """
    if mode == "none":
        return model
    options = inductor_options(mode)
    reason = compile_unavailable(device)
    if reason is not None:
        logger.warning("torch.compile is unavailable (%s): running eagerly", reason)
        return model
    set_block_compile(model, mode)
    return torch.compile(model, options=options)


def set_block_compile(model: nn.Module, mode: str) -> None:
    """Every PrunedViT in ``model`` runs its blocks in ``mode`` from now on (its public
    switch ``compile_blocks``; "none": eagerly)."""
    for m in model.modules():
        if hasattr(m, "compile_blocks"):
            m.compile_blocks(mode)
