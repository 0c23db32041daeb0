"""``python -m studies NAME [--quick] [--out DIR] [--n N] [--seed S] [--device cpu]``: run one seed study.

The same parser serves the alias ``python -m verify study NAME ...``, which hands its
arguments to :func:`main`. Bad input prints one line on stderr and exits with status 2;
``--help`` shows every default.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from models.cli_support import OneLineArgumentParser, resolve_device, run_main

from . import STUDIES, default_out, run_study

PROG = "python -m studies"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The study parser; it sets ``func`` to :func:`run`."""
    parser = OneLineArgumentParser(prog=prog, description="Run (or resume) one seed study and write its report: "
                                   "a markdown table, figures and JSON.")
    parser.add_argument("name", choices=list(STUDIES), metavar="NAME", help="one of: " + ", ".join(STUDIES))
    parser.add_argument("--quick", action="store_true", help="minutes-long smoke run (what the tests execute)")
    parser.add_argument("--out", help="output directory (default results/NAME, or runs/NAME-quick with --quick); "
                        "an existing one is resumed")
    parser.add_argument("--n", type=int, help="override the number of evaluation examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the study and print where its report is."""
    device = resolve_device(args.device)
    out = args.out or default_out(args.name, args.quick)
    report = run_study(args.name, args.quick, out, args.seed, device, args.n)
    print(f"{report.title}: wrote {out}/{args.name}.md, .json and {len(report.figures)} figure(s)")
    for table in report.tables:
        print()
        print(table.markdown())
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Entry point; returns the exit status (2 on bad input).

    Args:
        argv: arguments (None: ``sys.argv[1:]``).
        prog: program name in usage and error lines (the alias passes ``python -m verify study``).
    """
    return run_main(lambda: build_parser(prog), argv)
