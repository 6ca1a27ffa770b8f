"""Checkpoint loading for token-pruned models, from the three real sources.

:class:`TokenPruneCheckpointer` is Detectron2's ``DetectionCheckpointer`` (model-zoo
``.pkl`` files of numpy arrays, ``?matching_heuristics=True`` for pretrains with other key
names, the project's own ``.pth``) plus three rules:

* relative-position tables (``*.rel_pos_h`` / ``*.rel_pos_w``, shape (2 * size - 1,
  head_dim)) and the absolute position embedding (``pos_embed``, (1, [1 +] h * w, C)) whose
  length differs from the model's are resized (linear / bicubic) instead of skipped, the way
  ViTDet resizes them at run time: a windowed ViTDet checkpoint (tables for 14x14 windows)
  initialises SViT's global blocks, an MAE pretrain of another image size fits;
* name matching never considers the gates (``gates.*``), which no pretrain holds: MAE's
  final ``norm.*`` would otherwise match every ``MLPGate.norm`` and Detectron2 raises;
* every load leaves a :class:`LoadReport` (what was loaded, resized, left new, unused).

:func:`check_backbone_loaded` turns a report into an error when a ViT backbone tensor other
than the gates was left at its initialisation, :func:`check_gates_loaded` when the gates
(SViT) or pruning decoders (VLTP) were (inference). :func:`load_model` (build the config's
model, load and check ``train.init_checkpoint``, print the load summary) is the one way the
tools, the study and the predictor get a model with its weights.
"""
from __future__ import annotations

import io
import logging
import math
import os
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.config import instantiate
from detectron2.modeling.backbone.vit import ViT

from .errors import CheckpointError, ConfigError, DeviceError
from .modeling.attention import resize_rel_pos
from .modeling.autocast import autocast_model

__all__ = ["TokenPruneCheckpointer", "LoadReport", "check_backbone_loaded", "check_gates_loaded",
           "is_resizable", "resize_to", "check_device", "build_model", "local_checkpoint_file",
           "verify_checkpoint",
           "load_model"]

# Model buffers Detectron2 fills from the config, not from checkpoints.
_CONFIG_BUFFERS = ("pixel_mean", "pixel_std")


def _is_gate_key(key: str) -> bool:
    return key.startswith("gates.") or ".gates." in key


def _grid_tokens(n: int) -> Optional[tuple]:
    """n position-embedding rows -> (has_cls_token, side) if they form a square grid."""
    for cls in (0, 1):
        side = math.isqrt(n - cls)
        if side * side == n - cls and side > 0:
            return bool(cls), side
    return None


def is_resizable(key: str, saved: torch.Size, wanted: torch.Size) -> bool:
    """True for a position table that differs from the model's only in its token count."""
    saved, wanted = tuple(saved), tuple(wanted)
    if key.endswith(("rel_pos_h", "rel_pos_w")):
        return len(saved) == len(wanted) == 2 and saved[1] == wanted[1]
    if key == "pos_embed" or key.endswith(".pos_embed"):
        return (len(saved) == len(wanted) == 3 and saved[0] == wanted[0] == 1
                and saved[2] == wanted[2] and _grid_tokens(saved[1]) is not None
                and _grid_tokens(wanted[1]) is not None)
    return False


def resize_to(key: str, table: torch.Tensor, wanted: torch.Size) -> torch.Tensor:
    """Resize a position table accepted by :func:`is_resizable` to the shape ``wanted``.

    rel-pos (L, C) -> (L', C) linearly along L; pos_embed (1, [1 +] s * s, C) ->
    (1, [1 +] s' * s', C) bicubically on the grid, the class token kept (or dropped, or
    zero-filled) as the model wants.
    """
    dtype = table.dtype
    if key.endswith(("rel_pos_h", "rel_pos_w")):
        return resize_rel_pos(table.float(), wanted[0]).to(dtype)
    (saved_cls, side), (want_cls, want_side) = _grid_tokens(table.shape[1]), \
        _grid_tokens(wanted[1])
    C = table.shape[2]
    grid = table[:, int(saved_cls):].reshape(1, side, side, C).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(want_side, want_side), mode="bicubic", align_corners=False)
    out = grid.permute(0, 2, 3, 1).reshape(1, want_side * want_side, C).to(dtype)
    if want_cls:
        cls = table[:, :1] if saved_cls else table.new_zeros(1, 1, C)
        out = torch.cat([cls, out], dim=1)
    return out


