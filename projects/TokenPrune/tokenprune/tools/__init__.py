"""Command-line tools (``python -m tokenprune.tools.X``): thin parsers over the library."""
