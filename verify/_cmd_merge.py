"""``python -m verify merge DIR``: join the shards of a certification run."""

from __future__ import annotations

import argparse

from .run import merge_run


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``merge`` subcommand."""
    p = sub.add_parser("merge", help="join results-k-of-N.jsonl shards into results.jsonl + summary")
    p.add_argument("dir", help="run directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Merge and print the summary table."""
    summary = merge_run(args.dir)
    print(summary["table"])
    return 0
