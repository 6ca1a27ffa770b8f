"""Set-up: every module imports, every import is declared, make stops with the manual command.

The environment is shared by every checkout on a machine, so the package itself must not be
installed into it: each checkout's ``make`` puts its own ``projects/TokenPrune`` on the path.
"""
import ast
import configparser
import glob
import importlib
import importlib.metadata
import os
import pkgutil
import re
import subprocess
import sys
import time

import pytest

from helpers import ROOT

import tokenprune

# installed by the Makefile from its own source, not through setup.cfg
NOT_IN_SETUP_CFG = {"detectron2"}


def _project_files():
    package = os.path.join(ROOT, "projects", "TokenPrune", "tokenprune")
    return (glob.glob(os.path.join(package, "**", "*.py"), recursive=True)
            + glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
            + [os.path.join(ROOT, "train_net.py")])


def _absolute_imports():
    """Every absolute module name the project's files import, at any depth of the code."""
    names = set()
    for path in _project_files():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module)
    return sorted(names)


def _declared_distributions():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = cfg["options"]["install_requires"] + cfg["options.extras_require"]["text"]
    return {re.split(r"[<>=!~\[; ]", ln.strip())[0].lower().replace("_", "-")
            for ln in lines.splitlines() if ln.strip()}


def test_every_module_of_the_package_imports():
    modules = [m.name for m in pkgutil.walk_packages(tokenprune.__path__, "tokenprune.")]
    assert "tokenprune.modeling.pruned_vit" in modules
    for name in modules:
        importlib.import_module(name)


@pytest.mark.parametrize("name", _absolute_imports())
def test_every_import_in_the_project_resolves(name):
    # imports inside functions included: Detectron2's Visualizer needs OpenCV (cv2), which
    # Detectron2 does not declare, and is imported only when a tool draws
    importlib.import_module(name)


def test_every_third_party_import_is_declared():
    owners = importlib.metadata.packages_distributions()
    declared = _declared_distributions()
    missing = {}
    for name in _absolute_imports():
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in NOT_IN_SETUP_CFG or top == "tokenprune":
            continue
        dists = {d.lower().replace("_", "-") for d in owners.get(top, [])}
        if not dists & declared:
            missing[top] = sorted(dists)
    assert not missing, f"imported but not declared in setup.cfg: {missing}"
    assert "opencv-python-headless" in declared  # Detectron2's Visualizer needs it


def test_the_environment_holds_no_copy_of_the_package():
    # a copy installed into the shared environment would be one checkout's code for all
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", "import tokenprune"], cwd="/", env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "No module named 'tokenprune'" in proc.stderr
    assert os.path.dirname(tokenprune.__file__) == os.path.join(
        ROOT, "projects", "TokenPrune", "tokenprune")


@pytest.mark.parametrize("target", ["demo", "test"])
def test_make_stops_with_the_manual_install_command(target, tmp_path):
    venv = tmp_path / "venv"
    # an environment without Detectron2 (and without pip, to keep the test quick)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    start = time.time()
    proc = subprocess.run(["make", "-s", target], cwd=ROOT, text=True, capture_output=True,
                          env={**os.environ, "TOKENPRUNE_VENV": str(venv),
                               "DETECTRON2_SRC": str(tmp_path / "no-such-checkout")},
                          timeout=120)
    assert proc.returncode != 0
    assert time.time() - start < 60
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "is not a Detectron2 checkout" in errors[0]
    assert f"{venv}/bin/python -m pip install" in errors[0]  # the exact manual command
    assert "--no-build-isolation" in errors[0]


def test_ci_runs_the_readme_test_command_in_a_new_environment():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    assert "make test" in readme and ci[-1] == "make test"
    assert any(ln.startswith("export TOKENPRUNE_VENV=") and "mktemp -d" in ln for ln in ci)
