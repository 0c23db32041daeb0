"""Seed 000's last table: does the integration end time T make ODE-nets more robust?

Small and large ODE-nets are trained with end time T = 10, T ~ U[10, 100] (drawn per
batch) and T = 100, then tested at t ∈ {1, 10, 100, 500}: clean accuracy and accuracy
under FGSM (L∞, ε = 0.3, and 0.1 in a second table), the attack integrating to the same t
as the test. A 20-step PGD at each net's training end time checks whether FGSM's numbers
overstate robustness.

CPU budget: the seed integrated Chen et al.'s GroupNorm field with dopri5 on full MNIST.
We keep that field (its GroupNorm output bounds f, so long integrations cannot blow up;
in a pilot run the unnormalised verifiable field diverged when trained at T = 100: loss
~1e9 after one epoch) but integrate with
fixed-step RK4 (3/8 rule) of step at most :data:`MAX_STEP`: t is covered by
ceil(t / MAX_STEP) equal steps, so the cost grows linearly with t and is known in advance
(an adaptive solver's cost at t = 500 on a model trained at T = 10 is not). The same rule
holds in training, including the per-batch T of the U[10, 100] recipe.

References:
    Girard, Charpiat, Chihani & Schoenauer, "A security study of Neural ODEs", 2019 (seed 000,
    table "ODE integration time: a potential key towards robustness?", after
    rajatvd.github.io/Neural-ODE-Adversarial).
    Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018 (the field).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks import FGSM, PGD, evaluate, with_solver
from models import ODENet, SolverConfig, build_model, load_dataset
from models.train import Recipe, train

from ._common import StudyContext, StudyReport, Table, figure_path

NAME = "integration-time"
SEED = "000_581e31f95ddba4b5"
TITLE = "ODE-net integration time: clean / FGSM accuracy at test times t ∈ {1, 10, 100, 500} (seed 000's last table)"

#: Largest RK4 step: time t is integrated with ceil(t / MAX_STEP) equal steps.
MAX_STEP = 5.0
#: Test end times of the seed's table.
TEST_TIMES: tuple[float, ...] = (1.0, 10.0, 100.0, 500.0)
#: FGSM budgets: 0.3 (the main table: the seed's MNIST ε everywhere else; its last table does not
#: state one) and 0.1 (a second table, in case the seed's ε was smaller).
FGSM_EPS: tuple[float, ...] = (0.3, 0.1)
#: Field channels of the "small" and "large" nets (full mode; quick mode halves them).
CHANNELS: dict[str, int] = {"small": 8, "large": 16}


@dataclasses.dataclass(frozen=True)
class TrainTime:
    """A training end-time recipe.

    Args:
        label: the seed's row label ("10", "10-100", "100").
        T: end time of the stored solver (the upper end for a range).
        T_range: (lo, hi) for T ~ U[lo, hi] per batch, else None.
    """

    label: str
    T: float
    T_range: tuple[float, float] | None = None


TRAIN_TIMES: tuple[TrainTime, ...] = (TrainTime("10", 10.0), TrainTime("10-100", 100.0, (10.0, 100.0)),
                                      TrainTime("100", 100.0))

#: The seed's table: (net, training end time) -> (clean %, FGSM %) at t = 1, 10, 100, 500.
SEED_TIME_TABLE: dict[tuple[str, str], tuple[tuple[float, float], ...]] = {
    ("small", "10"): ((49.45, 0.0), (98.64, 9.34), (26.35, 12.83), (9.94, 8.09)),
    ("small", "10-100"): ((61.54, 0.0), (98.46, 0.52), (98.31, 23.64), (94.35, 11.67)),
    ("small", "100"): ((37.58, 0.0), (66.43, 0.0), (98.52, 13.25), (72.16, 14.16)),
    ("large", "10"): ((97.06, 0.18), (98.93, 30.76), (91.43, 28.20), (9.35, 8.57)),
    ("large", "10-100"): ((72.84, 0.15), (99.08, 70.67), (99.11, 85.98), (94.66, 62.29)),
    ("large", "100"): ((78.88, 0.59), (98.85, 83.13), (99.01, 92.62), (96.68, 78.60)),
}


def grid_solver(T: float, max_step: float = MAX_STEP) -> SolverConfig:
    """Fixed-step RK4 on [0, T] with ceil(T / max_step) equal steps (at least one).

    Args:
        T: integration end time.
        max_step: largest step.

    Returns:
        the solver configuration (``n_steps`` = ceil(T / max_step)).

    Raises:
        models.SolverConfigError: T not positive and finite.
    """
    return SolverConfig.fixed("rk4", max(1, math.ceil(T / max_step - 1e-9)), T)


class _MaxStepSolver(nn.Module):
    """Training view of an ODE-net whose solver setter keeps the step at most ``max_step``.

    :func:`models.train.train` draws T per batch for ``Recipe.T_range`` and keeps the
    number of steps of the base solver; through this view the step count follows T
    instead, as at test time.
    """

    def __init__(self, net: ODENet, max_step: float) -> None:
        super().__init__()
        self.net = net
        self.max_step = max_step

    @property
    def solver(self) -> SolverConfig:
        return self.net.solver

    @solver.setter
    def solver(self, value: SolverConfig) -> None:
        self.net.solver = grid_solver(value.T, self.max_step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _model_key(channels: int, tt: TrainTime, epochs: int, max_step: float, seed: int) -> str:
    return f"ode-c{channels}-T{tt.label}-h{max_step:g}-e{epochs}-seed{seed}"


def _train_model(ctx: StudyContext, channels: int, tt: TrainTime, recipe: Recipe, n_train: int,
                 max_step: float) -> tuple[nn.Module, dict[str, Any]]:
    def build() -> nn.Module:
        # Seeded initialisation: the three end-time recipes of one size start from the same weights.
        torch.manual_seed(ctx.seed)
        return build_model("ode", channels=channels, field="chen", head_pool=1,
                           solver=grid_solver(tt.T, max_step).to_dict())

    def fit(model: nn.Module, resume: Path) -> dict[str, Any]:
        x, y = load_dataset("mnist-t10k", "train", n=n_train)
        result = train(_MaxStepSolver(model, max_step), x, y, recipe, resume_path=resume, progress=ctx.progress)
        return {"dataset": "mnist-t10k", "split": "train", "train_n": n_train, "train_T": tt.label,
                "max_step": max_step, "recipe": dataclasses.asdict(recipe),
                "epoch_loss": [round(v, 5) for v in result.epoch_loss],
                "parameters": sum(p.numel() for p in model.parameters())}

    return ctx.model(_model_key(channels, tt, recipe.epochs, max_step, ctx.seed), build, fit)


def _time_cell(ctx: StudyContext, key: str, model: nn.Module, t: float, max_step: float, eps: float,
               x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Clean and FGSM accuracy at test time t; non-finite logits count as errors."""
    n = x.shape[0]

    def compute() -> dict[str, Any]:
        solver = grid_solver(t, max_step)
        with with_solver(model, solver), torch.no_grad():
            logits = torch.cat([model(x[i:i + 250]) for i in range(0, n, 250)])
        nfe = int(model.nfe)
        keep = torch.isfinite(logits).all(dim=1).nonzero().squeeze(1)
        out: dict[str, Any] = {"n": n, "nfe": nfe, "nonfinite": n - int(keep.numel()), "steps": solver.n_steps}
        if keep.numel() == 0:
            return out | {"clean": 0.0, "fgsm": 0.0, "fgsm_mean_l2": None, "seconds": 0.0}
        with with_solver(model, solver):
            rep = evaluate(model, x[keep], y[keep], FGSM(model, eps, "inf", seed=ctx.seed), batch_size=250,
                           checks=False)
        frac = keep.numel() / n
        return out | {"clean": rep.clean_accuracy * frac, "fgsm": rep.robust_accuracy * frac,
                      "fgsm_mean_l2": None if math.isnan(rep.mean_l2) else rep.mean_l2,
                      "seconds": round(rep.seconds, 2)}

    return ctx.cell(f"{key}|t={t:g}|n={n}|fgsm eps={eps:g}|seed={ctx.seed}", compute)


