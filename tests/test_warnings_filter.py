"""The commands show their own output: the dependencies' FutureWarning / DeprecationWarning /
UserWarning hidden (tokenprune.tools.warnings_filter), the project's own shown; ``--verbose``
on every command and a user's ``PYTHONWARNINGS`` show them. (The demo's real run, with no
warning on stderr: tests/test_demo.py.)"""
import logging
import warnings

import pytest

from tokenprune.tools import (ablation, benchmark, benchmark_summary, demo, flops, tradeoff,
                              visualize, warnings_filter)
from tokenprune.tools.common import run_tool, tool_parser

THIRD_PARTY = ["timm.models.layers", "torch.jit._script", "torch.functional", "pkg_resources",
               "fvcore.nn.jit_handles", "iopath.common.file_io", "detectron2.modeling"]
OWN = ["tokenprune.modeling.pruned_vit", "tokenprune", "__main__"]
CATEGORIES = [FutureWarning, DeprecationWarning, UserWarning]


def _warn(module, category):
    warnings.warn_explicit(f"from {module}", category, f"{module}.py", 1, module=module,
                           registry={})


def _shown(setup, cases):
    """Which (module, category) of ``cases`` are shown after ``setup()``, everything shown
    before it."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        setup()
        for module, category in cases:
            _warn(module, category)
    return {(str(w.message)[len("from "):], w.category) for w in seen}


ALL = [(m, c) for m in THIRD_PARTY + OWN for c in CATEGORIES]


@pytest.fixture(autouse=True)
def _no_user_setting(monkeypatch):
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)


def test_third_party_hidden_own_shown():
    assert _shown(warnings_filter.hide_third_party_warnings, ALL) == {
        (m, c) for m in OWN for c in CATEGORIES}
    # other categories are not the filter's business
    assert _shown(warnings_filter.hide_third_party_warnings,
                  [("timm.models.layers", RuntimeWarning)]) == {("timm.models.layers",
                                                                 RuntimeWarning)}


def test_verbose_or_pythonwarnings_shows_everything(monkeypatch):
    assert _shown(lambda: warnings_filter.hide_third_party_warnings(["--verbose"]), ALL) == set(ALL)
    assert _shown(lambda: (warnings_filter.hide_third_party_warnings(),
                           warnings_filter.show_third_party_warnings()), ALL) == set(ALL)
    monkeypatch.setenv("PYTHONWARNINGS", "default")
    assert warnings_filter.hide_third_party_warnings() is False
    assert _shown(warnings_filter.hide_third_party_warnings, ALL) == set(ALL)


def test_third_party_logged_warnings_follow_the_filter():
    logger = logging.getLogger(warnings_filter.THIRD_PARTY_LOGGERS[0])
    try:
        warnings_filter.hide_third_party_warnings()
        assert not logger.isEnabledFor(logging.WARNING) and logger.isEnabledFor(logging.ERROR)
        warnings_filter.show_third_party_warnings()
        assert logger.isEnabledFor(logging.WARNING)
    finally:
        logger.setLevel(logging.NOTSET)


@pytest.mark.parametrize("verbose", [False, True])
def test_run_tool_follows_verbose(verbose):
    def main(args):
        for module, category in ALL:
            _warn(module, category)

    parser = tool_parser("prog", "a command", config=False)
    argv = ["--verbose"] if verbose else []
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        run_tool("prog", main, parser, argv)
    modules = {str(w.message)[len("from "):] for w in seen}
    assert modules == (set(THIRD_PARTY + OWN) if verbose else set(OWN))


@pytest.mark.parametrize("tool", [ablation, benchmark, benchmark_summary, demo, flops, tradeoff,
                                  visualize],
                         ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_every_command_has_verbose(tool):
    assert "--verbose" in tool.build_parser().format_help()


def test_verbose_after_the_overrides_is_the_flag_not_an_override():
    parser = tool_parser("prog", "a command")
    seen = run_tool("prog", lambda args: args, parser,
                    ["--config-file", "c.py", "train.max_iter=3", "--verbose", "train.seed=1"])
    assert seen.verbose and seen.opts == ["train.max_iter=3", "train.seed=1"]
