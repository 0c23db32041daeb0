"""Seed 000, "Adversarial training is still efficient": PGD-trained LeNet-5 and ODE-net under attack.

The zoo models ``lenet5-adv`` and ``ode-adv`` (PGD adversarial training, L∞ ε=0.3) face the
attacks of :mod:`studies.girard_attacks` (FGSM ε=0.3, C&W-L2, PGD ε=0.3), reported
as "mean L2 / accuracy" with the natural (clean) accuracy, next to the seed's numbers. The
naturally trained ``lenet5`` and ``ode`` are attacked too, as a reference for what
adversarial training buys.

References:
    Girard, Charpiat, Chihani & Schoenauer, "A security study of Neural ODEs", 2019 (seed 000).
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from attacks import PGD, evaluate
from models import load_dataset, zoo

from ._common import StudyContext, StudyReport, Table
from .girard_attacks import (
    ATTACK_KINDS,
    ATTACK_LABELS,
    DATA_PROTOCOL,
    FULL_SETTINGS,
    QUICK_SETTINGS,
    SEED_TABLE,
    ModelPlan,
    attack_cells,
    attack_columns,
    attack_row,
    bar_figure,
    checks_text,
    detail_table,
    examples_figure,
    plan_protocol,
    reports,
    seed_format,
)

NAME = "girard-advtrain"
SEED = "000_581e31f95ddba4b5"
TITLE = ("PGD-trained LeNet-5 and ODE-net under FGSM, C&W-L2 and PGD "
         "(seed 000: \"Adversarial training is still efficient\")")

#: Seed 000, slide "Adversarial training is still efficient": natural accuracy (%) and (mean L2, accuracy %).
SEED_ADV_TABLE: dict[str, dict[str, Any]] = {
    "lenet5-adv": {"natural": 98.65, "fgsm": (5.76, 95.81), "cw": (0.57, 79.43), "pgd": (5.09, 97.5)},
    "ode-adv": {"natural": 99.4, "fgsm": (6.03, 96.79), "cw": (2.51, 22.24), "pgd": (5.48, 98.52)},
}
SEED_SOURCE = ("seed 000, slide \"Adversarial training is still efficient\" (reference rows: slide \"ODE Nets are "
               "more vulnerables\", which gives no natural accuracy)")


def _plans(ctx: StudyContext) -> list[ModelPlan]:
    n = ctx.n(10, 500)
    check_n = ctx.pick(4, 32)
    # The naturally trained references are checked in girard-attacks; here they only anchor the comparison.
    return [ModelPlan("lenet5-adv", "LeNet-5, PGD-trained", "lenet5-adv", n, n, check_n),
            ModelPlan("ode-adv", "ODE-net, PGD-trained", "ode-adv", n, n, check_n),
            ModelPlan("lenet5", "LeNet-5, natural (reference)", "classical", n, min(n, ctx.pick(5, 100)), 0),
            ModelPlan("ode", "ODE-net, natural (reference)", "ode", n, min(n, ctx.pick(5, 100)), 0)]


#: (steps, restarts) of the stronger PGD run on the PGD-trained models, full and quick mode.
STRONG_PGD: tuple[int, int] = (100, 5)
QUICK_STRONG_PGD: tuple[int, int] = (20, 2)


def strong_pgd_cell(ctx: StudyContext, plan: ModelPlan, steps: int, restarts: int, eps: float) -> dict[str, Any]:
    """PGD with more steps and random restarts on ``plan``'s images: how much the table's PGD overstates.

    Returns:
        ``EvalReport.to_dict()`` of PGD(ε, ``steps``, α = 2.5ε/steps, ``restarts`` random starts).
    """
    key = f"{plan.name}|pgd-strong|eps={eps:g},steps={steps},restarts={restarts}|n={plan.n}|seed={ctx.seed}"

    def compute() -> dict[str, Any]:
        x, y = load_dataset("mnist-t10k", "test", n=plan.n)
        model = ctx.zoo(plan.name)
        attack = PGD(model, eps, "inf", steps=steps, step_size=2.5 * eps / steps, restarts=restarts, seed=ctx.seed)
        return evaluate(model, x.to(ctx.device), y.to(ctx.device), attack, batch_size=100, checks=False,
                        progress=ctx.progress).to_dict()

    return ctx.cell(key, compute)


def _seed_row(plan: ModelPlan) -> dict[str, Any] | None:
    if plan.seed_row in SEED_ADV_TABLE:
        return SEED_ADV_TABLE[plan.seed_row]
    return SEED_TABLE.get(plan.seed_row or "")


def findings(plans: Sequence[ModelPlan], cells: dict[str, dict[str, dict[str, Any]]],
             strong: dict[str, dict[str, Any]]) -> list[str]:
    """Sentences comparing adversarially and naturally trained models, and ours with the seed's."""
    def acc(name: str, kind: str) -> float:
        return float(cells[name][kind]["report"]["robust_accuracy"])

    def l2(name: str, kind: str) -> float | None:
        return cells[name][kind]["report"]["mean_l2"]

    out = []
    pairs = (("lenet5-adv", "lenet5", "LeNet-5", 97.5), ("ode-adv", "ode", "ODE-net", 98.52))
    for adv, nat, label, seed_pgd in pairs:
        out.append(f"{label}: PGD training raises PGD ε=0.3 accuracy from {100 * acc(nat, 'pgd'):.1f}% to "
                   f"{100 * acc(adv, 'pgd'):.1f}% and FGSM accuracy from {100 * acc(nat, 'fgsm'):.1f}% to "
                   f"{100 * acc(adv, 'fgsm'):.1f}% (seed, PGD-trained: {seed_pgd}% under PGD); clean accuracy "
                   f"{100 * cells[adv]['fgsm']['report']['clean_accuracy']:.1f}% "
                   f"(natural model {100 * cells[nat]['fgsm']['report']['clean_accuracy']:.1f}%).")
    la, oa = l2("lenet5-adv", "cw"), l2("ode-adv", "cw")
    ln, on = l2("lenet5", "cw"), l2("ode", "cw")
    if None not in (la, oa, ln, on):
        cw_acc = max(acc("lenet5-adv", "cw"), acc("ode-adv", "cw"))
        ends = ("ends at most at " if cw_acc <= 0.05 else "still leaves up to ") + f"{100 * cw_acc:.1f}% accuracy"
        out.append(f"Our C&W-L2 is unbounded; on the PGD-trained models it {ends}, and its mean L2 is the "
                   f"robustness measure: adversarial training changes it from {ln:.2f} to {la:.2f} (LeNet-5) and "
                   f"from {on:.2f} to {oa:.2f} (ODE-net; the natural references on their first "
                   f"{cells['lenet5']['cw']['report']['n']} images only). The seed's C&W leaves 79.43% / 22.24% "
                   "accuracy, i.e. it had a bounded budget or gave up on many images, so its mean L2 (0.57 / "
                   "2.51) averages a different set of images than ours.")
    ours = (acc("lenet5-adv", "pgd"), acc("ode-adv", "pgd"))
    ahead = "ODE-net" if ours[1] > ours[0] else "LeNet-5"
    n_pgd = cells["lenet5-adv"]["pgd"]["report"]["n"]
    se = math.sqrt(sum(p * (1 - p) for p in ours) / n_pgd)  # standard error of the difference
    gap = abs(ours[1] - ours[0]) / se if se > 0 else math.inf
    verdict = ("within two standard errors, so adversarial training helps both about equally"
               if gap < 2 else "more than two standard errors, so the architectures differ here")
    out.append(f"After PGD training the two architectures are {100 * abs(ours[1] - ours[0]):.1f} points apart under "
               f"PGD ({ahead} ahead: ODE-net {100 * ours[1]:.1f}%, LeNet-5 {100 * ours[0]:.1f}%), {gap:.1f} binomial "
               f"standard errors of the difference on {n_pgd} images: {verdict}. The seed found the ODE-net 1.0 "
               "point ahead (98.52% vs 97.5%).")
    gap_word = "far less" if max(ours) < 0.85 else "about as" if min(ours) > 0.95 else "less"
    short = {"lenet5-adv": "LeNet-5", "ode-adv": "ODE-net"}
    strongest = ", ".join(f"{short.get(k, k)} {100 * r['robust_accuracy']:.1f}%" for k, r in strong.items())
    budget = next(iter(strong.values()))["params"]
    recipe = zoo.PRESETS["ode-adv"].recipe
    out.append(f"Our PGD-trained models are {gap_word} robust than the seed's (PGD accuracy {100 * ours[0]:.1f}% and "
               f"{100 * ours[1]:.1f}% vs 97.5% and 98.52%; {strongest} under PGD with {budget.get('steps')} steps "
               f"and {budget.get('restarts')} random restarts): they train on 8000 images (mnist-t10k protocol) "
               f"on PGD-{recipe.adv_steps}'s final iterate after {recipe.adv_warmup} clean warm-up epochs and an "
               f"ε ramp over {recipe.adv_ramp} epochs, on a CPU, the seed on the full 60k MNIST; the seed does not "
               "state its PGD budget.")
    failed = [f"{p.label} / {ATTACK_LABELS[k]} ({checks_text(cells[p.name][k]['report'])[6:]})"
              for p in plans for k in ATTACK_KINDS if checks_text(cells[p.name][k]["report"]).startswith("fail")]
    if failed:
        out.append("Validity checks that failed (read those numbers as upper bounds on robustness): "
                   + "; ".join(failed) + ".")
    return out


