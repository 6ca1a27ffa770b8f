"""The package's shape: the import-linter contract (setup.cfg's [importlinter]), module and
function sizes, and no monkeypatching of project code."""
import ast
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_ROOT = os.path.join(REPO, "projects", "TokenPrune")
PACKAGE = os.path.join(PACKAGE_ROOT, "tokenprune")
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def _lint_imports(package_root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=package_root)
    return subprocess.run([LINT_IMPORTS, "--config", os.path.join(REPO, "setup.cfg"),
                           "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_contract_is_kept():
    proc = _lint_imports(PACKAGE_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("module,line,broken", [
    ("engine/hooks.py", "from ..tools import common", "tokenprune.engine.hooks -> tokenprune.tools"),
    ("analysis/timing.py", "import argparse", "tokenprune.analysis.timing -> argparse"),
], ids=["engine_imports_a_tool", "analysis_imports_argparse"])
def test_import_contract_breaks(tmp_path, module, line, broken):
    """A copy of the package with one forbidden import added breaks the contract."""
    copy = tmp_path / "tokenprune"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    proc = _lint_imports(str(tmp_path))
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and broken in proc.stdout.replace("\n", " "), \
        proc.stdout[-3000:]


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: os.path.relpath(p, PACKAGE))
def test_modules_and_functions_are_small(path):
    with open(path) as f:
        source = f.read()
    assert source.count("\n") <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            length = node.end_lineno - start + 1
            assert length <= MAX_FUNCTION_LINES, f"{node.name} has {length} lines"


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: os.path.relpath(p, PACKAGE))
def test_no_monkeypatching(path):
    with open(path) as f:
        lines = f.read().splitlines()
    patched = [f"{i}: {line}" for i, line in enumerate(lines, 1)
               if re.search(r"setattr|\.forward =", line)]
    assert not patched
