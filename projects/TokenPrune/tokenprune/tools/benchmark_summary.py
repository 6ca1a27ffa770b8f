"""One table of several benchmark results (``results.json`` of ``tokenprune.tools.benchmark``).

    python -m tokenprune.tools.benchmark_summary out/window/results.json out/global/results.json \\
        --output out/table.md

Per config and variant: the backbone's milliseconds per image and its speedup against the
faster dense reference, one column per batch size
(:func:`tokenprune.analysis.benchmark_report.summary_markdown`).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional, Sequence

from ..analysis.benchmark_report import summary_markdown
from ..errors import InputError
from ..fileio import atomic_write_text
from .common import run_tool, tool_parser

__all__ = ["build_parser", "main", "cli"]

PROG = "tokenprune.tools.benchmark_summary"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__.split("\n\n")[0], config=False)
    parser.add_argument("results", nargs="+", metavar="RESULTS.json")
    parser.add_argument("--output", default=None, metavar="FILE.md",
                        help="also write the table here")
    return parser


def main(args: argparse.Namespace) -> str:
    results = []
    for path in args.results:
        try:
            with open(path) as f:
                res = json.load(f)
            res["runs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path} is not a benchmark results.json "
                             f"({type(e).__name__}: {e})") from None
        results.append(res)
    table = summary_markdown(results)
    if args.output:
        atomic_write_text(args.output, table)
    print(table)
    return table


def cli(argv: Optional[Sequence[str]] = None) -> Any:
    return run_tool(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    cli(sys.argv[1:])
