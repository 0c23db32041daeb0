"""``python -m verify study NAME [--quick]``: run one seed study (table, figure, JSON)."""

from __future__ import annotations

import argparse

from models.cli_support import resolve_device

from .studies import STUDIES, default_out, run_study


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``study`` subcommand."""
    p = sub.add_parser("study", help="reproduce a seed study: " + ", ".join(STUDIES))
    p.add_argument("name", choices=list(STUDIES), metavar="NAME", help="one of: " + ", ".join(STUDIES))
    p.add_argument("--quick", action="store_true", help="minutes-long smoke run (what the tests execute)")
    p.add_argument("--out", help="output directory (default results/NAME, or runs/NAME-quick with --quick); "
                   "an existing one is resumed")
    p.add_argument("--n", type=int, help="override the number of evaluation examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=run)


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
