"""Reproducible runs: one ``train.seed`` fixes every random draw, ``train.deterministic``
fixes every floating-point sum.

Sources of run-to-run difference on a CPU and what is done about each:

* the model's initial weights: ``import torch`` seeds its generator from the OS, so a model
  built before Detectron2's ``default_setup`` seeds differs every run. :func:`seed_run` seeds
  before the model is built (``train.seed + rank``), and again when training starts, so the
  training draws do not depend on what ran between the two (checkpoint loading, FLOP counts);
* the sampler's order (Detectron2's ``TrainingSampler`` takes its seed from numpy's generator
  on rank 0), the dataloader workers (seeded from torch's generator when the loader starts),
  the augmentations (numpy / python ``random`` in the worker or the main process) and the
  gates' Gumbel noise (torch's generator): all follow from the seeding above;
* evaluation and FLOP counting during training: the test loader draws its worker seed from
  torch's generator, a random-gate model draws its scores, so an evaluation every N
  iterations (or FLOPs on rank 0 only) shifted every later RPN / ROI sample and Gumbel draw.
  They run inside :func:`rng_preserved`, so the training draws do not depend on
  ``train.eval_period`` or ``train.flops_period``;
* the number of intra-op threads: a parallel reduction splits its sum by thread count, so
  1 and 2 threads give different bits. ``train.num_threads`` fixes it (0: PyTorch's choice,
  the machine's core count);
* kernels: ``torch.use_deterministic_algorithms`` (``warn_only``: an op without a
  deterministic implementation warns instead of stopping the run; on a CPU none of the
  synthetic runs' ops warns), cuDNN's deterministic mode without autotuning, and cuBLAS's
  fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, set only where the environment has none).

Bit for bit holds on one machine and one install: the same seed on another machine (another
CPU, so other vectorised kernels; a fresh environment) gives other bits, and after 400
iterations other APs (docs/setup.md, ``make demo``). The OpenMP wait policy
(``OMP_WAIT_POLICY``) changes no bit.

``train.seed < 0`` draws a fresh seed each run (Detectron2's behaviour); a deterministic run
needs a seed >= 0 and a thread count >= 1 (:func:`check_determinism_config`).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig

from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..errors import ConfigError

__all__ = ["check_determinism_config", "configure_run", "rng_preserved", "rng_preserving",
           "seed_run"]

logger = logging.getLogger("detectron2")

_CUBLAS_WORKSPACE = ":4096:8"
_F = TypeVar("_F", bound=Callable)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_determinism_config(cfg: DictConfig) -> None:
    """Raise ConfigError for ``train.seed``, ``train.deterministic``, ``train.num_threads``
    out of their range."""
    seed = cfg.train.get("seed", -1)
    threads = cfg.train.get("num_threads", 0)
    deterministic = cfg.train.get("deterministic", False)
    if not _is_int(seed):
        raise ConfigError(f"train.seed must be an integer (< 0: a fresh seed each run), "
                          f"got {seed!r}")
    if not _is_int(threads) or threads < 0:
        raise ConfigError(f"train.num_threads must be an integer >= 0 (0: PyTorch's choice), "
                          f"got {threads!r}")
    if not isinstance(deterministic, bool):
        raise ConfigError(f"train.deterministic must be True or False, got {deterministic!r}")
    if deterministic and seed < 0:
        raise ConfigError(f"train.deterministic=True needs train.seed >= 0, got {seed}")
    if deterministic and threads == 0:
        raise ConfigError("train.deterministic=True needs a fixed train.num_threads >= 1 "
                          "(the float sums depend on the thread count)")


def seed_run(cfg: DictConfig) -> None:
    """Seed python, numpy and torch with ``train.seed + rank`` (nothing for a seed < 0)."""
    seed = cfg.train.get("seed", -1)
    if seed >= 0:
        seed_all_rng(seed + comm.get_rank())


def configure_run(cfg: DictConfig) -> None:
    """Before the model is built: the thread count, the deterministic kernels (with
    ``train.deterministic``) and the seeds. Off, PyTorch's defaults are left as they are."""
    threads = cfg.train.get("num_threads", 0)
    if threads:
        torch.set_num_threads(threads)
    if cfg.train.get("deterministic", False):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        logger.info(f"Deterministic run: seed {cfg.train.seed} (+ rank), "
                    f"{torch.get_num_threads()} threads, deterministic kernels")
    seed_run(cfg)


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run the body without moving python's, numpy's or torch's (CPU and CUDA) generators:
    their states are restored on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def rng_preserving(fn: _F) -> _F:
    """``fn`` run inside :func:`rng_preserved`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with rng_preserved():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
