"""Does certified training keep the ODE-net's field alive? Certified, PGD and clean accuracy next to
field activity and solver sensitivity, with paired differences between models.

IBP training switched the field of ``ode-cert-0.1`` off (no unit fires on any clean image, so the
ODE block adds a constant and the solver does not matter). This benchmark measures, per model, on
held-out images 8000.. of mnist-t10k at one ε (L∞):

* clean accuracy; IBP and CROWN (dense engine, :func:`verify.certify`) certified accuracy; PGD-40
  accuracy (random start, best of ``--restarts``); soundness: every certified image survives PGD;
* field activity (:func:`models.activity.field_usage`, every stage and step of the solver):
  ``alive``, the fraction of field ReLU units active on some clean image, and ``mean_active``;
* solver sensitivity (ODE-nets): the logits under the trained solver against rk4 with 4 steps
  and Euler with 8 steps; a dead field gives Δ = 0 up to rounding;
* paired differences of every model against the first (per-image verdicts, McNemar standard error).

One JSON line per model is appended to ``benchmarks/results/live_field.jsonl`` as soon as measured
(models already there are skipped); the table is ``benchmarks/results/live_field.md|json``.

Run: ``python -m benchmarks.live_field ode-cert-0.1 ode-cert-0.1-mtl ode-cert-0.1-mtl-ibp resnet-cert-0.1
resnet-cert-0.1-mtl resnet-cert-0.1-mtl-ibp`` (``--n 500 --eps 0.1`` by default).

References:
    De Palma, Bunel, Dvijotham, Kumar, Stanforth, Lomuscio, "Expressive Losses for Verified
    Robustness via Convex Combinations", ICLR 2024.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks import PGD
from models import SolverConfig
from models.activity import field_usage
from models.data import load_dataset
from models.zoo import resolve
from studies._common import paired_difference
from verify import certify

from ._cells import pct

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 250
OFFSET = 8000
SWAPS = {"rk4-4": SolverConfig.fixed("rk4", 4, T=1.0), "euler-8": SolverConfig.fixed("euler", 8, T=1.0)}
VERDICTS = ("clean", "ibp", "crown", "either", "pgd")


def activity(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """``field_usage`` pooled over the field's ReLU modules (weighted by their units)."""
    usage = field_usage(model, x, CHUNK).values()
    units = sum(u["units"] for u in usage)
    if not units:
        return {"alive": 0.0, "mean_active": 0.0, "units": 0}
    return {"alive": sum(u["alive"] * u["units"] for u in usage) / units,
            "mean_active": sum(u["mean_active"] * u["units"] for u in usage) / units, "units": units}


def solver_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Logits under the trained solver against each of :data:`SWAPS`."""
    base_solver = model.block.solver
    with torch.no_grad():
        base = model(x)
        out: dict[str, Any] = {"trained": base_solver.describe(), "clean_trained": int((base.argmax(1) == y).sum())}
        try:
            for name, solver in SWAPS.items():
                model.block.solver = solver
                z = model(x)
                d = (z - base).abs()
                out[name] = {"max_abs_dlogit": float(d.max()), "mean_abs_dlogit": float(d.mean()),
                             "agree": int((z.argmax(1) == base.argmax(1)).sum()), "clean": int((z.argmax(1) == y).sum())}
        finally:
            model.block.solver = base_solver
    return out


def measure(spec: str, model: nn.Module, meta: dict[str, Any], x: torch.Tensor, y: torch.Tensor, eps: float,
            steps: int, restarts: int) -> dict[str, Any]:
    """Every figure of one model (``spec`` its name, ``meta`` its checkpoint metadata)."""
    model.eval()
    clean, ibp, crown, pgd = [], [], [], []
    secs = {"ibp": 0.0, "crown": 0.0, "pgd": 0.0}
    for i in range(0, x.shape[0], CHUNK):
        xb, yb = x[i:i + CHUNK], y[i:i + CHUNK]
        with torch.no_grad():
            ok = model(xb).argmax(1) == yb
        clean.append(ok)
        for name, store in (("ibp", ibp), ("crown", crown)):
            t0 = time.process_time()
            store.append(certify(model, xb, yb, eps, "inf", name).certified)
            secs[name] += time.process_time() - t0
        t0 = time.process_time()
        res = PGD(model, eps, "inf", steps=steps, step_size=2.5 * eps / steps, random_start=True,
                  restarts=restarts, seed=0)(xb, yb)
        pgd.append(ok & ~res.success)
        secs["pgd"] += time.process_time() - t0
    c, b, w, a = (torch.cat(v) for v in (clean, ibp, crown, pgd))
    either = b | w
    return {"model": spec, "eps": eps, "n": int(y.shape[0]), "clean": int(c.sum()), "ibp": int(b.sum()),
            "crown": int(w.sum()), "ibp_or_crown": int(either.sum()), "pgd": int(a.sum()),
            "pgd_steps": steps, "pgd_restarts": restarts, "violations": int((either & ~a).sum()),
            "per_image": {k: "".join("1" if bool(v) else "0" for v in t) for k, t in
                          (("clean", c), ("ibp", b), ("crown", w), ("pgd", a))},
            "activity": activity(model, x),
            "solver": solver_sensitivity(model, x, y) if hasattr(model, "block") else None,
            "cpu_seconds": {k: round(v, 1) for k, v in secs.items()},
            "train_seconds": meta.get("train_seconds"), "cert_recipe": meta.get("cert_recipe"),
            "recipe": meta.get("recipe")}


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per verdict, (A − B in points, its McNemar standard error) over the shared images."""
    out = {}
    for k in VERDICTS:
        d, se = paired_difference(_verdicts(a, k), _verdicts(b, k))
        out[k] = (100 * d, 100 * se)
    return out


