"""The command-line tools, one thin module each (parser and ``main``):
``python -m tokenprune.tools.flops | benchmark | benchmark_summary | visualize | ablation | demo
| tradeoff``.

Importing the package hides the dependencies' warnings (:mod:`.warnings_filter`; some are
raised while the commands' libraries import), so that a command shows its own output and a
bad input is reported as exactly one line; ``--verbose`` shows them.
"""
import sys

from .warnings_filter import hide_third_party_warnings

hide_third_party_warnings(sys.argv[1:])
