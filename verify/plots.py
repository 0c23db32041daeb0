"""Figures of a certification run: certified vs empirical radius, radius CDFs, solver growth.

Every figure is titled with the run's model, norm, certification method(s) and number of
examples (from ``config.json`` and the records), and with what the certificate covers when
a record says (``certificate_covers``, e.g. a fixed-step surrogate rather than the deployed
solver). Correctly classified examples without an empirical radius are *unchecked* (no
attack point to compare the certificate with); the scatter says how many, in the figure.

References:
    Xu et al., "Automatic Perturbation Analysis for Scalable Certified Robustness and
    Beyond", NeurIPS 2020. Hairer, Nørsett, Wanner, "Solving ODEs I" (growth of
    perturbations through Runge–Kutta steps).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .run import RunConfigError, read_records

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn

__all__ = ["PlotWarning", "RunFigures", "plot_run", "run_figures", "symbolic_growth", "unchecked_note"]


class PlotWarning(UserWarning):
    """Something a reader of the figures must know: unchecked examples, an empty plot."""


def _records(out: Path) -> list[dict[str, Any]]:
    merged = out / "results.jsonl"
    files = [merged] if merged.exists() else sorted(out.glob("results-*-of-*.jsonl"))
    recs = [r for f in files for r in read_records(f)]
    if not recs:
        raise RunConfigError(f"no results in {out}")
    return recs


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(v)


def _growth_bound(model: nn.Module, n_steps: int) -> tuple[list[float] | None, str]:
    """lipbound's ℓ2 growth bound after each of the first ``n_steps`` steps, or (None, why not).

    ODE-net on a fixed grid: ∏_{i≤k} (1 + h L_Φ(h)) with K of the vector field. ResNet: the
    product ∏_{i≤k} (1 + s K_i) of its residual blocks (rows ``block<i>`` of
    :func:`lipbound.network_bound`); such a model has no ``solver``.
    """
    from lipbound import network_bound, step_sequence_factor, tableau_for_solver

    solver = getattr(model, "solver", None)
    if solver is not None:
        if not solver.is_fixed:
            return None, f"adaptive solver {solver.method}: the steps depend on the input"
        nb = network_bound(model, "2")
        if nb.field_lipschitz is None:
            return None, nb.reason or "no Lipschitz constant of the vector field"
        tab = tableau_for_solver(solver.method)
        dt = solver.T / solver.n_steps
        return [step_sequence_factor(tab, [dt] * k, nb.field_lipschitz) for k in range(1, n_steps + 1)], ""
    n_blocks = getattr(model, "n_blocks", None)
    if n_blocks is None or not hasattr(model, "fields"):
        return None, f"no solver steps in {type(model).__name__}"
    rows = {r.name: r for r in network_bound(model, "2").rows}
    factors = [rows[f"block{k}"].upper for k in range(min(n_steps, n_blocks))]
    if any(f is None for f in factors):
        return None, next(rows[f"block{k}"].reason for k in range(len(factors)) if factors[k] is None)
    return [math.prod(factors[:k + 1]) for k in range(len(factors))], ""  # type: ignore[misc]


def symbolic_growth(config: dict[str, Any], n_steps: int, model: nn.Module | None = None) -> list[float] | None:
    """lipbound's growth bound after each step for the run's model (None if unavailable).

    Args:
        config: the run configuration; ``config["model"]`` is resolved when ``model`` is None.
        n_steps: number of steps (ResNet: residual blocks).
        model: the model itself, instead of resolving its name.

    Returns:
        the bound on ‖z_k − y_k‖₂ / ‖z_0 − y_0‖₂ for k = 1..n_steps (ODE-net on a fixed grid
        or ResNet), or None.
    """
    return _symbolic_growth(config, n_steps, model)[0]


def _symbolic_growth(config: dict[str, Any], n_steps: int,
                     model: nn.Module | None = None) -> tuple[list[float] | None, str]:
    try:
        if model is None:
            from models.zoo import resolve

            model, _ = resolve(config["model"], weights=config.get("weights"))
            if config.get("solver") and hasattr(model, "solver"):  # the run's --solver
                from models.solver import SolverConfig

                model.solver = SolverConfig.from_dict(config["solver"])
        return _growth_bound(model, n_steps)
    except (ValueError, KeyError, FileNotFoundError) as err:
        return None, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def unchecked_note(records: Sequence[dict[str, Any]], attack: bool = True) -> str:
    """One line on the correctly classified examples without an empirical radius ("" if none).

    Args:
        records: the run's records.
        attack: whether the run attacked (``config["attack"]``).
    """
    correct = [r for r in records if r.get("correct")]
    n = sum(1 for r in correct if not _finite(r.get("empirical")))
    if not n:
        return ""
    why = "the attack found no adversarial example" if attack else "the run had no attack (--no-attack)"
    return f"{n} of {len(correct)} examples unchecked: {why}"


@dataclasses.dataclass(frozen=True)
class RunFigures:
    """The figures of one run, not yet written.

    Attributes:
        figures: file name (``scatter.png``, ``cdf.png``, ``growth.png``) -> figure.
        warnings: one line each, also written into the figures concerned.
    """

    figures: dict[str, Figure]
    warnings: tuple[str, ...]

    def save(self, out: str | os.PathLike[str], dpi: int = 120) -> list[Path]:
        """Write each figure into ``out``; returns the paths."""
        paths = []
        for name, fig in self.figures.items():
            paths.append(Path(out) / name)
            fig.savefig(paths[-1], dpi=dpi, bbox_inches="tight")
        return paths


def _context(config: dict[str, Any], records: Sequence[dict[str, Any]]) -> list[str]:
    """Title lines shared by every figure: model, norm, methods, n; what the certificate covers."""
    model, arch = config.get("model", "?"), config.get("arch")
    norm = {"inf": "ℓ∞", "2": "ℓ2", "1": "ℓ1"}.get(str(config.get("norm")), str(config.get("norm")))
    n, n_cfg = len(records), config.get("n")
    n_correct = sum(1 for r in records if r.get("correct"))
    count = f"n = {n}" + (f" of {n_cfg}" if isinstance(n_cfg, int) and n_cfg != n else "")
    lines = [f"model {model}" + (f" ({arch})" if arch and arch != model else "") + f" · {norm} · "
             f"{', '.join(config.get('methods', []))} · {count} ({n_correct} correct)"]
    covers = list(dict.fromkeys(str(r["certificate_covers"]) for r in records if r.get("certificate_covers")))
    if covers:
        lines.append("certificate covers: " + "; ".join(covers))
    nodes = sorted(max(n for _, n in r["trajectory_nodes"]) for r in records if r.get("trajectory_nodes"))
    if nodes:
        lines.append(f"trajectory graph: {nodes[len(nodes) // 2]} nodes per example (median; {nodes[0]}..{nodes[-1]})")
    return lines


def _title(ax: Any, what: str, context: list[str]) -> None:
    ax.set_title("\n".join([what, *context]), fontsize=9)


def _note(ax: Any, text: str, y: float = 0.5, color: str = "black") -> None:
    ax.text(0.5, y, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color=color, wrap=True,
            zorder=5, bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": color, "alpha": 0.8})


def _norm_label(config: dict[str, Any]) -> str:
    return "ℓ∞" if config["norm"] == "inf" else "ℓ2"


def _scatter_figure(config: dict[str, Any], records: Sequence[dict[str, Any]], context: list[str],
                    notes: list[str]) -> Figure:
    """Certified vs empirical radius per method, the y = x soundness limit; unchecked examples noted."""
    from matplotlib.figure import Figure

    recs = [r for r in records if r.get("correct")]
    norm = _norm_label(config)
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot()
    top = 0.0
    for m in config["methods"]:
        pts = [(r["empirical"], r["methods"][m]["radius"]) for r in recs
               if _finite(r.get("empirical")) and m in r["methods"]]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, label=m)
            top = max(top, *(max(p) for p in pts))
    unchecked = unchecked_note(records, config.get("attack", True))
    if unchecked:
        notes.append(unchecked)
    if not ax.collections:
        empty = ("empty: no example has both an empirical and a certified radius" if recs
                 else "empty: no correctly classified example")
        notes.append(f"scatter {empty}")
        _note(ax, empty, 0.6, "tab:red")
    if unchecked:
        _note(ax, unchecked, 0.92 if ax.collections else 0.4, "tab:red")
    top = top or 1.0
    ax.plot([0, top], [0, top], "k--", lw=1, label="y = x (soundness limit)")
    ax.set_xlabel(f"empirical radius ({norm}, attack)")
    ax.set_ylabel(f"certified radius ({norm})")
    ax.legend()
    _title(ax, "certified vs empirical radius", context)
    return fig


def _cdf_figure(config: dict[str, Any], records: Sequence[dict[str, Any]], context: list[str]) -> Figure:
    """The CDF of each method's certified radius and of the attack's, over the correct examples."""
    from matplotlib.figure import Figure

    recs = [r for r in records if r.get("correct")]
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    series = {m: [r["methods"][m]["radius"] for r in recs if m in r["methods"]] for m in config["methods"]}
    attacked = [r["empirical"] for r in recs if _finite(r.get("empirical"))]
    n_unchecked = len(recs) - len(attacked)
    series["attack (empirical" + (f", {n_unchecked} unchecked)" if n_unchecked else ")")] = attacked
    for name, vals in series.items():
        vals = sorted(v for v in vals if _finite(v))
        if vals:  # over every correct example: one the attack did not break never enters the curve
            ax.step(vals, [(k + 1) / len(recs) for k in range(len(vals))], where="post", label=name)
    if ax.lines:
        ax.legend()
    else:
        _note(ax, "empty: no finite radius to plot", 0.5, "tab:red")
    ax.set_xlabel(f"radius ({_norm_label(config)})")
    ax.set_ylabel("fraction of examples with radius ≤ r")
    _title(ax, "radius CDF (correctly classified examples)", context)
    return fig


def _growth_figure(config: dict[str, Any], records: Sequence[dict[str, Any]], context: list[str],
                   model: nn.Module | None) -> Figure | None:
    """Measured growth of each attack's δ through the steps, with lipbound's bound (None: no growth recorded)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    growth = [r["growth"] for r in records if r.get("correct") and r.get("growth")]
    if not growth:
        return None
    n = max(len(g) for g in growth)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for g in growth:
        ax.plot(range(1, len(g) + 1), g, color="tab:blue", alpha=0.2, lw=1)
    ax.plot([], [], color="tab:blue", label="measured ‖z_n − y_n‖ / ‖z_0 − y_0‖ (attack δ)")
    sym, why = _symbolic_growth(config, n, model)
    if sym:
        ax.plot(range(1, len(sym) + 1), sym, "r-o", label="symbolic growth bound (lipbound)")
    else:
        ax.plot([], [], " ", label=f"symbolic bound n/a: {why}"[:90])
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("residual block n" if config.get("arch") == "resnet" else "solver step n")
    ax.set_ylabel("perturbation growth (ℓ2 of the state)")
    ax.legend(fontsize=8)
    _title(ax, f"perturbation growth through the steps ({len(growth)} attacked examples)", context)
    return fig


