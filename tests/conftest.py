"""Shared test set-up.

* A missing Detectron2 is a failure with a clear message, never a skip.
* ``train_net_module`` (train_net.py loaded as a module) and ``train_in_process`` (its
  ``main`` run in this process, as ``launch()`` runs it with one process): the tests train
  in-process; one subprocess test per real entry point.
* ``gated_checkpoint``: weights of the tiny SViT model whose gates prune on their own;
  ``gateless_checkpoint``: the same without the gates (refused at inference).
* Generated datasets go to a per-run temporary folder (``TOKENPRUNE_DATA``, shared by the
  pytest-xdist workers of one run), and
  Detectron2's dataset root (``DETECTRON2_DATASETS``, read when Detectron2 is imported) is an
  empty one, both inherited by the subprocesses the tests start: tests never touch the
  user's data, and a COCO dataset is missing in-process as in a subprocess.
"""
import importlib.util
import logging
import os
import sys
import tempfile
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "TokenPrune"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # make test's workers share one data folder:
# generation is deterministic and every file is written atomically, so a dataset two workers
# generate at once comes out the same, and each is generated once per run, not per worker
os.environ["TOKENPRUNE_DATA"] = (os.path.join(tempfile.gettempdir(), f"tokenprune-test-data-{_RUN}")
                                 if _RUN else tempfile.mkdtemp(prefix="tokenprune-test-data-"))
os.environ["DETECTRON2_DATASETS"] = tempfile.mkdtemp(prefix="tokenprune-test-datasets-")

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only on a broken environment
    raise RuntimeError(
        "Detectron2 is not installed in this environment; install it following "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    ) from e


import torch  # noqa: E402  (after the check above, which names Detectron2 when it is missing)

if os.environ.get("PYTEST_XDIST_WORKER"):  # make test: 2 workers on the cores, one thread each
    torch.set_num_threads(1)

_LOGGERS = ("detectron2", "fvcore", "d2")


@pytest.fixture(scope="session")
def train_net_module():
    """train_net.py loaded as a module, for in-process runs of its entry point."""
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(ROOT, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def train_in_process(train_net_module):
    """``run(config, opts, *flags)``: ``train_net.py --config-file config *flags *opts`` in
    this process; returns the warnings it raised. Restores what a run changes: the torch
    settings, the environment (PYTHONHASHSEED, CUBLAS_WORKSPACE_CONFIG) and the loggers'
    handlers (its console handler writes to the test's captured stdout)."""
    threads, algorithms = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    handlers = {name: list(logging.getLogger(name).handlers) for name in _LOGGERS}
    environ = dict(os.environ)

    def run(config, opts, *flags):
        args = train_net_module.argument_parser().parse_args(
            ["--config-file", config, *flags, *opts])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_net_module.main(args)
        return [str(w.message) for w in caught]

    yield run
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(algorithms)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
    os.environ.clear()
    os.environ.update(environ)
    for name, kept in handlers.items():
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if h not in kept]:
            logger.removeHandler(handler)
            handler.close()


@pytest.fixture(scope="session")
def gated_checkpoint(tmp_path_factory) -> str:
    """A checkpoint of the tiny SViT model (helpers.TINY_SVIT), random weights, its gates
    made to prune some tokens on their own (helpers.prune_some)."""
    from detectron2.config import instantiate

    from helpers import SVIT_CFG, TINY_SVIT, prune_some
    from tokenprune.config import load_config

    torch.manual_seed(0)
    model = instantiate(load_config(SVIT_CFG, TINY_SVIT).model)
    prune_some(model)
    path = tmp_path_factory.mktemp("ckpt") / "gated.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="session")
def gateless_checkpoint(gated_checkpoint, tmp_path_factory) -> str:
    """``gated_checkpoint`` without its gate tensors: a pruned model whose gates are new."""
    state = torch.load(gated_checkpoint, weights_only=False)["model"]
    path = tmp_path_factory.mktemp("ckpt") / "gateless.pth"
    torch.save({"model": {k: v for k, v in state.items() if ".gates." not in k}}, path)
    return str(path)