def _verdicts(row: dict[str, Any], kind: str) -> list[bool]:
    per = row["per_image"]
    if kind == "either":
        return [p == "1" or q == "1" for p, q in zip(per["ibp"], per["crown"])]
    return [p == "1" for p in per[kind]]


def report(rows: list[dict[str, Any]]) -> str:
    """The markdown table of ``rows`` (first row: the reference of the paired differences)."""
    n, eps = rows[0]["n"], rows[0]["eps"]
    lines = [f"# Certified training and the field: held-out images {OFFSET}–{OFFSET + n - 1}, ε = {eps:g} (L∞)", "",
             "| model | clean | IBP | CROWN | IBP or CROWN | PGD | violations | field units alive | mean active | "
             "max Δ logit rk4-4 (predictions kept) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        act, sol = r["activity"], r["solver"]
        swap = f"{sol['rk4-4']['max_abs_dlogit']:.2g} ({sol['rk4-4']['agree']}/{n})" if sol else "–"
        lines.append(f"| {r['model']} | {pct(r['clean'], n)} | {pct(r['ibp'], n)} | {pct(r['crown'], n)} | "
                     f"{pct(r['ibp_or_crown'], n)} | {pct(r['pgd'], n)} | {r['violations']} | "
                     f"{100 * act['alive']:.1f} % | {100 * act['mean_active']:.1f} % | {swap} |")
    ref = rows[0]["model"]
    lines += ["", f"Paired differences against {ref} (points, ± McNemar standard error):", "",
              "| model | " + " | ".join(VERDICTS) + " |", "|---|" + "---|" * len(VERDICTS)]
    for r in rows[1:]:
        d = paired(r, rows[0])
        lines.append(f"| {r['model']} | " + " | ".join(f"{d[k][0]:+.1f} ± {d[k][1]:.1f}" for k in VERDICTS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="zoo names or checkpoint stems; the first is the paired reference")
    p.add_argument("--n", type=int, default=500, help="held-out images 8000..")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=40, help="PGD steps")
    p.add_argument("--restarts", type=int, default=2, help="PGD restarts")
    p.add_argument("--out", default=str(RESULTS / "live_field"))
    args = p.parse_args(argv)
    if args.n < 1 or args.eps <= 0:
        print(f"error: --n must be positive and --eps > 0, got --n {args.n} --eps {args.eps:g}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    out = Path(args.out)
    jsonl = out.with_suffix(".jsonl")
    rows = {(r["model"], r["eps"], r["n"]): r for r in map(json.loads, jsonl.read_text().splitlines()) if r} \
        if jsonl.exists() else {}
    todo = {}
    for spec in args.models:
        try:
            todo[spec] = resolve(spec)  # every name checked before any work
        except (KeyError, ValueError, FileNotFoundError) as e:
            print(f"error: {spec}: {e}", file=sys.stderr)
            return 2
    x, y = load_dataset("mnist-t10k", "test", n=args.n)
    for spec, (model, meta) in todo.items():
        if (spec, args.eps, args.n) not in rows:
            rows[(spec, args.eps, args.n)] = r = measure(spec, model, meta, x, y, args.eps, args.steps, args.restarts)
            with jsonl.open("a") as f:
                f.write(json.dumps(r) + "\n")
    chosen = [rows[(spec, args.eps, args.n)] for spec in args.models]
    out.with_suffix(".md").write_text(report(chosen))
    out.with_suffix(".json").write_text(json.dumps(
        {"command": "python -m benchmarks.live_field " + " ".join(args.models), "n": args.n, "eps": args.eps,
         "rows": [{k: v for k, v in r.items() if k != "per_image"} for r in chosen],
         "paired_vs_first": {r["model"]: paired(r, chosen[0]) for r in chosen[1:]}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
