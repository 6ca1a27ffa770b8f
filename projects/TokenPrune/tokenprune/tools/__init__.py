"""The command-line tools, one thin module each (parser and ``main``):
``python -m tokenprune.tools.flops | benchmark | visualize | ablation | demo``.

Importing the package hides the dependencies' deprecation notices (some are raised while
the commands' libraries import), so that a bad input is reported as exactly one line.
"""
from .common import quiet_third_party_warnings

quiet_third_party_warnings()
