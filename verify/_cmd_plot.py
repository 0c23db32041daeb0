"""``python -m verify plot DIR``: bound-vs-attack scatter, radius CDFs, solver growth."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``plot`` subcommand."""
    p = sub.add_parser("plot", help="draw the figures of a certification run directory")
    p.add_argument("dir", help="run directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw the figures; prints their paths."""
    from .plots import plot_run

    for path in plot_run(args.dir):
        print(path)
    return 0