@dataclass
class LoadReport:
    """What one checkpoint load did to the model (keys are the model's)."""

    path: str = ""
    loaded: List[str] = field(default_factory=list)
    resized: List[str] = field(default_factory=list)  # a subset of ``loaded``
    new: List[str] = field(default_factory=list)  # left at their initialisation
    unused: List[str] = field(default_factory=list)  # checkpoint keys not loaded
    mismatched: List[tuple] = field(default_factory=list)  # (key, checkpoint shape, model shape)
    has_rel_pos: bool = False  # the checkpoint holds relative-position tables

    def summary(self, limit: int = 12) -> str:
        """One line: counts and the first few names of each kind (modules, not tensors)."""
        def names(keys: List[str]) -> str:
            mods = sorted({k.rsplit(".", 1)[0] for k in keys})
            more = f", ... ({len(mods) - limit} more)" if len(mods) > limit else ""
            return ", ".join(mods[:limit]) + more

        parts = [f"{self.path}: loaded {len(self.loaded)} model tensors"]
        if self.resized:
            parts.append(f"resized {len(self.resized)} ({names(self.resized)})")
        parts.append(f"new {len(self.new)}" + (f" ({names(self.new)})" if self.new else ""))
        if self.unused:
            parts.append(f"unused from the checkpoint {len(self.unused)} ({names(self.unused)})")
        return "; ".join(parts)


class TokenPruneCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that resizes position tables, never name-matches the gates,
    and records a :class:`LoadReport` of its last load in ``last_report``."""

    last_report: Optional[LoadReport] = None

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        self._loading_path = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint: Dict[str, Any]):
        state = checkpoint["model"]
        for key, value in list(state.items()):
            if isinstance(value, np.ndarray):  # model-zoo .pkl files hold numpy arrays
                state[key] = torch.from_numpy(value)
        own = self.model.state_dict()
        has_rel_pos = any(k.endswith(("rel_pos_h", "rel_pos_w")) for k in state)
        resized: List[str] = []
        unmatched: List[str] = []
        if checkpoint.pop("matching_heuristics", False):
            candidates = {k: v for k, v in own.items() if not _is_gate_key(k)}
            aligned = align_and_update_state_dicts(
                candidates, state, c2_conversion=checkpoint.get("__author__") == "Caffe2")
            # the heuristics skip tables of another size: match those by suffix and resize
            for key in [k for k in candidates if k not in aligned]:
                match = max((k for k in state if key == k or key.endswith("." + k)),
                            key=len, default=None)
                if match is not None and is_resizable(key, state[match].shape, own[key].shape):
                    aligned[key] = state[match]
            unmatched = [k for k in state
                         if not any(m == k or m.endswith("." + k) for m in aligned)]
            state = checkpoint["model"] = aligned
        for key, value in list(state.items()):
            if key in own and value.shape != own[key].shape \
                    and is_resizable(key, value.shape, own[key].shape):
                self.logger.info(f"Resizing {key} from {tuple(value.shape)} to "
                                 f"{tuple(own[key].shape)}")
                state[key] = resize_to(key, value, own[key].shape)
                resized.append(key)
        incompatible = super()._load_model(checkpoint)
        wrong = {k for k, *_ in incompatible.incorrect_shapes}
        new = [k for k in incompatible.missing_keys if k.rsplit(".", 1)[-1] not in _CONFIG_BUFFERS]
        self.last_report = LoadReport(
            path=getattr(self, "_loading_path", ""),
            loaded=[k for k in own if k in state and k not in wrong],
            resized=resized, new=new, mismatched=list(incompatible.incorrect_shapes),
            unused=sorted(set(incompatible.unexpected_keys) | wrong | set(unmatched)),
            has_rel_pos=has_rel_pos,
        )
        return incompatible


def _vit_prefix(model: torch.nn.Module) -> Optional[str]:
    """State-dict prefix of the model's ViTDet ``ViT`` backbone ('' for the ViT itself)."""
    for name, module in model.named_modules():
        if isinstance(module, ViT):
            return name + "." if name else ""
    return None


