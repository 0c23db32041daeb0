"""``python -m verify study NAME ...``: alias of ``python -m studies NAME ...``.

The seed studies are a consumer of this library (the top-level package ``studies``), so
``verify`` never imports them when it is imported or builds its parser: this subcommand
takes its arguments verbatim and hands them to :func:`studies.cli.main` when it runs.
"""

from __future__ import annotations

import argparse

ALIAS_PROG = "python -m verify study"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``study`` subcommand (every argument, ``--help`` included, goes to the studies CLI)."""
    # No option of its own: with no prefix character it ever sees, "--quick" or "--help" is
    # an ordinary word that lands in ``argv``.
    p = sub.add_parser("study", help="alias of `python -m studies`: reproduce a seed study "
                       "(see `python -m verify study --help`)", add_help=False, prefix_chars="\x00")
    p.add_argument("argv", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``python -m studies`` with the alias's arguments; returns its exit status."""
    from studies.cli import main

    return main(args.argv, prog=ALIAS_PROG)
