"""Seed 000, "ODE Nets are more vulnerable": LeNet-5 vs ODE-nets under FGSM, C&W-L2 and PGD.

The seed's table reports, per model and attack, "mean L2 / accuracy". We evaluate the zoo
models ``lenet5``, ``ode`` (the verifiable-field ODE-net, fixed-step RK4) and, when its
checkpoint is present, ``ode-chen`` (Chen et al.'s GroupNorm field with dopri5, the
closest to the seed's ODE-net) on the held-out images of ``mnist-t10k``.

This module also holds the machinery :mod:`studies.girard_advtrain` reuses
(:class:`AttackSettings`, :class:`ModelPlan`, :func:`attack_cells`, the tables and figures).

References:
    Girard, Charpiat, Chihani & Schoenauer, "A security study of Neural ODEs", 2019 (seed 000).
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018 (PGD).
    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attacks import CW, FGSM, PGD, Attack, evaluate
from models import load_dataset, zoo

from ._common import StudyContext, StudyReport, Table, figure_path

NAME = "girard-attacks"
SEED = "000_581e31f95ddba4b5"
TITLE = "ODE-nets vs LeNet-5 under FGSM, C&W-L2 and PGD (seed 000: \"ODE Nets are more vulnerable\")"

#: Attacks of the seed's tables, in its column order.
ATTACK_KINDS: tuple[str, ...] = ("fgsm", "cw", "pgd")
ATTACK_LABELS: dict[str, str] = {"fgsm": "FGSM (ε=0.3)", "cw": "C&W-L2", "pgd": "PGD (ε=0.3)"}

#: Seed 000, slide "ODE Nets are more vulnerables", MNIST rows: (mean L2, accuracy in %).
SEED_TABLE: dict[str, dict[str, tuple[float, float]]] = {
    "classical": {"fgsm": (6.23, 5.19), "cw": (2.39, 0.21), "pgd": (5.62, 4.17)},
    "ode": {"fgsm": (6.02, 8.56), "cw": (0.82, 0.01), "pgd": (4.54, 4.34)},
}
SEED_SOURCE = "seed 000, slide \"ODE Nets are more vulnerables\", MNIST rows"

DATA_PROTOCOL = "mnist-t10k (train 0-7999, held out 8000-9999); evaluation on the first n held-out images"


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """Hyper-parameters of the three attacks (the seed states only ε).

    Args:
        eps: L∞ budget of FGSM and PGD.
        pgd_steps: PGD iterations (one run, uniform random start).
        cw_steps: Adam steps per binary-search round of C&W.
        cw_binary_search_steps: rounds of the search over the constant c.
        cw_initial_const: first c.
        cw_lr: Adam learning rate of C&W (in tanh space).
    """

    eps: float = 0.3
    pgd_steps: int = 40
    # attacks.cw.CW_DEFAULTS but c0 = 0.1 (defaults: 1): the setting the published table and its
    # cached cells (keyed by it) were made with; on zoo lenet5 both c0 give the same median L2.
    cw_steps: int = 100
    cw_binary_search_steps: int = 5
    cw_initial_const: float = 0.1
    cw_lr: float = 0.1

    @property
    def pgd_step_size(self) -> float:
        """α = 2.5 ε / steps (Madry et al.'s rule)."""
        return 2.5 * self.eps / self.pgd_steps

    def build(self, kind: str, model: nn.Module, seed: int) -> Attack:
        """The attack ``kind`` ("fgsm", "cw" or "pgd") on ``model``.

        Raises:
            ValueError: unknown kind.
        """
        if kind == "fgsm":
            return FGSM(model, self.eps, "inf", seed=seed)
        if kind == "pgd":
            return PGD(model, self.eps, "inf", steps=self.pgd_steps, step_size=self.pgd_step_size,
                       random_start=True, seed=seed)
        if kind == "cw":
            return CW(model, steps=self.cw_steps, binary_search_steps=self.cw_binary_search_steps,
                      initial_const=self.cw_initial_const, lr=self.cw_lr, seed=seed)
        raise ValueError(f"unknown attack {kind!r}; choose one of {', '.join(ATTACK_KINDS)}")

    def key(self, kind: str) -> str:
        """The parameters ``kind`` depends on, for cell keys."""
        if kind == "fgsm":
            return f"eps={self.eps:g}"
        if kind == "pgd":
            return f"eps={self.eps:g},steps={self.pgd_steps},alpha={self.pgd_step_size:.6g}"
        return (f"steps={self.cw_steps},bss={self.cw_binary_search_steps},c0={self.cw_initial_const:g},"
                f"lr={self.cw_lr:g}")

    def describe(self) -> dict[str, str]:
        """Protocol text per attack."""
        return {
            "FGSM": f"L∞, ε={self.eps:g}, cross-entropy gradient sign, one step",
            "PGD": (f"L∞, ε={self.eps:g}, {self.pgd_steps} steps of α=2.5ε/steps={self.pgd_step_size:.4g}, "
                    "uniform random start, 1 run, best iterate kept (the seed states only ε; "
                    "Madry et al.'s step rule)"),
            "C&W-L2": (f"unbounded minimum-L2, {self.cw_binary_search_steps} binary-search rounds over c from "
                       f"c0={self.cw_initial_const:g}, {self.cw_steps} Adam steps of lr={self.cw_lr:g} per round, "
                       "confidence 0, abort early"),
        }


#: Settings of the full mode.
FULL_SETTINGS = AttackSettings()
#: Settings of the quick mode (fewer iterations: it only exercises the code).
QUICK_SETTINGS = AttackSettings(pgd_steps=10, cw_steps=20, cw_binary_search_steps=3)


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """One row of the tables: a zoo model and how many examples each attack gets.

    Args:
        name: zoo name.
        label: row label.
        seed_row: key of the seed's table row it is compared with (None: no seed row).
        n: examples for FGSM and PGD (first n held-out images).
        n_cw: examples for C&W (a prefix of the same images).
        check_n: examples of the attack validity checks (0: no checks).
        cw_checks: run the validity checks on C&W too (they double its cost).
    """

    name: str
    label: str
    seed_row: str | None
    n: int
    n_cw: int
    check_n: int
    cw_checks: bool = True

    def n_for(self, kind: str) -> int:
        """Examples attacked by ``kind``."""
        return self.n_cw if kind == "cw" else self.n

    def checks_for(self, kind: str) -> int:
        """Validity-check examples for ``kind`` (0: none)."""
        return 0 if kind == "cw" and not self.cw_checks else self.check_n


def attack_cell(ctx: StudyContext, plan: ModelPlan, model: nn.Module, kind: str, settings: AttackSettings,
                x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Evaluate one (model, attack) pair, cached in ``cells.jsonl``.

    Returns:
        ``{"report": EvalReport.to_dict(), "example": {...}}``; the example is the first
        correctly classified image attacked alone (for the figure): its index, label,
        prediction after the attack, L2 and the adversarial image (rounded to 1e-3).
    """
    n, check_n = plan.n_for(kind), plan.checks_for(kind)
    key = f"{plan.name}|{kind}|{settings.key(kind)}|n={n}|check_n={check_n}|seed={ctx.seed}"

    def compute() -> dict[str, Any]:
        xs, ys = x[:n].to(ctx.device), y[:n].to(ctx.device)
        attack = settings.build(kind, model, ctx.seed)
        report = evaluate(model, xs, ys, attack, batch_size=100, checks=check_n > 0, check_n=max(1, check_n),
                          seed=ctx.seed, progress=ctx.progress)
        with torch.no_grad():
            correct = (model(xs).argmax(1) == ys).nonzero().squeeze(1)
        example: dict[str, Any] | None = None
        if correct.numel():
            i = int(correct[0])
            r = settings.build(kind, model, ctx.seed)(xs[i:i + 1], ys[i:i + 1])
            with torch.no_grad():
                pred = int(model(r.x_adv).argmax(1))
            example = {"index": i, "label": int(ys[i]), "pred": pred, "l2": float(r.l2[0]),
                       "x_adv": [round(float(v), 3) for v in r.x_adv[0].flatten().cpu()]}
        return {"report": report.to_dict(), "example": example}

    return ctx.cell(key, compute)


def attack_cells(ctx: StudyContext, plans: Sequence[ModelPlan], settings: AttackSettings
                 ) -> dict[str, dict[str, dict[str, Any]]]:
    """Every (model, attack) cell of ``plans``: ``cells[model_name][attack_kind]``.

    Raises:
        models.zoo.UnknownModelError: a planned zoo model has no checkpoint.
    """
    n_max = max(max(p.n, p.n_cw) for p in plans)
    x, y = load_dataset("mnist-t10k", "test", n=n_max)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for plan in plans:
        model = ctx.zoo(plan.name)
        out[plan.name] = {kind: attack_cell(ctx, plan, model, kind, settings, x, y) for kind in ATTACK_KINDS}
    return out


def seed_format(mean_l2: float | None, accuracy: float | None) -> str:
    """The seed's "mean L2 / accuracy" text, accuracy given in [0, 1] (mean L2 None: "–")."""
    l2 = "–" if mean_l2 is None or (isinstance(mean_l2, float) and math.isnan(mean_l2)) else f"{mean_l2:.2f}"
    acc = "–" if accuracy is None else f"{100 * accuracy:.2f}%"
    return f"{l2}/{acc}"


def attack_columns() -> tuple[str, ...]:
    """Columns of the seed-format cells: for each attack, ours and then the seed's."""
    return tuple(c for kind in ATTACK_KINDS for c in (ATTACK_LABELS[kind], f"{ATTACK_LABELS[kind]}, seed 000"))


def attack_row(cells: dict[str, dict[str, Any]], seed_row: dict[str, tuple[float, float]] | None) -> list[str | None]:
    """One model's seed-format cells ("mean L2 / accuracy"), in :func:`attack_columns` order."""
    out: list[str | None] = []
    for kind in ATTACK_KINDS:
        r = cells[kind]["report"]
        out += [seed_format(r["mean_l2"], r["robust_accuracy"]), seed_cell(seed_row, kind)]
    return out


def plan_protocol(plans: Sequence[ModelPlan]) -> dict[str, Any]:
    """The protocol entries that describe the evaluated models: n per attack and the zoo recipe."""
    return {"n": {p.name: {"FGSM/PGD": p.n, "C&W": p.n_cw, "validity checks": p.check_n} for p in plans},
            "models": {p.name: zoo.PRESETS[p.name].description for p in plans}}


def reports(plans: Sequence[ModelPlan], cells: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Every attack report per model, for the study's JSON."""
    return {p.name: {k: cells[p.name][k]["report"] for k in ATTACK_KINDS} for p in plans}


def seed_cell(seed_row: dict[str, tuple[float, float]] | None, kind: str) -> str | None:
    """The seed's reported "mean L2 / accuracy" for ``kind`` (None where it has no row)."""
    if seed_row is None or kind not in seed_row:
        return None
    l2, acc = seed_row[kind]
    return f"{l2:.2f}/{acc:.2f}%"


def checks_text(report: dict[str, Any]) -> str:
    """"pass", "not run" or "fail: <names>" for a report's validity checks."""
    checks = report.get("checks") or []
    if not checks:
        return "not run"
    failed = [c["name"] for c in checks if c["status"] == "fail"]
    return "fail: " + ", ".join(failed) if failed else "pass"


def detail_table(plans: Sequence[ModelPlan], cells: dict[str, dict[str, dict[str, Any]]], title: str) -> Table:
    """Long-form table: every number of every (model, attack) report."""
    rows = []
    for plan in plans:
        for kind in ATTACK_KINDS:
            r = cells[plan.name][kind]["report"]
            rows.append((plan.label, ATTACK_LABELS[kind], r["n"], round(100 * r["clean_accuracy"], 2),
                         round(100 * r["robust_accuracy"], 2), round(100 * r["success_rate"], 2),
                         r["mean_l2"], r["median_l2"], r["mean_linf"], checks_text(r), round(r["seconds"], 1)))
    return Table(title, ("model", "attack", "n", "clean acc %", "robust acc %", "success rate %",
                         "mean L2", "median L2", "mean L∞", "validity checks", "attack s"), tuple(rows),
                 note="Norms over successful adversarial examples; robust accuracy over all n (clean errors "
                      "count as errors); success rate over correctly classified examples. Validity checks: "
                      "attacks.evaluate's checks (iterative ≥ single step, unbounded reaches 100 %, ε sweep "
                      "monotone, doubling the steps changes little, healthy gradients, no randomness, "
                      "white box ≥ Boundary Attack) on the first correctly classified examples.")


def bar_figure(ctx: StudyContext, plans: Sequence[ModelPlan], cells: dict[str, dict[str, dict[str, Any]]],
               seed_rows: dict[str, dict[str, tuple[float, float]]], stem: str, title: str) -> str:
    """Grouped bars of accuracy (left) and mean L2 (right) under each attack, ours (solid)
    next to the seed's (hatched).

    Returns:
        the figure's file name relative to the output directory.
    """
    from matplotlib.figure import Figure

    path, rel = figure_path(ctx, stem)
    fig = Figure(figsize=(11, 4.4), dpi=100)
    width = 0.8 / (2 * len(plans))
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for a, (field, ylabel) in enumerate((("robust_accuracy", "accuracy under attack (%)"),
                                         ("mean_l2", "mean L2 of successful adversarials"))):
        ax = fig.add_subplot(1, 2, a + 1)
        for j, plan in enumerate(plans):
            vals = [cells[plan.name][k]["report"][field] for k in ATTACK_KINDS]
            ours = [0.0 if v is None else (100 * v if a == 0 else v) for v in vals]
            pos = [i + (2 * j) * width - 0.4 + width / 2 for i in range(len(ATTACK_KINDS))]
            ax.bar(pos, ours, width, color=colors[j % len(colors)], label=f"{plan.label} (ours)")
            if plan.seed_row is not None and plan.seed_row in seed_rows:
                seed = [seed_rows[plan.seed_row][k][1 - a] for k in ATTACK_KINDS]
                ax.bar([p + width for p in pos], seed, width, color="white", edgecolor=colors[j % len(colors)],
                       hatch="//", label=f"{plan.label}: seed's {plan.seed_row} row")
        ax.set_xticks(range(len(ATTACK_KINDS)), [ATTACK_LABELS[k] for k in ATTACK_KINDS])
        ax.set_ylabel(ylabel)
        if a == 0:
            ax.set_ylim(0, 100)
    fig.suptitle(title, fontsize=10)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(4, len(labels)))
    fig.tight_layout(rect=(0, 0.05 + 0.04 * math.ceil(len(labels) / 4), 1, 0.95))
    fig.savefig(path)
    return rel


def examples_figure(ctx: StudyContext, plans: Sequence[ModelPlan], cells: dict[str, dict[str, dict[str, Any]]],
                    stem: str) -> str:
    """The seed's "visual clues": per model, a clean image and its FGSM, C&W and PGD versions."""
    from matplotlib.figure import Figure

    path, rel = figure_path(ctx, stem)
    n_max = max(max(p.n, p.n_cw) for p in plans)
    x, _ = load_dataset("mnist-t10k", "test", n=n_max)
    fig = Figure(figsize=(1.6 * (1 + len(ATTACK_KINDS)), 1.7 * len(plans)), dpi=100)
    for r, plan in enumerate(plans):
        for c, kind in enumerate(("clean",) + ATTACK_KINDS):
            ax = fig.add_subplot(len(plans), 1 + len(ATTACK_KINDS), r * (1 + len(ATTACK_KINDS)) + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            ex = cells[plan.name][ATTACK_KINDS[max(0, c - 1)]]["example"]
            if ex is None:
                continue
            if kind == "clean":
                img = x[ex["index"], 0]
                ax.set_title(f"{plan.label}\nlabel {ex['label']}", fontsize=7)
            else:
                img = torch.tensor(ex["x_adv"]).view(28, 28)
                ax.set_title(f"{ATTACK_LABELS[kind]}\npred {ex['pred']}, L2 {ex['l2']:.2f}", fontsize=7)
            ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
    fig.tight_layout()
    fig.savefig(path)
    return rel


def _plans(ctx: StudyContext) -> list[ModelPlan]:
    n = ctx.n(10, 500)
    check_n = ctx.pick(4, 32)
    plans = [ModelPlan("lenet5", "LeNet-5", "classical", n, n, check_n),
             ModelPlan("ode", "ODE-net (verifiable, RK4)", "ode", n, n, check_n)]
    if "ode-chen" in zoo.available():
        # dopri5 costs ~25 NFE per forward and C&W ~5 s per image on one thread: fewer images, checks
        # only where they are affordable.
        plans.append(ModelPlan("ode-chen", "ODE-net (Chen, dopri5)", "ode", min(n, ctx.pick(3, 100)),
                               min(n, ctx.pick(3, 30)), ctx.pick(0, 10), cw_checks=False))
    return plans


def _acc(cells: dict[str, dict[str, dict[str, Any]]], name: str, kind: str) -> float:
    return float(cells[name][kind]["report"]["robust_accuracy"])


def _l2(cells: dict[str, dict[str, dict[str, Any]]], name: str, kind: str) -> float | None:
    return cells[name][kind]["report"]["mean_l2"]


def findings(plans: Sequence[ModelPlan], cells: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Sentences comparing our numbers with the seed's."""
    out: list[str] = []
    le, od = "lenet5", "ode"
    l_cw, o_cw = _l2(cells, le, "cw"), _l2(cells, od, "cw")
    if l_cw is not None and o_cw is not None:
        easier = "smaller" if o_cw < l_cw else "larger"
        agree = ("the seed's claim that ODE-nets are more vulnerable holds for minimum-norm attacks"
                 if o_cw < l_cw else "unlike the seed, the ODE-net is not the easier model")
        out.append(f"C&W-L2 needs a {easier} mean perturbation on the ODE-net than on LeNet-5 "
                   f"({o_cw:.2f} vs {l_cw:.2f}, ratio {o_cw / l_cw:.2f}; seed: 0.82 vs 2.39, ratio 0.34): {agree}.")
    if "ode-chen" in cells:
        r = cells["ode-chen"]["cw"]["report"]
        if r["mean_l2"] is not None and l_cw is not None:
            out.append(f"The Chen-style dopri5 ODE-net needs mean C&W L2 {r['mean_l2']:.2f} (LeNet-5: {l_cw:.2f}), "
                       f"measured on only its first {r['n']} images (C&W through dopri5 costs ~5 s per image on one "
                       f"thread); C&W left {100 * r['robust_accuracy']:.1f}% of them unbroken within its budget.")
    fg_l, fg_o = _acc(cells, le, "fgsm"), _acc(cells, od, "fgsm")
    verdict = ("one gradient step breaks both models at this ε, as in the seed, so this column cannot rank them"
               if max(fg_l, fg_o) < 0.2 else "more survives one gradient step here than in the seed")
    out.append(f"FGSM ε=0.3 leaves LeNet-5 {100 * fg_l:.1f}% and the ODE-net {100 * fg_o:.1f}% accuracy "
               f"(seed: 5.19% and 8.56%): {verdict}. Its mean L2 (~6) is set by ε and the number of pixels "
               "the step moves, not by the model.")
    steps = cells[le]["pgd"]["report"]["params"].get("steps")
    out.append(f"PGD ε=0.3 ({steps} steps) leaves LeNet-5 {100 * _acc(cells, le, 'pgd'):.1f}% and the ODE-net "
               f"{100 * _acc(cells, od, 'pgd'):.1f}% accuracy; the seed reports 4.17% and 4.34%, close to its FGSM "
               "numbers, which suggests its PGD ran fewer or smaller steps (it states only ε).")
    failed = [f"{p.label} / {ATTACK_LABELS[k]} ({checks_text(cells[p.name][k]['report'])[6:]})"
              for p in plans for k in ATTACK_KINDS if checks_text(cells[p.name][k]["report"]).startswith("fail")]
    if failed:
        why = (" A failed white_vs_black_box on FGSM means the Boundary Attack found an adversarial within ε "
               "where the single FGSM step did not: FGSM is a weak attack, PGD gives the robustness estimate."
               if any("FGSM" in f and "white_vs_black_box" in f for f in failed) else "")
        out.append("Validity checks that failed: " + "; ".join(failed) + "." + why)
    out.append("Why numbers differ from the seed's: our models train on 8000 images of the official MNIST "
               "test set (mnist-t10k protocol) and are evaluated on held-out images of it, the seed used the "
               "full 60k/10k MNIST; our ODE-nets are small (16-32 channels, 17k-53k parameters vs LeNet-5's 62k); "
               "the seed's attack budgets (PGD steps, C&W iterations) are not stated.")
    return out


def run(ctx: StudyContext) -> StudyReport:
    """Run the study (see the module docstring).

    Args:
        ctx: the study context (quick or full mode, seed, output directory).

    Returns:
        the report: the seed-format table and the detail table.

    Raises:
        models.zoo.UnknownModelError: a required zoo checkpoint is missing.
    """
    settings = ctx.pick(QUICK_SETTINGS, FULL_SETTINGS)
    plans = _plans(ctx)
    cells = attack_cells(ctx, plans, settings)
    rows = []
    for plan in plans:
        fgsm = cells[plan.name]["fgsm"]["report"]
        rows.append((plan.label, plan.name, fgsm["n"], round(100 * fgsm["clean_accuracy"], 2),
                     *attack_row(cells[plan.name], SEED_TABLE.get(plan.seed_row or ""))))
    columns = ("model", "zoo", "n", "clean acc %", *attack_columns())
    main = Table("Mean L2 / accuracy under attack (seed's format), ours next to the seed's", columns, tuple(rows),
                 note=f"Seed columns: {SEED_SOURCE} (\"classical mnist\" for LeNet-5, \"ODE mnist\" for both "
                      "ODE-nets). C&W n may be smaller than the FGSM/PGD n; see the detail table.")
    detail = detail_table(plans, cells, "Every measured number")
    figs = (bar_figure(ctx, plans, cells, SEED_TABLE, "accuracy",
                       "Accuracy and mean L2 under attack: ours vs seed 000"),
            examples_figure(ctx, plans, cells, "examples"))
    protocol = {
        "data": DATA_PROTOCOL,
        **plan_protocol(plans),
        "attacks": settings.describe(),
        "mean L2 / accuracy": "mean ‖x_adv − x‖₂ over successful adversarial examples / accuracy on the n "
                              "images after the attack (clean errors count as errors)",
        "solver": "each ODE-net is attacked and scored with its own solver (gradients through the solver steps, "
                  "no adjoint)",
        "seed": ctx.seed,
    }
    return StudyReport(NAME, TITLE, SEED, ctx.quick, protocol, (main, detail), figs, tuple(findings(plans, cells)),
                       reports(plans, cells))


__all__ = ["ATTACK_KINDS", "ATTACK_LABELS", "FULL_SETTINGS", "NAME", "QUICK_SETTINGS", "SEED", "SEED_TABLE",
           "TITLE", "AttackSettings", "ModelPlan", "attack_cell", "attack_cells", "attack_columns", "attack_row",
           "bar_figure", "checks_text", "detail_table", "examples_figure", "findings", "plan_protocol", "reports", "run",
           "seed_cell", "seed_format"]
