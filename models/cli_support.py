"""Command-line conventions shared by ``python -m models`` and ``python -m verify``.

Bad input prints exactly one line on stderr and exits with status 2; argparse's own
usage errors follow the same rule. ``--help`` of every parser and subparser shows each
option's default.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

#: Exceptions that mean "the user asked for something invalid" (exit status 2): every error
#: type of the project derives from ValueError (``CheckpointError``, ``AttackError``,
#: ``CertifyError``, ...), and a missing input file is a FileNotFoundError. A KeyError or
#: TypeError is a bug: it propagates with its traceback (exit status 1).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)

#: ``--help`` of ``--model`` and ``--weights`` (:func:`add_model_arguments`).
MODEL_HELP = ("zoo name (ode, lenet5, ...), checkpoint path (STEM.pt with its STEM.json sidecar), "
              "Python factory FILE.py:FUNCTION (with --weights) or gains:PATH (a GAINS MNIST .pth.tar)")
WEIGHTS_HELP = "state dict (torch.save(model.state_dict(), ...)) for a --model FILE.py:FUNCTION factory"


class CLIUsageError(Exception):
    """Raised instead of argparse's print-usage-and-exit, carrying the one-line message."""


def _shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` should print this action's default.

    None (an option left unset: its help says what happens then), the False of a flag and
    suppressed defaults say nothing; positionals have no default unless optional.
    """
    if action.default is None or action.default is argparse.SUPPRESS or action.default is False:
        return False
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                           argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults-in-help formatter, also for options without a help string.

    ``ArgumentDefaultsHelpFormatter`` prints nothing for an option declared without
    ``help=``; here such an option still gets ``(default: ...)``. The default is inserted
    through ``%(default)s``, so help strings keep argparse's ``%`` rules (``%%`` for a
    literal percent sign).
    """

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        if not _shows_default(action):
            return action.help or ""
        return super()._get_help_string(action) or ""


class OneLineArgumentParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line (no usage dump) and whose help shows defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIUsageError(f"{self.prog}: {message}")


def run_main(build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and call the chosen subcommand's ``func(args) -> int``.

    Args:
        build: returns the parser; each subparser sets ``func`` via ``set_defaults``.
        argv: arguments (None: ``sys.argv[1:]``).

    Returns:
        the exit status: the subcommand's, or 2 for bad input.
    """
    parser = build()
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            raise CLIUsageError(f"{parser.prog}: choose a command ({parser.format_usage().strip()})")
        return int(args.func(args) or 0)
    except CLIUsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except USER_ERRORS as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2


def add_model_arguments(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """``--model`` (or a positional ``model``) and ``--weights``, the one syntax every command loads
    through :func:`models.zoo.resolve` (``resolve(args.model, device, weights=args.weights)``)."""
    if positional:
        parser.add_argument("model", help=MODEL_HELP)
    else:
        parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--weights", default=None, metavar="W.pt", help=WEIGHTS_HELP)


def add_lr_step_arguments(parser: argparse.ArgumentParser) -> None:
    """``--lr-steps EPOCH ...`` and ``--lr-step-factor F`` (:class:`models.train.Recipe`'s step decay)."""
    parser.add_argument("--lr-steps", type=int, nargs="+", default=None, metavar="EPOCH",
                        help="epochs at whose start the learning rate is multiplied by --lr-step-factor (step decay)")
    parser.add_argument("--lr-step-factor", type=float, default=None, help="factor of each --lr-steps step (default 0.2)")


def solver_spec(text: str) -> tuple[str, float | None]:
    """argparse type of a solver: ``METHOD`` or ``METHOD:VALUE`` (the one syntax of every CLI).

    VALUE is the number of steps of a fixed-grid method (``rk4:8``), the tolerance τ of an
    adaptive one (``dopri5:1e-3``) or the atol of a controlled adaptive solver (``cas-dopri5:0.005``,
    rtol 0, learned h0: :meth:`models.solver.SolverConfig.cas`).

    Returns:
        (method, value or None).

    Raises:
        argparse.ArgumentTypeError: unknown method, or a value that is not a positive step
            count / tolerance.
    """
    from .solver import FIXED_METHODS, METHODS

    method, sep, value = text.partition(":")
    if method not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown solver {method!r} in {text!r}; choose one of {', '.join(METHODS)}"
                                         " (optionally :STEPS or :TOL, e.g. rk4:4, dopri5:1e-3, cas-dopri5:0.005)")
    if not sep:
        return method, None
    try:
        number = int(value) if method in FIXED_METHODS else float(value)
    except ValueError:
        number = 0
    if not number > 0:
        what = "a positive number of steps" if method in FIXED_METHODS else "a positive tolerance"
        raise argparse.ArgumentTypeError(f"solver {text!r}: {value!r} is not {what}")
    return method, number


def subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """Subcommand group whose parsers also report errors on one line."""
    return parser.add_subparsers(dest="command", parser_class=OneLineArgumentParser)


def resolve_device(name: str) -> torch.device:
    """The ``--device`` choice as a torch device.

    Raises:
        ValueError: ``cuda`` was asked for on a machine without a CUDA device.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available on this machine")
    return torch.device(name)
