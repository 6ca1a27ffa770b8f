"""The README commands stop at once, with the install guide, when Detectron2 is missing."""
import os
import subprocess
import sys
import time

import pytest

from helpers import ROOT


@pytest.mark.parametrize("target", ["demo", "test"])
def test_make_fails_fast_without_detectron2(target, tmp_path):
    venv = tmp_path / "venv"
    # an environment without Detectron2 (and without pip, to keep the test quick)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    start = time.time()
    proc = subprocess.run(["make", "-s", target], cwd=ROOT, text=True, capture_output=True,
                          env={**os.environ, "TOKENPRUNE_VENV": str(venv)}, timeout=120)
    assert proc.returncode != 0
    assert time.time() - start < 60
    assert "Detectron2 is not installed" in proc.stderr
    assert "https://detectron2.readthedocs.io/en/latest/tutorials/install.html" in proc.stderr
    assert "v0.6" in proc.stderr


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    assert "make test" in readme and ci[-1] == "make test"
