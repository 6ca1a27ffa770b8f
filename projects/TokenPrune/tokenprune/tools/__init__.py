"""The command-line tools, one thin module each (parser and ``main``):
``python -m tokenprune.tools.flops | benchmark | visualize | ablation``."""
