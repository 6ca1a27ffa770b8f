"""Shared test set-up.

* A missing Detectron2 is a failure with a clear message, never a skip.
* Generated datasets go to a per-session temporary folder (``TOKENPRUNE_DATA``), and
  Detectron2's dataset root (``DETECTRON2_DATASETS``, read when Detectron2 is imported) is an
  empty one, both inherited by the subprocesses the tests start: tests never touch the
  user's data, and a COCO dataset is missing in-process as in a subprocess.
"""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "TokenPrune"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ["TOKENPRUNE_DATA"] = tempfile.mkdtemp(prefix="tokenprune-test-data-")
os.environ["DETECTRON2_DATASETS"] = tempfile.mkdtemp(prefix="tokenprune-test-datasets-")

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only on a broken environment
    raise RuntimeError(
        "Detectron2 is not installed in this environment; install it following "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    ) from e
