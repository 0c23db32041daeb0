"""``python -m verify``: attack, bound, certify, compare, merge, plot, study, train, export.

Each subcommand lives in its own ``_cmd_*.py`` module exposing ``register(subparsers)``,
which adds a parser and sets ``func(args) -> int``; :data:`COMMANDS` lists them
explicitly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import ModuleType

from models.cli_support import OneLineArgumentParser, run_main, subparsers

from . import _cmd_attack, _cmd_bounds, _cmd_certify, _cmd_export, _cmd_merge, _cmd_plot, _cmd_study, _cmd_train

#: subcommand modules, in the order ``--help`` shows them.
COMMANDS: tuple[ModuleType, ...] = (_cmd_bounds, _cmd_certify, _cmd_merge, _cmd_plot, _cmd_attack, _cmd_study,
                                    _cmd_train, _cmd_export)


def build_parser() -> argparse.ArgumentParser:
    """The full ``verify`` argument parser."""
    parser = OneLineArgumentParser(prog="python -m verify", description=__doc__.splitlines()[0])
    sub = subparsers(parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on bad input)."""
    return run_main(build_parser, argv)
