"""What the benchmark measures: :class:`BenchmarkOptions`, built by
``tokenprune.tools.benchmark`` from its flags and read by :mod:`.benchmark`,
:mod:`.benchmark_report`, :mod:`.benchmark_memory` and :mod:`.memory_probe` (as JSON)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..checkpoint import check_device
from ..errors import ConfigError, InputError
from ..modeling.attention import DEFAULT_ATTENTION
from ..modeling.autocast import amp_dtype
from ..modeling.compiled import checked_compile_mode, compile_unavailable

__all__ = ["BenchmarkOptions"]


@dataclass(frozen=True)
class BenchmarkOptions:
    """The benchmark's settings (the flags of ``tokenprune.tools.benchmark``, same names).

    Attributes:
        config_file, overrides: the LazyConfig and its ``key=value`` overrides.
        sweep: uniform forced keep ratios, one variant each, in (0, 1].
        keep_ratio: one forced variant: one ratio for every pruned block or one per block.
        schedule: "svit": also the config's per-block targets; None: not.
        device: "cpu" or "cuda[:N]". precision: "float32", "bfloat16" or "float16".
        input_size: square input side in pixels; None: the model's ``square_pad``.
        batch_sizes: measured in turn. attention: kernels of the pruned variants.
        threads: ``torch.set_num_threads``; None: PyTorch's choice.
        repeats, warmup: timed and untimed rounds. weights: "random" or "checkpoint".
        backbone_only: time the ViT only. memory: "tensors", "rss" or "off".
        profile: also profile one forward per variant. prompt, task_id: model inputs.
        allow_untrained_gates: a pruned config's checkpoint may lack its gates.
        compile: modes of ``tokenprune.modeling.compiled.COMPILE_MODES``, every variant in
            each. images: distinct seeded images; round r runs image ``r % images``.
    """

    config_file: str
    overrides: Tuple[str, ...] = ()
    sweep: Tuple[float, ...] = ()
    keep_ratio: Tuple[float, ...] = ()
    schedule: Optional[str] = None
    device: str = "cpu"
    precision: str = "float32"
    input_size: Optional[int] = None
    batch_sizes: Tuple[int, ...] = (1,)
    attention: Tuple[str, ...] = (DEFAULT_ATTENTION,)
    threads: Optional[int] = None
    repeats: int = 5
    warmup: int = 3
    weights: str = "random"
    backbone_only: bool = False
    memory: str = "tensors"
    profile: bool = False
    prompt: Optional[str] = None
    task_id: Optional[int] = None
    allow_untrained_gates: bool = False
    compile: Tuple[str, ...] = ("none",)
    images: int = 1

    def check(self) -> None:
        """InputError for settings out of range, DeviceError for a device this machine
        lacks (before anything is built)."""
        for r in self.sweep + self.keep_ratio:
            if not (0.0 < r <= 1.0) or math.isnan(r):
                raise InputError(f"keep ratio {r:g} is outside (0, 1]")
        compiled = any(m != "none" for m in self.compile)
        for name, value, low in (("--repeats", self.repeats, 1),
                                 ("--warmup", self.warmup, 1 if compiled else 0),
                                 ("--batch-size", min(self.batch_sizes), 1),
                                 ("--images", self.images, 1)):
            if value < low:
                raise InputError(f"{name} must be at least {low}, got {value}"
                                 + (" (--compile compiles in the warm-up rounds)"
                                    if name == "--warmup" else ""))
        for mode in self.compile:
            try:
                checked_compile_mode(mode, "--compile")
            except ValueError as e:
                raise InputError(str(e)) from None
        reason = compile_unavailable(self.device) if compiled else None
        if reason is not None:
            raise InputError(f"--compile: {reason}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be at least 1, got {self.threads}")
        if self.input_size is not None and self.input_size <= 0:
            raise InputError(f"--input-size must be positive, got {self.input_size}")
        check_device(self.device, "--device")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise InputError(f"--device must be cpu or cuda[:N], got {self.device}")
        if self.memory == "rss" and self.device != "cpu":
            raise InputError("--memory rss measures a CPU process; use --memory tensors on CUDA")
        if self.precision != "float32":
            try:
                amp_dtype(self.precision, self.device)
            except ConfigError as e:
                raise InputError(f"--precision {self.precision}: {e}") from None

    def to_json(self) -> Dict[str, Any]:
        """A dict for ``json.dumps``; :meth:`from_json` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "BenchmarkOptions":
        tuples = {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("Tuple")}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})