def _pgd_cell(ctx: StudyContext, key: str, model: nn.Module, t: float, max_step: float, eps: float, steps: int,
              x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """FGSM vs PGD accuracy at time t on a subset: is a high FGSM accuracy real or masked gradients?"""
    n = x.shape[0]

    def compute() -> dict[str, Any]:
        with with_solver(model, grid_solver(t, max_step)):
            fg = evaluate(model, x, y, FGSM(model, eps, "inf", seed=ctx.seed), batch_size=250, checks=False)
            pgd = evaluate(model, x, y, PGD(model, eps, "inf", steps=steps, step_size=2.5 * eps / steps,
                                           seed=ctx.seed), batch_size=250, checks=False)
        return {"n": n, "t": t, "eps": eps, "steps": steps, "clean": fg.clean_accuracy, "fgsm": fg.robust_accuracy,
                "pgd": pgd.robust_accuracy}

    return ctx.cell(f"{key}|pgd-check|t={t:g}|n={n}|eps={eps:g}|steps={steps}|seed={ctx.seed}", compute)


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"



#: cells[(size, training label)][ε][t] -> the measured cell.
_Cells = dict[tuple[str, str], dict[float, dict[float, dict[str, Any]]]]


def _figure(ctx: StudyContext, sizes: Sequence[str], cells: _Cells) -> str:
    from matplotlib.figure import Figure

    path, rel = figure_path(ctx, "accuracy")
    fig = Figure(figsize=(9, 3.4 * len(FGSM_EPS)), dpi=100)
    colors = {"10": "tab:blue", "10-100": "tab:green", "100": "tab:red"}
    for i, eps in enumerate(FGSM_EPS):
        for j, size in enumerate(sizes):
            ax = fig.add_subplot(len(FGSM_EPS), len(sizes), i * len(sizes) + j + 1)
            for tt in TRAIN_TIMES:
                c, row = colors[tt.label], cells[(size, tt.label)][eps]
                ax.plot(TEST_TIMES, [100 * row[t]["clean"] for t in TEST_TIMES], "-o", color=c, ms=4,
                        label=f"T={tt.label}: clean")
                ax.plot(TEST_TIMES, [100 * row[t]["fgsm"] for t in TEST_TIMES], "--s", color=c, ms=4,
                        label=f"T={tt.label}: FGSM")
                seed = SEED_TIME_TABLE[(size, tt.label)]
                ax.plot(TEST_TIMES, [v[0] for v in seed], "x", color=c, ms=6, alpha=0.6)
                ax.plot(TEST_TIMES, [v[1] for v in seed], "+", color=c, ms=7, alpha=0.6)
            ax.set_xscale("log")
            ax.set_ylim(-2, 102)
            ax.set_xlabel("test end time t")
            ax.set_ylabel("accuracy (%)")
            ax.set_title(f"ODE-net {size}, FGSM ε={eps:g} (lines: ours; x, +: seed 000 clean, FGSM)", fontsize=8)
            if i == 0 and j == 0:
                ax.legend(fontsize=6, loc="center left")
    fig.tight_layout()
    fig.savefig(path)
    return rel


def _accuracy_table(sizes: Sequence[str], channels: dict[str, int], params: dict[str, Any], cells: _Cells,
                    eps: float) -> Table:
    rows = []
    for size in sizes:
        for tt in TRAIN_TIMES:
            row: list[Any] = [f"ODE-net {size}", channels[size], params[size], tt.label]
            for t, seed in zip(TEST_TIMES, SEED_TIME_TABLE[(size, tt.label)]):
                c = cells[(size, tt.label)][eps][t]
                row += [f"{_pct(c['clean'])} / {_pct(c['fgsm'])}", f"{seed[0]:.2f} / {seed[1]:.2f}"]
            rows.append(tuple(row))
    columns: tuple[str, ...] = ("network", "channels", "parameters", "training end time")
    for t in TEST_TIMES:
        columns += (f"t={t:g}", f"t={t:g}, seed 000")
    return Table(f"Clean / FGSM (ε={eps:g}) accuracy in % at test end time t, ours next to the seed's", columns,
                 tuple(rows), note="Seed columns: seed 000, table \"ODE integration time: a potential key towards "
                                   "robustness?\" (its small/large nets and FGSM ε are not specified; the same seed "
                                   "numbers stand next to each of our ε).")


def _findings(sizes: Sequence[str], channels: dict[str, int], max_step: float, n_train: int, epochs: int,
              cells: _Cells, pgd: dict[tuple[str, str, float], dict[str, Any]]) -> list[str]:
    out = []
    main, low = FGSM_EPS[0], FGSM_EPS[-1]
    for size in sizes:
        c10, cr, c100 = (cells[(size, lab)][main] for lab in ("10", "10-100", "100"))
        s10, sr, s100 = (SEED_TIME_TABLE[(size, lab)] for lab in ("10", "10-100", "100"))
        out.append(f"{size} net ({channels[size]} channels), clean accuracy: trained at T=10 it reaches "
                   f"{_pct(c10[10.0]['clean'])}% at t=10 but {_pct(c10[100.0]['clean'])}% at t=100 and "
                   f"{_pct(c10[500.0]['clean'])}% at t=500 (seed {s10[1][0]}, {s10[2][0]}, {s10[3][0]}); trained "
                   f"with T~U[10,100] it keeps {_pct(cr[500.0]['clean'])}% at t=500 (seed {sr[3][0]}), trained at "
                   f"T=100 {_pct(c100[500.0]['clean'])}% (seed {s100[3][0]}); the T=100 net at t=1 / t=10: "
                   f"{_pct(c100[1.0]['clean'])}% / {_pct(c100[10.0]['clean'])}% (seed {s100[0][0]} / {s100[1][0]}).")
    best = max((cells[k][main][t]["fgsm"], k, t) for k in cells for t in TEST_TIMES)
    out.append(f"FGSM ε={main:g} breaks every net at every t here: the highest FGSM accuracy is {_pct(best[0])}% "
               f"({best[1][0]} net, T={best[1][1]}, t={best[2]:g}), where the seed's large nets trained with "
               "T~U[10,100] or T=100 keep 62-93% for t ≥ 10. We do not reproduce that robustness at ε=0.3."
               if best[0] < 0.3 else
               f"FGSM ε={main:g}: the highest FGSM accuracy is {_pct(best[0])}% ({best[1][0]} net, T={best[1][1]}, "
               f"t={best[2]:g}); the seed's large nets trained with T~U[10,100] or T=100 keep 62-93% for t ≥ 10.")
    for size in sizes:
        a10 = cells[(size, "10")][low][10.0]["fgsm"]
        a100 = cells[(size, "100")][low][100.0]["fgsm"]
        ar = cells[(size, "10-100")][low][100.0]["fgsm"]
        trend = "higher" if a100 > a10 else "lower"
        out.append(f"{size} net, FGSM ε={low:g} at the training end time: {_pct(a10)}% (T=10, t=10), {_pct(ar)}% "
                   f"(T~U[10,100], t=100), {_pct(a100)}% (T=100, t=100): the longer integration gives {trend} "
                   "FGSM accuracy at this ε.")
    parts = [f"{size} T={lab} ε={eps:g}: FGSM {_pct(v['fgsm'])}% vs PGD-{v['steps']} {_pct(v['pgd'])}%"
             for (size, lab, eps), v in pgd.items()]
    n_pgd = next(iter(pgd.values()))["n"]
    out.append(f"PGD at the training end time (n={n_pgd}): " + "; ".join(parts) + ". Where PGD is far below "
               "FGSM, the FGSM number overstates robustness (one gradient step is a weak attack through a long "
               "integration); the seed's table is FGSM only.")
    out.append(f"Differences from the seed: fixed-step RK4 (step ≤ {max_step:g}) instead of dopri5, "
               f"{channels['small']}/{channels['large']}-channel nets, training on {n_train} images of the mnist-t10k "
               f"protocol for {epochs} epoch(s) (CPU budget) instead of full MNIST; the seed's FGSM ε is not stated.")
    return out


@dataclasses.dataclass(frozen=True)
class _Mode:
    """The sizes of one mode (quick or full): nets, training, evaluation.

    Attributes:
        channels: field channels per net size.
        n_train, epochs, batch, schedule: training images and recipe.
        max_step: largest RK4 step in training and testing.
        n: evaluation images; n_pgd, pgd_steps: the PGD check's images and steps.
    """

    channels: dict[str, int]
    n_train: int
    epochs: int
    batch: int
    max_step: float
    schedule: str
    n: int
    n_pgd: int
    pgd_steps: int

    @classmethod
    def of(cls, ctx: StudyContext) -> _Mode:
        """The sizes of ``ctx``'s mode (``--n`` overrides the number of evaluation images)."""
        n = ctx.n(30, 1000)
        # Quick mode: coarse steps (cost / 5) and a constant learning rate so that one short epoch learns something.
        return cls(channels={s: ctx.pick(c // 2, c) for s, c in CHANNELS.items()}, n_train=ctx.pick(2000, 8000),
                   epochs=ctx.pick(1, 4), batch=ctx.pick(32, 128), max_step=ctx.pick(25.0, MAX_STEP),
                   schedule=ctx.pick("constant", "cosine"), n=n, n_pgd=min(n, ctx.pick(10, 200)),
                   pgd_steps=ctx.pick(5, 20))


def run(ctx: StudyContext) -> StudyReport:
    """Train the six nets (cached), test them at every t, and compare with the seed's table.

    Args:
        ctx: the study context (quick or full mode, seed, output directory).

    Returns:
        the report: two accuracy tables (FGSM ε = 0.3 and 0.1) and a cost / PGD-check table.
    """
    sizes = tuple(CHANNELS)
    mode = _Mode.of(ctx)
    x, y = load_dataset("mnist-t10k", "test", n=mode.n)
    cells, pgd, metas = _train_and_test(ctx, mode, sizes, x.to(ctx.device), y.to(ctx.device))
    params = {size: metas[(size, "10")].get("parameters") for size in sizes}
    tables = [_accuracy_table(sizes, mode.channels, params, cells, eps) for eps in FGSM_EPS]
    tables.append(_cost_table(mode, sizes, cells, pgd, metas))
    data = {"cells": {f"{s}|T={lab}": {f"{eps:g}": {f"{t:g}": v for t, v in by_t.items()} for eps, by_t in row.items()}
                      for (s, lab), row in cells.items()},
            "pgd_check": {f"{s}|T={lab}|eps={eps:g}": v for (s, lab, eps), v in pgd.items()},
            "models": {f"{s}|T={lab}": v for (s, lab), v in metas.items()}}
    findings = _findings(sizes, mode.channels, mode.max_step, mode.n_train, mode.epochs, cells, pgd)
    return StudyReport(NAME, TITLE, SEED, ctx.quick, _protocol(ctx, mode), tuple(tables),
                       (_figure(ctx, sizes, cells),), tuple(findings), data)


_PGDCells = dict[tuple[str, str, float], dict[str, Any]]
_Metas = dict[tuple[str, str], dict[str, Any]]


def _train_and_test(ctx: StudyContext, mode: _Mode, sizes: Sequence[str], x: torch.Tensor, y: torch.Tensor
                    ) -> tuple[_Cells, _PGDCells, _Metas]:
    """Every (size, training time) net, trained once, then its clean / FGSM cells at every t and its PGD check.

    Returns:
        (cells[(size, label)][ε][t], pgd[(size, label, ε)], training metadata[(size, label)]).
    """
    cells: _Cells = {}
    pgd: _PGDCells = {}
    metas: _Metas = {}
    for size in sizes:
        for tt in TRAIN_TIMES:
            recipe = Recipe(epochs=mode.epochs, batch_size=mode.batch, lr=5e-3, schedule=mode.schedule,
                            seed=ctx.seed, T_range=tt.T_range)
            model, meta = _train_model(ctx, mode.channels[size], tt, recipe, mode.n_train, mode.max_step)
            key = _model_key(mode.channels[size], tt, mode.epochs, mode.max_step, ctx.seed)
            metas[(size, tt.label)] = meta
            cells[(size, tt.label)] = {eps: {t: _time_cell(ctx, key, model, t, mode.max_step, eps, x, y)
                                             for t in TEST_TIMES} for eps in FGSM_EPS}
            for eps in FGSM_EPS:
                pgd[(size, tt.label, eps)] = _pgd_cell(ctx, key, model, tt.T, mode.max_step, eps, mode.pgd_steps,
                                                       x[:mode.n_pgd], y[:mode.n_pgd])
    return cells, pgd, metas


def _cost_table(mode: _Mode, sizes: Sequence[str], cells: _Cells, pgd: _PGDCells, metas: _Metas) -> Table:
    """Last table: training cost, NFE per t, non-finite outputs and the FGSM / PGD check per net."""
    cost_rows = []
    for size in sizes:
        for tt in TRAIN_TIMES:
            meta, c = metas[(size, tt.label)], cells[(size, tt.label)][FGSM_EPS[0]]
            checks = [f"{_pct(pgd[(size, tt.label, e)]['fgsm'])} / {_pct(pgd[(size, tt.label, e)]['pgd'])}"
                      for e in FGSM_EPS]
            cost_rows.append((f"ODE-net {size}", tt.label, meta.get("train_seconds"), meta["epoch_loss"][-1],
                              *[c[t]["nfe"] for t in TEST_TIMES],
                              sum(c[t]["nonfinite"] for t in TEST_TIMES), *checks))
    return Table(
        "Training cost, NFE per forward at each t, and FGSM vs PGD at the training end time",
        ("network", "training end time", "train s", "final train loss", *[f"NFE t={t:g}" for t in TEST_TIMES],
         "non-finite outputs", *[f"FGSM / PGD-{mode.pgd_steps} % at ε={e:g} (n={mode.n_pgd})" for e in FGSM_EPS]),
        tuple(cost_rows),
        note="FGSM vs PGD (α=2.5ε/steps, random start) at t = the training end time (T=100 for the U[10,100] "
             "nets), same images.")


def _protocol(ctx: StudyContext, mode: _Mode) -> dict[str, Any]:
    """Data, models, training, solver, attack and accuracy rule of the report."""
    channels, max_step = mode.channels, mode.max_step
    return {
        "data": f"mnist-t10k: train on the first {mode.n_train} of images 0-7999, test on the first {mode.n} "
                "held-out images (8000-9999)",
        "n": mode.n,
        "models": (f"ODE-net with Chen et al.'s GroupNorm field (time channel), {channels['small']} (small) and "
                   f"{channels['large']} (large) channels, 7x7 head without pooling"),
        "training": (f"{mode.epochs} epoch(s), AdamW lr 5e-3 {mode.schedule}, batch {mode.batch}, ±2 px shifts, "
                     f"seed {ctx.seed}; T=10, T=100, or T~U[10,100] drawn per batch (Recipe.T_range)"),
        "solver": (f"fixed-step RK4 (3/8 rule), ceil(t/{max_step:g}) equal steps on [0, t] in training and testing "
                   "(the seed: dopri5; fixed steps keep the T=100 trainings and t=500 tests within the CPU budget "
                   "and make their cost predictable)"),
        "attack": (f"FGSM L∞ ε ∈ {{{', '.join(f'{e:g}' for e in FGSM_EPS)}}} integrating to the test time t "
                   f"(gradient through the solver steps); PGD check: {mode.pgd_steps} steps, α=2.5ε/steps, random "
                   f"start, on {mode.n_pgd} images"),
        "accuracy": "non-finite logits count as errors (none expected: the field's GroupNorm output keeps the "
                    "state bounded)",
    }


__all__ = ["CHANNELS", "FGSM_EPS", "MAX_STEP", "NAME", "SEED", "SEED_TIME_TABLE", "TEST_TIMES", "TITLE",
           "TRAIN_TIMES", "TrainTime", "grid_solver", "run"]
