"""``python -m verify certify``: certified radii of held-out examples, next to attack radii."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from models.cli_support import add_model_arguments, resolve_device

from ._cmd_attack import _solver_spec
from .certify import BAB_TIME_LIMIT, ENGINES, EXPENSIVE, METHODS
from ._backends import BACKENDS, certify_parallel, make_backend
from .run import RunConfigError, RunSpec, certify_run, finished_examples, parse_shard


def _positive(text: str, invalid: str, must: str) -> float:
    """A positive finite float from the command line; the two messages name the option."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{invalid} {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{must}, got {text!r}")
    return v


def _eps(text: str) -> float:
    return _positive(text, "invalid eps", "eps must be a positive number")


def _seconds(text: str) -> float:
    return _positive(text, "invalid time limit", "the time limit must be a positive number of seconds")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``certify`` subcommand."""
    p = sub.add_parser("certify", help="certified radii (auto_LiRPA / Lipschitz) vs attack radii, JSONL per example")
    add_model_arguments(p)
    p.add_argument("--norm", choices=["inf", "2"], default="inf")
    p.add_argument("--method", choices=[*METHODS, "all"], default="crown",
                   help="alpha-crown: the dense engine's α-CROWN (auto_LiRPA's with --engine auto_lirpa); bab: branch "
                        "and bound; milp: exact margins by mixed-integer programming (small networks); lp-all: every "
                        "neuron bounded by its own LP, the ceiling of alpha-crown (small networks); all: every "
                        "method but bab, milp and lp-all")
    p.add_argument("--engine", choices=list(ENGINES), default="auto",
                   help="auto: the dense engine for crown and alpha-crown where the model has a dense graph")
    p.add_argument("--time-limit", type=_seconds, default=BAB_TIME_LIMIT,
                   help="bab: seconds per example and bound evaluation (then the verdict is unknown); milp: "
                        "seconds per margin program; lp-all: seconds per example")
    p.add_argument("--n", type=_positive_int, default=100, help="held-out examples (the first n)")
    p.add_argument("--eps", type=_eps, nargs="+", help="ε values of the certified-accuracy table")
    p.add_argument("--out", default=None, help="run directory (default runs/certify-<model>-<norm>-<method>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--shard", default=None, help="k/N: certify examples i with i %% N == k-1")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="worker processes on this machine (shards merged at the end); not with --shard")
    p.add_argument("--backend", choices=list(BACKENDS), default="local",
                   help="where the --jobs lanes run: local processes, or a Dask cluster (same files, same --resume)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="--backend dask: the scheduler, e.g. tcp://host:8786 (default: a local cluster of --jobs "
                        "workers)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-attack", action="store_true", help="skip the empirical radius and soundness check")
    p.add_argument("--solver", type=_solver_spec, default=None, metavar="METHOD[:STEPS|:TOL]",
                   help="ODE-nets: swap the solver before certifying, e.g. rk4:8 or dopri5:1e-1 (adaptive solvers "
                        "need --fixed-steps)")
    p.add_argument("--fixed-steps", action="store_true",
                   help="adaptive ODE solver: certify the fixed-step surrogate of the steps accepted on each clean "
                        "input (not the deployed solver, which is refused without this flag)")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=run)


def _spec(args: argparse.Namespace, arch: str | None) -> RunSpec:
    """The run's spec from the command line (``config.json`` of the run directory)."""
    return RunSpec(model=args.model, weights=args.weights, arch=arch, norm=args.norm,
                   methods=tuple(m for m in METHODS if m not in EXPENSIVE) if args.method == "all" else (args.method,),
                   n=args.n, engine=args.engine, time_limit=args.time_limit,
                   eps=tuple(args.eps or ()), seed=args.seed, attack=not args.no_attack, jobs=args.jobs,
                   solver=args.solver, fixed_steps=args.fixed_steps, shard=parse_shard(args.shard))


def _check_combination(args: argparse.Namespace) -> None:
    """Refuse flags that contradict each other (before loading anything)."""
    parse_shard(args.shard)
    if args.jobs > 1 and args.shard is not None:
        raise RunConfigError("--jobs runs every shard on this machine: give --jobs or --shard, not both")
    if args.backend == "dask" and args.shard is not None:
        raise RunConfigError("--shard serves one task of a job array; --backend dask spreads the whole run over a "
                             "cluster: not both")


def _print_summary(summary: dict[str, Any], out: str) -> None:
    """The table, peak memory, and one warning line each for unsound and unchecked examples."""
    print(summary["table"])
    mem = summary.get("peak_memory", {})
    print("peak memory: " + ", ".join(f"{k} {v:.0f}" for k, v in mem.items()))
    if summary["unsound_examples"]:
        print(f"WARNING: {summary['unsound_examples']} example(s) with a certified radius above the "
              "empirical radius (unsound!)", file=sys.stderr)
    if summary.get("unchecked_examples"):
        print(f"WARNING: unchecked {summary['unchecked_examples']}: the attack found no adversarial example for "
              "these correctly classified examples, so their certificates were not checked", file=sys.stderr)
    print(f"results: {out}")


def run(args: argparse.Namespace) -> int:
    """Run the certification; prints the summary table."""
    import torch

    from models.data import load_dataset
    from models.zoo import resolve

    _check_combination(args)
    backend = make_backend(args.backend, args.address)
    resolve_device(args.device)
    torch.manual_seed(args.seed)
    model, meta = resolve(args.model, args.device, weights=args.weights)
    if args.solver is not None:
        if not hasattr(model, "solver"):
            raise RunConfigError(f"--solver: model {args.model} ({meta.get('arch')}) has no ODE solver")
        model.solver = args.solver
    spec = _spec(args, meta.get("arch"))
    x, y = load_dataset("mnist-t10k", split="test", data_dir=args.data_dir)
    x, y = x[: args.n].to(args.device), y[: args.n].to(args.device)
    out = args.out or f"runs/certify-{args.model.replace('/', '_')}-{args.norm}-{args.method}"
    try:
        if args.shard is not None:  # one shard of a run split across machines
            summary = certify_run(spec, out, model, x, y, resume=args.resume)
        else:  # every example, in --jobs lanes on the backend
            summary = certify_parallel(spec, out, model, x, y, backend=backend, resume=args.resume)
    except KeyboardInterrupt:
        print(f"interrupted: {finished_examples(out)} of {args.n} examples finished in {out}; "
              "run the same command with --resume to continue", file=sys.stderr)
        return 130
    _print_summary(summary, out)
    return 0
