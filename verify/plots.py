"""Figures of a certification run: certified vs empirical radius, radius CDFs, solver growth.

References:
    Xu et al., "Automatic Perturbation Analysis for Scalable Certified Robustness and
    Beyond", NeurIPS 2020. Hairer, Nørsett, Wanner, "Solving ODEs I" (growth of
    perturbations through Runge–Kutta steps).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .run import RunConfigError, read_records


def _records(out: Path) -> list[dict[str, Any]]:
    merged = out / "results.jsonl"
    files = [merged] if merged.exists() else sorted(out.glob("results-*-of-*.jsonl"))
    recs = [r for f in files for r in read_records(f)]
    if not recs:
        raise RunConfigError(f"no results in {out}")
    return recs


def symbolic_growth(config: dict[str, Any], n_steps: int) -> list[float] | None:
    """lipbound's symbolic growth factor after each step, for the run's model (None if unavailable)."""
    try:
        from lipbound import network_bound, step_sequence_factor, tableau_for_solver
        from models.zoo import resolve

        model, _ = resolve(config["model"])
        solver = getattr(model, "solver", None)
        if solver is None or not solver.is_fixed:
            return None
        nb = network_bound(model, "2")
        if nb.field_lipschitz is None:
            return None
        tab = tableau_for_solver(solver.method)
        dt = solver.T / solver.n_steps
        return [step_sequence_factor(tab, [dt] * k, nb.field_lipschitz) for k in range(1, n_steps + 1)]
    except (ValueError, KeyError, FileNotFoundError):
        return None


def plot_run(out: str | os.PathLike[str]) -> list[Path]:
    """Draw ``scatter.png``, ``cdf.png`` and (ODE/ResNet runs) ``growth.png`` into the run directory.

    Raises:
        RunConfigError: not a run directory or no results.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    if not (out / "config.json").exists():
        raise RunConfigError(f"{out} is not a certification run directory (no config.json)")
    config = json.loads((out / "config.json").read_text())
    recs = [r for r in _records(out) if r["correct"]]
    methods = config["methods"]
    norm = "ℓ∞" if config["norm"] == "inf" else "ℓ2"
    paths = []

    fig, ax = plt.subplots(figsize=(5, 5))
    top = 0.0
    for m in methods:
        pts = [(r["empirical"], r["methods"][m]["radius"]) for r in recs
               if r.get("empirical") is not None and m in r["methods"]]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, label=m)
            top = max(top, *(max(p) for p in pts))
    top = top or 1.0
    ax.plot([0, top], [0, top], "k--", lw=1, label="y = x (soundness limit)")
    ax.set_xlabel(f"empirical radius ({norm}, attack)")
    ax.set_ylabel(f"certified radius ({norm})")
    ax.legend()
    ax.set_title(f"{config['model']}: certified vs empirical")
    paths.append(out / "scatter.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    series = {m: [r["methods"][m]["radius"] for r in recs if m in r["methods"]] for m in methods}
    series["attack (empirical)"] = [r["empirical"] for r in recs if r.get("empirical") is not None]
    for name, vals in series.items():
        vals = sorted(v for v in vals if v is not None and math.isfinite(v))
        if vals:
            ax.step(vals, [(k + 1) / len(vals) for k in range(len(vals))], where="post", label=name)
    ax.set_xlabel(f"radius ({norm})")
    ax.set_ylabel("fraction of examples with radius ≤ r")
    ax.legend()
    paths.append(out / "cdf.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    growth = [r["growth"] for r in recs if r.get("growth")]
    if growth:
        n = max(len(g) for g in growth)
        fig, ax = plt.subplots(figsize=(6, 4))
        for g in growth:
            ax.plot(range(1, len(g) + 1), g, color="tab:blue", alpha=0.2, lw=1)
        ax.plot([], [], color="tab:blue", label="measured ‖z_n − y_n‖ / ‖z_0 − y_0‖ (attack δ)")
        sym = symbolic_growth(config, n)
        if sym:
            ax.plot(range(1, n + 1), sym, "r-o", label="symbolic growth factor (lipbound)")
        ax.set_yscale("log")
        ax.set_xlabel("solver step n")
        ax.set_ylabel("perturbation growth")
        ax.legend()
        paths.append(out / "growth.png")
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return paths
