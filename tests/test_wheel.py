"""The package as a user installs it: a wheel built from setup.cfg, installed into a fresh
virtual environment (``--no-deps``; the dependencies come from this test environment's
site-packages through a ``.pth`` file), used from a folder outside the checkout: every
module and config file is in the wheel, a console script starts, and the quick ablation
finds its configs inside the installed package."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "projects", "TokenPrune", "tokenprune")
CONFIGS = os.path.join(ROOT, "configs")

RESOLVE_QUICK_CONFIGS = """
import os, sys
import tokenprune
from tokenprune.study.variants import SCALES, VARIANTS, study_configs, variant_config

site = os.path.dirname(os.path.dirname(os.path.abspath(tokenprune.__file__)))
assert site == sys.argv[1], (site, sys.argv[1])
for path in study_configs():
    assert path.startswith(os.path.join(site, "tokenprune", "configs")), path
for name in ("dense", "svit"):
    variant = next(v for v in VARIANTS if v.name == name)
    net = variant_config(variant, SCALES["quick"]).model.backbone.net
    print(name, net.depth, net.embed_dim)
"""


def _files(folder, relative_to):
    return {os.path.relpath(os.path.join(d, n), relative_to).replace(os.sep, "/")
            for d, _, names in os.walk(folder) for n in names if n.endswith(".py")}


def _run(cmd, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not the checkout
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240, **kw)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site-packages, bin folder) of a fresh venv with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: the build writes egg-info and build/ into its source tree
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(CONFIGS, src / "configs", ignore=skip)
    shutil.copytree(PACKAGE, src / "projects" / "TokenPrune" / "tokenprune", ignore=skip)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", tmp / "dist", "."], cwd=src)
    (wheel,) = (tmp / "dist").glob("tokenprune-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                cwd=tmp).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]  # addsitedir: its own .pth files count too
    with open(os.path.join(site, "test_env.pth"), "w") as f:
        f.write(f"import site; site.addsitedir({ours!r})\n")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp)
    return wheel, site, venv / "bin"


def test_the_wheel_holds_every_module_and_config(installed):
    wheel = installed[0]
    with zipfile.ZipFile(wheel) as z:
        names = {n for n in z.namelist() if n.endswith(".py")}
    expected = {f"tokenprune/{p}" for p in _files(PACKAGE, PACKAGE)}
    expected |= {f"tokenprune/configs/{p}" for p in _files(CONFIGS, CONFIGS)}
    assert expected - names == set()
    assert names - expected == set()


def test_console_script_and_quick_configs_outside_the_checkout(installed, tmp_path):
    _, site, bin_dir = installed
    assert (bin_dir / "tokenprune-ablation").is_file()
    assert (bin_dir / "tokenprune-tradeoff").is_file()
    proc = _run([bin_dir / "tokenprune-ablation", "--help"], cwd=tmp_path)
    assert proc.stdout.startswith("usage:") and "--dense-config" in proc.stdout
    proc = _run([bin_dir / "python", "-c", RESOLVE_QUICK_CONFIGS, site], cwd=tmp_path)
    assert proc.stdout.split("\n")[:2] == ["dense 4 64", "svit 4 64"], proc.stdout
