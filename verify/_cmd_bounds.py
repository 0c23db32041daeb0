"""``python -m verify bounds``: per-layer Lipschitz constants, network bound, empirical
lower bound and the solver's symbolic growth factor for one model."""

from __future__ import annotations

import argparse
import math

import sympy
import torch

from lipbound.norms import NORMS
from models.cli_support import add_model_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bounds`` subcommand."""
    p = sub.add_parser("bounds", help="Lipschitz bounds and solver growth factor of a model")
    add_model_arguments(p)
    p.add_argument("--norm", choices=NORMS, default="inf",
                   help="input and output norm")
    p.add_argument("--n", type=int, default=32, help="held-out images for the empirical lower bound")
    p.add_argument("--steps", type=int, default=10, help="ascent steps of the empirical search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="data folder (default $ODE_ROBUSTNESS_DATA)")
    p.set_defaults(func=run)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.6g}"


def run(args: argparse.Namespace) -> int:
    """Print the bounds; returns 0."""
    from lipbound import empirical_lipschitz, network_bound, tableau_for_solver
    from lipbound.growth import step_factor
    from models.data import load_dataset
    from models.zoo import resolve

    if args.n < 1 or args.steps < 0:
        raise ValueError(f"--n must be >= 1 and --steps >= 0, got {args.n}, {args.steps}")
    torch.manual_seed(args.seed)
    model, _ = resolve(args.model, weights=args.weights)
    model.eval()
    x, _ = load_dataset("mnist-t10k", split="test", data_dir=args.data_dir)
    g = torch.Generator().manual_seed(args.seed)
    x = x[torch.randperm(x.shape[0], generator=g)[: args.n]]
    bound = network_bound(model, args.norm, x=x[:1])
    print(f"model {args.model} ({bound.model}), norm {args.norm}")
    print(f"{'layer':<24} {'type':<14} {'upper':>12} {'power-iter':>12} guaranteed  method")
    for r in bound.rows:
        mark = "*" if r.name in bound.factors else " "
        print(f"{mark}{r.name:<23} {r.kind:<14} {_fmt(r.upper):>12} {_fmt(r.estimate):>12} "
              f"{str(r.guaranteed):<10}  {r.method}{'  (' + r.reason + ')' if r.reason else ''}")
    print("(* = factor of the network bound)")
    print(f"network bound: {_fmt(bound.total)}" + (f"  ({bound.reason})" if bound.reason else ""))
    emp = empirical_lipschitz(model, x, args.norm, steps=args.steps, seed=args.seed)
    print(f"empirical lower bound: {emp.lower:.6g} (jacobian {emp.jacobian:.6g}, pairs {emp.pair:.6g}; "
          f"{emp.n_points} images, {emp.steps} steps)")
    if bound.total is not None and emp.lower > 0:
        print(f"upper / lower: {bound.total / emp.lower:.6g}")
    else:
        print("upper / lower: n/a" + (" (no upper bound)" if bound.total is None else " (lower bound is 0)"))
    solver = getattr(model, "solver", None)
    if solver is not None:
        try:
            tab = tableau_for_solver(solver.method)
        except ValueError as err:
            print(f"solver {solver.method}: {err}")
            return 0
        print(f"solver {solver.method} = tableau {tab.name}; per-step factor 1 + h L_Phi = "
              f"{sympy.sstr(step_factor(tab))}")
        print(f"  LaTeX: {sympy.latex(step_factor(tab))}")
        gf = bound.growth
        if gf is not None:
            steps = f"{gf.n_steps} steps" + (f", h = {solver.T / gf.n_steps:g}" if solver.is_fixed
                                               else " (recorded on one image)")
            print(f"  G = {gf.value:.6g} with K = {gf.lipschitz:.6g}, {steps}, T = {gf.end_time:g}; "
                  f"e^(TK) = {gf.continuous:.6g}")
            if solver.is_fixed:
                print(f"  formula: {sympy.sstr(gf.formula)}")
        elif bound.field_lipschitz is None:
            print(f"  G not available: {bound.reason}")
        if math.isinf(bound.total or 0.0):
            print("  (the bound overflows a float)")
    return 0
