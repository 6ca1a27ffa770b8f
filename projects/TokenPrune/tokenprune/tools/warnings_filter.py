"""The commands show their own output: the dependencies' warnings are off unless asked for.

``FutureWarning``, ``DeprecationWarning`` and ``UserWarning`` raised from any module outside
tokenprune (timm, torch.jit, torch.meshgrid, pkg_resources, fvcore, iopath, ...) are hidden,
and so are the warnings the dependencies log instead (:data:`THIRD_PARTY_LOGGERS`);
``--verbose`` on a command shows them, and a ``PYTHONWARNINGS`` set by the user is left in
charge. Standard library only, so that it can run before Detectron2 is imported (some of
its dependencies warn on import): ``tokenprune.tools`` installs it when it is imported, and
``train_net.py`` before its own imports.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Sequence

__all__ = ["THIRD_PARTY_CATEGORIES", "THIRD_PARTY_LOGGERS", "OWN_MODULES", "VERBOSE_FLAG",
           "hide_third_party_warnings", "show_third_party_warnings", "verbose_among_overrides"]

THIRD_PARTY_CATEGORIES = (FutureWarning, DeprecationWarning, UserWarning)
#: Loggers of dependencies that log a warning the user can do nothing about (torch.fx: once per
#: process, when Detectron2's ``is_fx_tracing`` runs during a FLOP count; torch._dynamo: the
#: graph breaks in Detectron2's code under ``--compile``; torch.utils.cpp_extension: "No CUDA
#: runtime is found" when inductor builds its CPU kernels).
THIRD_PARTY_LOGGERS = ("torch.fx._symbolic_trace", "torch._dynamo", "torch.utils.cpp_extension")
OWN_MODULES = r"(tokenprune|__main__)(\.|$)"  # warnings the project's own code raises
VERBOSE_FLAG = "--verbose"


def hide_third_party_warnings(argv: Sequence[str] = ()) -> bool:
    """Hide the dependencies' warnings of :data:`THIRD_PARTY_CATEGORIES`, unless ``argv``
    holds ``--verbose`` or ``PYTHONWARNINGS`` is set; True if they are now hidden."""
    if VERBOSE_FLAG in argv or os.environ.get("PYTHONWARNINGS"):
        return False
    for category in THIRD_PARTY_CATEGORIES:
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=OWN_MODULES)  # checked first
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    return True


def show_third_party_warnings() -> None:
    """Undo :func:`hide_third_party_warnings` (``--verbose`` given to an in-process command)."""
    if not os.environ.get("PYTHONWARNINGS"):
        for category in THIRD_PARTY_CATEGORIES:
            warnings.filterwarnings("default", category=category)
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


def verbose_among_overrides(args) -> None:
    """``--verbose`` written after the ``key=value`` overrides lands in ``args.opts`` (the
    parsers collect everything after the first override): take it out and set
    ``args.verbose``."""
    opts = getattr(args, "opts", None) or []
    if VERBOSE_FLAG in opts:
        args.opts = [o for o in opts if o != VERBOSE_FLAG]
        args.verbose = True
