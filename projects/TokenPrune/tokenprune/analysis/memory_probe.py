"""One benchmark variant's resident-set peaks, measured in a fresh process.

    python -m tokenprune.analysis.memory_probe < request.json

The request (JSON on stdin, :func:`probe_request`): ``options`` (a
:class:`~.benchmark_options.BenchmarkOptions`), ``batch`` (images per forward) and
``variant`` (the key of one :class:`~.benchmark.BenchmarkVariant`). The probe builds the
benchmark's model and inputs as the benchmark does (same seeds), runs the variant once per
scope (:func:`.memory.resident_peaks`) and prints one line on stdout: :data:`PROBE_TAG`
followed by ``{"method": ..., "peaks": {scope: MiB}}``. :mod:`.benchmark_memory` starts it
once per variant for ``--memory rss``.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Dict

import torch

from ..config import load_config
from .benchmark import applied, for_batch, runner, setup
from .benchmark_options import BenchmarkOptions
from .memory import resident_peaks

__all__ = ["PROBE_TAG", "probe_request", "run_probe", "main"]

PROBE_TAG = "TOKENPRUNE_MEMORY_PROBE "


def probe_request(options: BenchmarkOptions, batch: int, variant: str) -> str:
    """The JSON request of one variant at batch size ``batch``."""
    return json.dumps({"options": options.to_json(), "batch": batch, "variant": variant})


def run_probe(request: Dict[str, Any]) -> Dict[str, Any]:
    """``{"method", "peaks"}`` of the request's variant, measured in this process."""
    options = BenchmarkOptions.from_json(request["options"])
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    cfg = load_config(options.config_file, options.overrides)
    bench = for_batch(setup(cfg, options), options, int(request["batch"]))
    (variant,) = [v for v in bench.variants if v.key == request["variant"]]
    with torch.no_grad(), applied(bench, variant):
        peaks, method = resident_peaks({s: runner(bench, variant, s) for s in bench.scopes})
    return {"method": method, "peaks": peaks}


def main() -> None:
    """Read the request from stdin, print the tagged result line."""
    print(PROBE_TAG + json.dumps(run_probe(json.load(sys.stdin))), flush=True)


if __name__ == "__main__":
    main()
