"""``python -m verify plot DIR``: bound-vs-attack scatter, radius CDFs, solver growth."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``plot`` subcommand."""
    p = sub.add_parser("plot", help="draw the figures of a certification run directory")
    p.add_argument("dir", help="run directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw the figures; prints their paths, and one line on stderr per warning the figures carry."""
    from .plots import run_figures

    figs = run_figures(args.dir)
    for path in figs.save(args.dir):
        print(path)
    for line in figs.warnings:
        print(f"warning: {line}", file=sys.stderr)
    return 0
