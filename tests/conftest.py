"""Shared test set-up: a missing Detectron2 is a failure with a clear message, never a skip."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "TokenPrune"))

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only on a broken environment
    raise RuntimeError(
        "Detectron2 is not installed in this environment; install it following "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    ) from e