def run(ctx: StudyContext) -> StudyReport:
    """Run the study (see the module docstring).

    Args:
        ctx: the study context (quick or full mode, seed, output directory).

    Returns:
        the report: the seed-format table, the PGD-budget table and the detail table.

    Raises:
        models.zoo.UnknownModelError: a required zoo checkpoint is missing.
    """
    settings = ctx.pick(QUICK_SETTINGS, FULL_SETTINGS)
    plans = _plans(ctx)
    cells = attack_cells(ctx, plans, settings)
    rows = []
    for plan in plans:
        seed_row = _seed_row(plan)
        clean = cells[plan.name]["fgsm"]["report"]["clean_accuracy"]
        natural = seed_row.get("natural") if seed_row else None
        rows.append((plan.label, plan.name, cells[plan.name]["fgsm"]["report"]["n"], seed_format(None, clean),
                     None if natural is None else f"–/{natural:.2f}%", *attack_row(cells[plan.name], seed_row)))
    columns = ("model", "zoo", "n", "Natural", "Natural, seed 000", *attack_columns())
    main = Table("Mean L2 / accuracy of PGD-trained models (seed's format), ours next to the seed's", columns,
                 tuple(rows), note=f"Seed columns: {SEED_SOURCE}. C&W n may be smaller than the FGSM/PGD n; see "
                                   "the detail table.")
    steps, restarts = ctx.pick(QUICK_STRONG_PGD, STRONG_PGD)
    eps = settings.eps
    strong = {p.name: strong_pgd_cell(ctx, p, steps, restarts, eps) for p in plans[:2]}
    sens = Table(f"PGD budget: the table's PGD vs PGD with {steps} steps x {restarts} random restarts (ε={eps:g})",
                 ("model", "n", f"PGD-{settings.pgd_steps} accuracy %", f"PGD-{steps} x {restarts} accuracy %",
                  f"PGD-{steps} x {restarts} mean L2", "attack s"),
                 tuple((p.label, strong[p.name]["n"], round(100 * cells[p.name]["pgd"]["report"]["robust_accuracy"], 2),
                        round(100 * strong[p.name]["robust_accuracy"], 2), strong[p.name]["mean_l2"],
                        round(strong[p.name]["seconds"], 1)) for p in plans[:2]),
                 note="Same images; α = 2.5ε/steps. The lower number is the better estimate of robust accuracy.")
    detail = detail_table(plans, cells, "Every measured number")
    seed_rows = {k: {a: v[a] for a in ATTACK_KINDS} for k, v in SEED_ADV_TABLE.items()} | SEED_TABLE
    figs = (bar_figure(ctx, plans, cells, seed_rows, "accuracy",
                       "Accuracy and mean L2 under attack, PGD-trained and natural models: ours vs seed 000"),
            examples_figure(ctx, plans[:2], cells, "examples"))
    protocol = {
        "data": DATA_PROTOCOL,
        **plan_protocol(plans),
        "adversarial training": {p.name: zoo.PRESETS[p.name].recipe.__dict__ for p in plans[:2]},
        "attacks": settings.describe() | {"PGD, stronger": f"{steps} steps of α=2.5ε/steps, {restarts} random "
                                                                   "restarts, best per example (PGD-trained models)"},
        "mean L2 / accuracy": "mean ‖x_adv − x‖₂ over successful adversarial examples / accuracy on the n "
                              "images after the attack; Natural: clean accuracy on the same n images",
        "seed": ctx.seed,
    }
    data = reports(plans, cells) | {"strong_pgd": strong}
    return StudyReport(NAME, TITLE, SEED, ctx.quick, protocol, (main, sens, detail), figs,
                       tuple(findings(plans, cells, strong)), data)


__all__ = ["NAME", "QUICK_STRONG_PGD", "SEED", "SEED_ADV_TABLE", "STRONG_PGD", "TITLE", "findings", "run",
           "strong_pgd_cell"]