def check_backbone_loaded(model: torch.nn.Module, report: LoadReport) -> None:
    """Raise CheckpointError if a ViT backbone tensor was left at its initialisation.

    Only the gates (``gates.*``) may be new, and the relative-position tables when the
    checkpoint holds none at all (an MAE pretrain: ViTDet starts them at zero).
    """
    prefix = _vit_prefix(model)
    if prefix is None:
        return
    left = [k for k in report.new if k.startswith(prefix) and not _is_gate_key(k)
            and not (not report.has_rel_pos and k.endswith(("rel_pos_h", "rel_pos_w")))]
    if left:
        raise CheckpointError(
            f"checkpoint {report.path} leaves {len(left)} backbone tensors at their "
            f"initialisation (only gates.* may be new), e.g. {left[0]}; "
            f"unused checkpoint tensors: {len(report.unused)}"
            + (f", e.g. {report.unused[0]}" if report.unused else ""))


def check_gates_loaded(report: LoadReport) -> None:
    """Raise CheckpointError if the checkpoint left gates (SViT's gates, VLTP's pruning
    decoders: ``gates.*``) at their initialisation: at inference they would prune at random."""
    new = [k for k in report.new if _is_gate_key(k)]
    if new:
        module = new[0].rsplit(".", 1)[0]
        raise CheckpointError(
            f"checkpoint {report.path} holds no weights for {len(new)} gate tensors of the "
            f"pruned model (e.g. {module}): untrained gates prune at random; load a "
            f"fine-tuned checkpoint, or pass --allow-untrained-gates "
            f"(Python: allow_untrained_gates=True) if that is meant")


