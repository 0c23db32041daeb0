"""``python -m verify attack``: evaluate a model under one attack, with validity checks.

Example::

    python -m verify attack --model ode --attack pgd --norm inf --eps 0.3 --n 1000 --out pgd.json

Exit status: 0 when every validity check passed or was skipped (or ``--no-checks``), 2 on bad
input (one line on stderr), :data:`EXIT_CHECK_FAILED` (3) when a validity check failed: the
report is still printed (its first line names the failed checks) and written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from lipbound.norms import NORMS
from models.cli_support import add_model_arguments, resolve_device

#: Exit status of a run whose report has a failed validity check.
EXIT_CHECK_FAILED = 3

_EPILOG = ("exit status: 0 = all validity checks passed or were skipped (or --no-checks); "
           "2 = bad input; 3 = a validity check failed: the report's first line names the failed "
           "checks and the robust accuracy probably overstates robustness (the report is still "
           "printed and written to --out)")


def _solver_spec(text: str) -> Any:
    """``METHOD:STEPS`` (fixed grid) or ``METHOD:TOL`` (adaptive) -> SolverConfig (the models CLI syntax)."""
    from models.cli_support import solver_spec
    from models.solver import FIXED_METHODS, SolverConfig

    method, value = solver_spec(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"solver {text!r} needs its steps or tolerance, e.g. rk4:4 or dopri5:1e-3")
    return SolverConfig.fixed(method, int(value)) if method in FIXED_METHODS else SolverConfig.adaptive(method, value)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``attack`` subcommand."""
    from attacks import ATTACKS
    from attacks.cw import CW_DEFAULTS

    p = sub.add_parser("attack", help="clean / robust accuracy under an attack (with validity checks)",
                       description="Clean and robust accuracy of a model under one attack, with validity checks.",
                       epilog=_EPILOG)
    add_model_arguments(p)
    p.add_argument("--attack", required=True, choices=sorted(ATTACKS), help="attack name")
    p.add_argument("--norm", default=None, choices=NORMS,
                   help="perturbation norm (default: inf; 2 for cw, which supports only 2)")
    p.add_argument("--eps", type=float, default=None,
                   help="ball radius (required for fgsm/fgm/pgd/di2fgsm; optional budget for cw/boundary)")
    p.add_argument("--n", type=int, default=1000, help="held-out examples (mnist-t10k test split)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"iterations (cw: Adam steps per round, default {CW_DEFAULTS['steps']}; "
                        "boundary, square: query budget; apgd, apgd-t, fab, fab-t: iterations; autoattack: "
                        "APGD and FAB-T iterations, "
                        "default 100)")
    p.add_argument("--step-size", type=float, default=None, help="step size (pgd, di2fgsm)")
    p.add_argument("--restarts", type=int, default=None, help="random restarts (pgd, apgd, apgd-t, fab, fab-t)")
    p.add_argument("--version", default=None, choices=["standard", "rand"],
                   help="autoattack: standard (APGD-CE, APGD-T, FAB-T, Square) or rand (APGD-CE/DLR with EOT, "
                        "--eot samples, default 20); default standard")
    p.add_argument("--initial-const", type=float, default=None,
                   help=f"cw: first constant c of the binary search (default {CW_DEFAULTS['initial_const']:g})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"cw: Adam learning rate in tanh space (default {CW_DEFAULTS['lr']:g})")
    p.add_argument("--binary-search-steps", type=int, default=None,
                   help=f"cw: rounds of the search over c (default {CW_DEFAULTS['binary_search_steps']})")
    p.add_argument("--confidence", type=float, default=None,
                   help=f"cw: required logit margin kappa (default {CW_DEFAULTS['confidence']:g})")
    p.add_argument("--eot", type=int, default=1, help="EOT samples per gradient (gradient attacks)")
    p.add_argument("--attack-solver", type=_solver_spec, default=None,
                   help="ODE solver while attacking, e.g. rk4:4 or dopri5:1e-3")
    p.add_argument("--eval-solver", type=_solver_spec, default=None,
                   help="ODE solver for scoring the adversarial inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--no-checks", action="store_true", help="skip the validity checks")
    p.add_argument("--check-n", type=int, default=32, help="subsample size of the validity checks")
    p.add_argument("--data-dir", default=None, help="data root (default: $ODE_ROBUSTNESS_DATA)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    p.set_defaults(func=run)


def _attack_kwargs(cls: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Constructor arguments of the attack class ``cls`` from the options that apply to it.

    Raises:
        ValueError: an option given to an attack it does not apply to.
    """
    kwargs: dict[str, Any] = {"seed": args.seed, "attack_solver": args.attack_solver,
                              "eval_solver": args.eval_solver}
    if args.steps is not None:
        if cls.budget_arg is None:
            raise ValueError(f"--steps does not apply to --attack {args.attack}")
        kwargs[cls.budget_arg] = args.steps
    for opt, key in ((args.step_size, "step_size"), (args.restarts, "restarts")):
        if opt is not None:
            allowed = ("pgd", "apgd", "apgd-t", "fab", "fab-t") if key == "restarts" else ("pgd", "di2fgsm")
            if args.attack not in allowed:
                raise ValueError(f"--{key.replace('_', '-')} does not apply to --attack {args.attack}")
            kwargs[key] = opt
    for opt, key in ((args.initial_const, "initial_const"), (args.lr, "lr"),
                     (args.binary_search_steps, "binary_search_steps"), (args.confidence, "confidence")):
        if opt is not None:
            if args.attack != "cw":
                raise ValueError(f"--{key.replace('_', '-')} does not apply to --attack {args.attack} (cw only)")
            kwargs[key] = opt
    if args.version is not None or (args.attack == "autoattack" and args.eot > 1):
        if args.attack != "autoattack":
            raise ValueError(f"--version does not apply to --attack {args.attack} (autoattack only)")
        kwargs["version"] = args.version or "standard"
        if args.eot > 1:
            if kwargs["version"] != "rand":
                raise ValueError("--eot with --attack autoattack needs --version rand")
            kwargs["eot_samples"] = args.eot
    return kwargs


def run(args: argparse.Namespace) -> int:
    """Build the attack, evaluate, print the summary and write the JSON report."""
    from attacks import ATTACKS, EOT, AttackError, evaluate
    from models.data import load_dataset
    from models.zoo import resolve

    cls = ATTACKS[args.attack]
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.eps is None and not cls.minimal:
        raise ValueError(f"--eps is required for --attack {args.attack}")
    norm = args.norm or ("inf" if "inf" in cls.supported_norms else cls.supported_norms[0])
    if norm not in cls.supported_norms:
        raise ValueError(f"--attack {args.attack} supports --norm {', '.join(cls.supported_norms)} only "
                         f"(the default for {args.attack}); got --norm {norm}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    resolve_device(args.device)
    kwargs = _attack_kwargs(cls, args)
    model, _ = resolve(args.model, device=args.device, weights=args.weights)
    x, y = load_dataset("mnist-t10k", "test", data_dir=args.data_dir, n=args.n)
    shape = tuple(getattr(model, "input_shape", x.shape[1:]))
    if shape != tuple(x.shape[1:]):
        raise ValueError(f"model {args.model} reads inputs of shape {shape}; the attack command evaluates "
                         f"mnist-t10k images of shape {tuple(x.shape[1:])}")
    x, y = x.to(args.device), y.to(args.device)
    eps = math.inf if args.eps is None else args.eps
    attack = cls(model, eps, norm, **kwargs)
    if args.eot > 1 and args.attack != "autoattack":
        if not cls.supports_eot:
            raise AttackError(f"--eot needs a gradient attack, not {args.attack}")
        attack = EOT(attack, args.eot)
    report = evaluate(model, x, y, attack, batch_size=args.batch_size, checks=not args.no_checks,
                      check_n=args.check_n, seed=args.seed, progress=sys.stderr.isatty())
    print(report.summary())  # its first line names any failed validity check
    for member in getattr(attack, "members_last", ()):
        print(f"  member {member.name}: broke {member.broken} of {member.attacked} still robust "
              f"(last call), {member.seconds:.1f}s, NFE {member.nfe}, {member.queries} queries")
    if args.out is not None:
        record = {"model": args.model, **report.to_dict()}
        if args.attack_solver is not None:
            record["attack_solver"] = args.attack_solver.to_dict()
        if args.eval_solver is not None:
            record["eval_solver"] = args.eval_solver.to_dict()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return EXIT_CHECK_FAILED if report.flagged else 0