def run_figures(out: str | os.PathLike[str], model: nn.Module | None = None) -> RunFigures:
    """The scatter, CDF and (ODE/ResNet runs) growth figures of a run directory.

    Args:
        out: the run directory (``config.json`` and ``results.jsonl`` or its shards).
        model: the run's model for the symbolic growth bound (default: resolve
            ``config["model"]``).

    Returns:
        the figures and the warnings they carry.

    Raises:
        RunConfigError: not a run directory or no results.
    """
    out = Path(out)
    if not (out / "config.json").exists():
        raise RunConfigError(f"{out} is not a certification run directory (no config.json)")
    config = json.loads((out / "config.json").read_text())
    records = _records(out)
    context = _context(config, records)
    notes: list[str] = []
    figures = {"scatter.png": _scatter_figure(config, records, context, notes),
               "cdf.png": _cdf_figure(config, records, context)}
    growth = _growth_figure(config, records, context, model)
    if growth is not None:
        figures["growth.png"] = growth
    return RunFigures(figures, tuple(notes))


def plot_run(out: str | os.PathLike[str], model: nn.Module | None = None) -> list[Path]:
    """Draw ``scatter.png``, ``cdf.png`` and (ODE/ResNet runs) ``growth.png`` into the run directory.

    Each of :attr:`RunFigures.warnings` is also issued as a :class:`PlotWarning`.

    Args:
        out: the run directory.
        model: see :func:`run_figures`.

    Returns:
        the paths written.

    Raises:
        RunConfigError: not a run directory or no results.
    """
    figs = run_figures(out, model)
    for line in figs.warnings:
        warnings.warn(line, PlotWarning, stacklevel=2)
    return figs.save(out)