def check_device(device: str, name: str = "device") -> None:
    """DeviceError unless this machine has ``device`` ("cpu", "cuda", "cuda:1", ...);
    ``name``: how the caller's user gave it ("train.device", "--device")."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"{name}={device}: not a device (cpu, cuda, cuda:N)") from e
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        why = "built without CUDA" if torch.version.cuda is None else "finds no GPU"
        raise DeviceError(f"{name}={device}: CUDA is not available on this machine (PyTorch "
                          f"{torch.__version__} {why}); use {name}=cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"{name}={device}: this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """Instantiate ``cfg.model`` on ``train.device`` (checked by :func:`check_device`); a
    model argument out of its range (a ValueError of a constructor, e.g.
    ``keep_ratios=1.5``) is a ConfigError."""
    check_device(cfg.train.device, "train.device")
    try:
        model = instantiate(cfg.model)
    except ValueError as e:
        raise ConfigError(f"bad model argument: {' '.join(str(e).split())}") from e
    return model.to(cfg.train.device)


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def local_checkpoint_file(path: str) -> str:
    """The local file of checkpoint ``path``: its query (``?matching_heuristics=True``)
    stripped, a remote file (``detectron2://``, ``https://``) fetched into the cache.

    Raises CheckpointError if the file does not exist or cannot be fetched.
    """
    from detectron2.utils.file_io import PathManager

    file = urlparse(path)._replace(query="").geturl()
    if "://" in file:
        try:  # iopath's progress bar and error log would make a failure several lines
            with _quiet_logging(), redirect_stderr(io.StringIO()):
                file = PathManager.get_local_path(file)
        except Exception as e:
            raise CheckpointError(f"cannot fetch checkpoint {path}: {_one_line(e)}") from e
    if not os.path.isfile(file):
        raise CheckpointError(f"checkpoint not found: {path}")
    return file


@contextmanager
def _quiet_logging():
    """No log records: before ``default_setup`` they would reach stderr unformatted."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def verify_checkpoint(model: torch.nn.Module, path: str, *, strict: bool,
                      require_gates: bool = False) -> Optional[LoadReport]:
    """Load checkpoint ``path`` into ``model`` (weights only) and check that it fits.

    Returns the :class:`~tokenprune.checkpoint.LoadReport` (None when ``path`` is empty).
    Raises CheckpointError for a missing, unfetchable or unreadable file, a file none of
    whose tensors fits the model, with ``require_gates`` (inference) for gates the file
    lacks (:func:`check_gates_loaded`), or (``strict``, e.g. for evaluation) any other model
    tensor the file lacks or holds in another shape. Without ``strict`` (initialising a
    fine-tune from a dense model or a pretrain) tensors of another shape are skipped like
    Detectron2 does (e.g. heads for another class count), but no ViT backbone tensor other
    than the gates may be left at its initialisation (:func:`check_backbone_loaded`).
    Position tables of another size are resized on loading.
    """
    if not path:
        return None
    local_checkpoint_file(path)
    checkpointer = TokenPruneCheckpointer(model)
    try:
        with _quiet_logging():
            checkpointer.load(path, checkpointables=[])
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {_one_line(e)}") from e
    report = checkpointer.last_report
    if report is None:
        raise CheckpointError(f"checkpoint {path} holds no model state dict")
    if not report.loaded:
        raise CheckpointError(f"checkpoint {path} does not match the model: none of its "
                              f"{len(report.unused)} tensors fits {type(model).__name__}")
    if require_gates:
        check_gates_loaded(report)
    new = [k for k in report.new if not _is_gate_key(k)]  # new gates: checked above, or meant
    if strict and new:
        bad = report.mismatched[0] if report.mismatched else None
        example = (f"{bad[0]} {tuple(bad[1])} vs {tuple(bad[2])}" if bad
                   else f"{new[0]} is missing")
        raise CheckpointError(f"checkpoint {path} does not match the model: "
                              f"{len(report.mismatched)} tensors differ in shape and "
                              f"{len(new) - len(report.mismatched)} are missing, "
                              f"e.g. {example}")
    if not strict:
        check_backbone_loaded(model, report)
    return report


def load_model(cfg: DictConfig, device: Optional[str] = None, precision: Optional[str] = None,
               strict: bool = False, *,
               allow_untrained_gates: bool = False) -> torch.nn.Module:
    """The config's model in eval mode for inference, ``train.init_checkpoint`` loaded.

    Prints the load summary (:meth:`LoadReport.summary`: loaded / resized / new tensors).
    Raises CheckpointError when no checkpoint is set, or when the checkpoint lacks the gates
    of a pruned model (:func:`check_gates_loaded`), unless ``allow_untrained_gates``: then
    the gates may be new, and without a checkpoint every weight is random (fine for FLOPs
    and latency). ``device`` overrides ``cfg.train.device``. ``precision`` ("bfloat16",
    "float16"; None or "float32": off) runs the forward pass under autocast
    (:class:`~tokenprune.modeling.autocast.AutocastModel`, which forwards attribute look-ups
    to the model). ``strict``: every model tensor other than the gates must come from the
    checkpoint (see :func:`verify_checkpoint`; for evaluating a trained model).
    """
    if device:
        cfg.train.device = device
    model = build_model(cfg)  # first: a bad device or model argument is the error to show
    path = cfg.train.init_checkpoint
    if not path and not allow_untrained_gates:
        raise CheckpointError("no checkpoint: set train.init_checkpoint=PATH (or --checkpoint "
                              "FILE); random weights only with --allow-untrained-gates "
                              "(Python: allow_untrained_gates=True)")
    report = verify_checkpoint(model, path, strict=strict,
                               require_gates=not allow_untrained_gates)
    print(report.summary() if report else "no checkpoint: random weights "
          "(untrained gates allowed)", flush=True)
    return autocast_model(model.eval(), precision, cfg.train.device).eval()
