"""Study ``certified-architectures``: the seeds' question answered with certificates.

Seed 003 claims Neural ODEs are naturally more robust than ResNets; seed 000 finds them more
vulnerable to minimum-norm attacks. Both judge by attacks. Here four zoo models of about the
same size, trained with the *same* certified recipe (IBP at 1.1·ε, ``python -m verify train``),
are compared by what can be proved about them: an ODE-net (one shared vector field, Euler,
2 steps of h = 0.5), the ResNet with the same stem, field and head (2 independent blocks) at
step s = 0.5 and s = 1, and LeNet-5 (the classical convnet of seed 000, with max pooling; a
reference, not part of the ODE-net / ResNet verdict). For every ε of :data:`EPS` the study measures, on the
held-out images of ``mnist-t10k``:

* IBP-certified and CROWN-certified accuracy (:func:`verify.certify`), and their union;
* PGD accuracy (an upper bound on what any certificate can reach);
* each model's L2 and L∞ Lipschitz bound (:func:`lipbound.network_bound`) and the growth
  bound of its residual / Euler part: (1 + hK)^n for the ODE-net, Π (1 + s K_i) for a ResNet;
* how much of the residual / Euler part is alive: the fraction of its ReLU units active on
  some clean image (IBP training can switch a field off entirely, which turns the ODE block
  into a constant shift and the ODE-net into a feed-forward net: then the comparison is not
  one of dynamics).

The same comparison is made a second time with fields that stay alive: the ODE-net and its
matched s = 0.5 ResNet trained with MTL-IBP (De Palma et al. 2024) from scratch and then
fine-tuned with IBP (zoo ``ode-cert-0.1-mtl-ibp``, ``resnet-cert-0.1-mtl-ibp``); each recipe
gets its own verdict (:data:`COMPARISONS`).

A CROWN bound is not computed where PGD already found an adversarial example (or the clean
image is misclassified): no sound certificate exists there, so the image counts as not
certified. Every certified image is checked against PGD: a certificate that PGD beats is
counted and reported as a soundness violation.

Differences are judged with binomial standard errors; ODE-net and ResNet are evaluated on
the same images, so the standard error of a difference is the paired one (McNemar):
√(b + c − (b − c)²/n) / n, with b and c the images only one of the two models holds.

References:
    "Towards natural robustness against adversarial examples" (seed 003). Girard, Charpiat,
    Chihani & Schoenauer, "A security study of Neural ODEs", 2019 (seed 000). Gowal et al., "On the Effectiveness of
    Interval Bound Propagation for Training Verifiably Robust Models", 2018. De Palma et al.,
    "Expressive Losses for Verified Robustness via Convex Combinations", ICLR 2024.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
from torch import nn

from attacks import PGD
from lipbound import network_bound
from models.activity import field_activity
from models.data import load_dataset
from models.zoo import PRESETS
from verify import certify

from ._common import StudyContext, StudyReport, Table, figure_path, paired_difference

NAME = "certified-architectures"
SEED = "003_b41ec24123f49e8e vs 000_581e31f95ddba4b5"
TITLE = "Certified robustness of ODE-nets, ResNets and LeNet-5 trained with the same certified recipe"

#: (zoo model, label) in table order; the first is the ODE-net the others are compared with.
MODELS: tuple[tuple[str, str], ...] = (
    ("ode-cert-0.1", "ODE-net (Euler, 2 steps, h=0.5)"),
    ("resnet-cert-0.1", "ResNet, s=0.5"),
    ("resnet-s1-cert-0.1", "ResNet, s=1"),
    ("lenet5-cert-0.1", "LeNet-5"),
    ("ode-cert-0.1-mtl-ibp", "ODE-net, live field (MTL-IBP, then IBP)"),
    ("resnet-cert-0.1-mtl-ibp", "ResNet, s=0.5, live (MTL-IBP, then IBP)"),
)
#: the paired comparisons, per recipe: (recipe, ODE-net, the models compared with it). IBP switches the
#: ODE-net's field off; MTL-IBP followed by IBP keeps it alive (see the activity column).
COMPARISONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("IBP", "ode-cert-0.1", ("resnet-cert-0.1", "resnet-s1-cert-0.1", "lenet5-cert-0.1")),
    ("live-field (MTL-IBP, then IBP)", "ode-cert-0.1-mtl-ibp", ("resnet-cert-0.1-mtl-ibp",)),
)
#: L∞ radii of the comparison.
EPS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
#: a difference counts as supported beyond this many standard errors.
Z_SUPPORT = 2.0
#: fewer CROWN images for a model whose CROWN bound is slow (LeNet-5: ~0.6 s per image, one thread, its
#: max-pools lowered densely), full mode only.
CROWN_CAP: dict[str, int] = {"lenet5-cert-0.1": 200}
#: images per certify / attack call.
CHUNK = 250


def _plan(ctx: StudyContext) -> dict[str, Any]:
    """Sizes of the run: images for IBP and PGD, images for CROWN, radii, PGD steps and restarts."""
    n = ctx.n(12, 1000)
    return {"n": n, "n_crown": min(n, ctx.pick(4, 500)), "eps": list(ctx.pick((0.1, 0.3), EPS)),
            "pgd_steps": ctx.pick(10, 40), "pgd_restarts": 1, "full": not ctx.quick}


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(n, i + CHUNK)) for i in range(0, n, CHUNK)]


def _pgd_holds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, restarts: int,
               seed: int) -> list[bool]:
    """Per image: correctly classified and PGD (L∞, ``restarts`` random starts) found no adversarial example."""
    out: list[bool] = []
    for s in _chunks(x.shape[0]):
        atk = PGD(model, eps, "inf", steps=steps, step_size=2.5 * eps / steps, restarts=restarts, seed=seed)
        res = atk(x[s], y[s])
        with torch.no_grad():
            clean = model(x[s]).argmax(1) == y[s]
        out += (clean & ~res.success).tolist()
    return out


def _certified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, method: str,
               mask: list[bool] | None = None) -> dict[str, Any]:
    """Per image certified by ``method`` (images outside ``mask`` are not bounded: False), and seconds."""
    idx = [i for i in range(x.shape[0]) if mask is None or mask[i]]
    cert = [False] * x.shape[0]
    t0 = time.perf_counter()
    for k in range(0, len(idx), CHUNK):
        part = idx[k:k + CHUNK]
        res = certify(model, x[part], y[part], eps, "inf", method)
        for i, c in zip(part, res.certified.tolist()):
            cert[i] = bool(c)
    return {"certified": cert, "bounded": len(idx), "seconds": round(time.perf_counter() - t0, 3)}


def _lipschitz(model: nn.Module, name: str) -> dict[str, Any]:
    """Network Lipschitz bounds (L2, L∞) and the growth bound of the residual / Euler part."""
    out: dict[str, Any] = {"parameters": int(sum(p.numel() for p in model.parameters()))}
    for norm in ("2", "inf"):
        nb = network_bound(model, norm)
        out[f"lipschitz_{norm}"] = float(nb.total)
        if nb.growth is not None:
            g = nb.growth
            out[f"growth_{norm}"] = {"formula": str(g.formula), "K": float(g.lipschitz), "n": int(g.n_steps),
                                     "h": float(g.end_time) / int(g.n_steps), "value": float(g.value)}
        elif PRESETS[name].arch == "resnet":
            blocks = [r.upper for r in nb.rows if r.name.startswith("block")]
            h = float(PRESETS[name].config["step"])
            out[f"growth_{norm}"] = {"formula": "prod(1 + s*K_i)", "K": max((b - 1) / h for b in blocks),
                                     "n": len(blocks), "h": h, "value": float(math.prod(blocks))}
        else:
            out[f"growth_{norm}"] = None
    return out


def _model_cells(ctx: StudyContext, name: str, x: torch.Tensor, y: torch.Tensor, plan: dict[str, Any]
                 ) -> dict[str, Any]:
    """Every cell of one model: clean, per ε PGD / IBP / CROWN per image, Lipschitz bounds."""
    model = ctx.zoo(name)
    n, nc = plan["n"], crown_n(plan, name)
    with torch.no_grad():
        clean = ctx.cell(f"{name}/clean/n{n}", lambda: (model(x).argmax(1) == y).tolist())
    per_eps: dict[str, Any] = {}
    for eps in plan["eps"]:
        pgd = ctx.cell(f"{name}/pgd{plan['pgd_steps']}x{plan['pgd_restarts']}/eps{eps:g}/n{n}/seed{ctx.seed}",
                       lambda: _pgd_holds(model, x, y, eps, plan["pgd_steps"], plan["pgd_restarts"], ctx.seed))
        ibp = ctx.cell(f"{name}/ibp/eps{eps:g}/n{n}", lambda: _certified(model, x, y, eps, "ibp"))
        crown = ctx.cell(f"{name}/crown/eps{eps:g}/n{nc}/pgd-skip{plan['pgd_steps']}x{plan['pgd_restarts']}",
                         lambda: _certified(model, x[:nc], y[:nc], eps, "crown", pgd[:nc]))
        per_eps[f"{eps:g}"] = {"pgd": pgd, "ibp": ibp, "crown": crown}
    lip = ctx.cell(f"{name}/lipschitz", lambda: _lipschitz(model, name))
    active = ctx.cell(f"{name}/field-activity/n{n}", lambda: field_activity(model, x))
    return {"clean": clean, "eps": per_eps, "lipschitz": lip, "field_activity": active}


def proportion(k: int, n: int) -> tuple[float, float]:
    """(k/n, its binomial standard error √(p(1−p)/n))."""
    p = k / n
    return p, math.sqrt(p * (1 - p) / n)


def crown_n(plan: dict[str, Any], name: str) -> int:
    """Images CROWN bounds for model ``name`` (the first ones)."""
    return min(plan["n_crown"], CROWN_CAP.get(name, plan["n_crown"])) if plan["full"] else plan["n_crown"]


def _union(r: dict[str, Any], nc: int | None = None) -> list[bool]:
    """Certified by IBP or CROWN on the first ``nc`` images (default: all that CROWN bounded)."""
    nc = len(r["crown"]["certified"]) if nc is None else nc
    return [bool(a or b) for a, b in zip(r["ibp"]["certified"][:nc], r["crown"]["certified"][:nc])]


def _violations(r: dict[str, Any]) -> int:
    """Images certified (IBP or CROWN) on which PGD found an adversarial example."""
    nc = len(r["crown"]["certified"])
    ibp = sum(1 for c, p in zip(r["ibp"]["certified"], r["pgd"]) if c and not p)
    crown = sum(1 for c, p in zip(r["crown"]["certified"], r["pgd"][:nc]) if c and not p)
    return ibp + crown


def _pct(p: float, se: float) -> str:
    return f"{100 * p:.1f} ± {100 * se:.1f}"


def _accuracy_table(cells: dict[str, Any], plan: dict[str, Any]) -> Table:
    rows = []
    for name, label in MODELS:
        c = cells[name]
        for e, r in c["eps"].items():
            n, nc = len(r["pgd"]), len(r["crown"]["certified"])
            rows.append((label, float(e), _pct(*proportion(sum(c["clean"]), n)),
                         _pct(*proportion(sum(r["ibp"]["certified"]), n)),
                         _pct(*proportion(sum(r["crown"]["certified"]), nc)) + ("" if nc == plan["n_crown"] else f" (n={nc})"),
                         _pct(*proportion(sum(_union(r)), nc)) + ("" if nc == plan["n_crown"] else f" (n={nc})"),
                         _pct(*proportion(sum(r["pgd"]), n))))
    return Table("Held-out accuracy (%) ± binomial standard error",
                 ("model", "ε", "clean", f"IBP-certified (n={plan['n']})", f"CROWN-certified (n={plan['n_crown']})",
                  f"IBP or CROWN (n={plan['n_crown']})", f"PGD-{plan['pgd_steps']}×{plan['pgd_restarts']} (n={plan['n']})"),
                 tuple(rows),
                 "CROWN is not run where PGD already found an adversarial example (no certificate can exist there).")


def _comparison_rows(cells: dict[str, Any], plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Per recipe, its ODE-net minus each other model, per ε: IBP-certified (n), IBP∪CROWN (n_crown) and PGD
    (n), paired SE."""
    labels = dict(MODELS)
    rows = []
    for recipe, ode_name, others in COMPARISONS:
        ode = cells[ode_name]
        for name in others:
            for e, r in cells[name]["eps"].items():
                o = ode["eps"][e]
                nc = min(len(o["crown"]["certified"]), len(r["crown"]["certified"]))
                row = {"recipe": recipe, "ode": labels[ode_name], "model": labels[name], "eps": float(e)}
                for key, a, b in (("ibp", o["ibp"]["certified"], r["ibp"]["certified"]),
                                  ("union", _union(o, nc), _union(r, nc)), ("pgd", o["pgd"], r["pgd"])):
                    d, se = paired_difference(a, b)
                    row[key] = {"diff": d, "se": se, "z": d / se if se > 0 else 0.0}
                rows.append(row)
    return rows


def _comparison_table(rows: list[dict[str, Any]]) -> Table:
    def fmt(v: dict[str, float]) -> str:
        return f"{100 * v['diff']:+.1f} ± {100 * v['se']:.1f} (z = {v['z']:+.1f})"

    return Table("ODE-net minus the other model, percentage points ± paired standard error",
                 ("ODE-net", "other model", "ε", "IBP-certified", "IBP or CROWN", "PGD"),
                 tuple((r["ode"], r["model"], r["eps"], fmt(r["ibp"]), fmt(r["union"]), fmt(r["pgd"])) for r in rows),
                 "Positive: the ODE-net is more robust. The findings count a difference as supported beyond the "
                 "Bonferroni-corrected |z| over the informative pairs (family-wise 5 %).")


def _lipschitz_table(cells: dict[str, Any]) -> Table:
    rows = []
    for name, label in MODELS:
        lip = cells[name]["lipschitz"]
        g2, gi = lip["growth_2"], lip["growth_inf"]
        rows.append((label, lip["parameters"], lip["lipschitz_2"], lip["lipschitz_inf"],
                     None if g2 is None else f"{g2['formula']}: K={g2['K']:.3g}, h={g2['h']:g}, n={g2['n']} → {g2['value']:.4g}",
                     None if gi is None else gi["value"], _activity_text(cells[name]["field_activity"])))
    return Table("Size, Lipschitz bounds of the whole network and growth bounds of the residual / Euler part",
                 ("model", "parameters", "Lipschitz bound L2", "Lipschitz bound L∞", "growth bound L2", "growth bound L∞",
                  "field ReLU units active on some clean image"),
                 tuple(rows), "Upper bounds (products of per-layer norms, lipbound.network_bound); K is the field's bound. "
                 "Activity: per ReLU of the residual / Euler part (the ODE-net's one field is applied at both steps).")


def _activity_text(active: dict[str, float]) -> str | None:
    return None if not active else ", ".join(f"{n.split('.act')[0]}: {100 * a:.1f} %" for n, a in active.items())


def corrected_z(m: int, level: float = 0.05) -> float:
    """Two-sided z threshold of a family of ``m`` comparisons at family-wise error ``level`` (Bonferroni)."""
    return statistics.NormalDist().inv_cdf(1 - level / (2 * max(1, m)))


def _verdict(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Which seed the ODE-net vs ResNet differences of ``rows`` (one recipe's) support.

    Only informative pairs count (standard error > 0: at least one image told the models apart); a
    difference is supported when |z| exceeds the Bonferroni threshold over those pairs (family-wise 5 %).
    """
    res = [r for r in rows if r["model"].startswith("ResNet") and r[key]["se"] > 0]
    z = corrected_z(len(res))
    better = [r for r in res if r[key]["z"] > z]
    worse = [r for r in res if r[key]["z"] < -z]
    nominal = [r for r in res if abs(r[key]["z"]) > Z_SUPPORT]
    if better and not worse:
        verdict = "seed 003 (ODE-nets more robust)"
    elif worse and not better:
        verdict = "seed 000 (ODE-nets more vulnerable)"
    elif better and worse:
        verdict = "neither consistently: differences of both signs"
    else:
        verdict = "neither: no difference beyond the corrected threshold"
    return {"verdict": verdict, "pairs": len(res), "z": z, "better": better, "worse": worse, "nominal": nominal}


def _pairs_text(rows: list[dict[str, Any]], key: str) -> str:
    return "; ".join(f"{r['model']} at ε={r['eps']:g}: {100 * r[key]['diff']:+.1f} ± {100 * r[key]['se']:.1f} "
                     f"(z={r[key]['z']:+.1f})" for r in rows) or "none"


def _findings(cells: dict[str, Any], rows: list[dict[str, Any]], plan: dict[str, Any]) -> list[str]:
    out = []
    dead = [label for name, label in MODELS if cells[name]["field_activity"]
            and max(cells[name]["field_activity"].values()) == 0.0]
    labels = dict(MODELS)
    for recipe, ode_name, _ in COMPARISONS:
        ode_dead = labels[ode_name] in dead
        family = [r for r in rows if r["recipe"] == recipe]
        for key, what in (("ibp", f"IBP-certified accuracy (n={plan['n']})"),
                          ("union", f"IBP-or-CROWN-certified accuracy (n={plan['n_crown']})"),
                          ("pgd", f"PGD accuracy (n={plan['n']})")):
            v = _verdict(family, key)
            out.append(f"{recipe} recipe, {labels[ode_name]}, {what}: {v['pairs']} informative (ResNet, ε) pairs, "
                       f"Bonferroni threshold |z| > {v['z']:.2f}; ODE-net ahead: {_pairs_text(v['better'], key)}; "
                       f"behind: {_pairs_text(v['worse'], key)} (|z| > {Z_SUPPORT:g} before correction: "
                       f"{_pairs_text(v['nominal'], key)}). "
                       + (f"Taken at face value this supports {v['verdict']}; but the ODE-net's field is dead "
                          "(below), so it says nothing about ODE dynamics." if ode_dead
                          else f"With the ODE-net's field alive, this supports {v['verdict']}."))
    if dead:
        out.append("Dead fields: no ReLU unit of the residual / Euler part of " + ", ".join(dead) + " is active on any "
                   "clean held-out image: there the block adds a constant and the model computes as a feed-forward "
                   "net of its stem and head (perturbations larger than the training ε can wake units up); a "
                   "difference to it is one of the trained weights, not of ODE dynamics (see the activity column).")
    out.append("One training seed per model: the standard errors cover the choice of test images, not the spread "
               "between training runs, so a single pair past the threshold is weak evidence for either seed.")
    bad = {label: sum(_violations(r) for r in cells[name]["eps"].values()) for name, label in MODELS}
    out.append("Soundness: certified images that PGD beat: "
               + ", ".join(f"{k} {v}" for k, v in bad.items()) + ".")
    return out


def _figure(ctx: StudyContext, cells: dict[str, Any], plan: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path, rel = figure_path(ctx, "accuracy")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for name, label in MODELS:
        c = cells[name]
        eps = [float(e) for e in c["eps"]]
        series = (("IBP-certified", [proportion(sum(r["ibp"]["certified"]), len(r["pgd"])) for r in c["eps"].values()]),
                  ("IBP or CROWN certified", [proportion(sum(_union(r)), len(r["crown"]["certified"]))
                                              for r in c["eps"].values()]),
                  ("PGD accuracy", [proportion(sum(r["pgd"]), len(r["pgd"])) for r in c["eps"].values()]))
        for ax, (title, vals) in zip(axes, series):
            ax.errorbar(eps, [100 * p for p, _ in vals], yerr=[200 * s for _, s in vals], marker="o", capsize=3,
                        label=label)
            ax.set_title(title)
            ax.set_xlabel("L∞ ε")
    axes[0].set_ylabel("held-out accuracy (%), ± 2 SE")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Certified-trained at ε_train = 0.11, mnist-t10k held-out (n = {plan['n']}, CROWN n = {plan['n_crown']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return rel


def run(ctx: StudyContext) -> StudyReport:
    """Run (or resume) the study; see the module docstring."""
    plan = _plan(ctx)
    x, y = load_dataset("mnist-t10k", "test", n=plan["n"])
    cells = {name: _model_cells(ctx, name, x, y, plan) for name, _ in MODELS}
    rows = _comparison_rows(cells, plan)
    protocol = {
        "data": f"mnist-t10k held-out images 8000–{8000 + plan['n'] - 1} (the first {plan['n']}); CROWN on the "
                f"first {plan['n_crown']}" + "".join(f"; {k}: first {crown_n(plan, k)}" for k in CROWN_CAP
                                                      if crown_n(plan, k) != plan["n_crown"]),
        "models": {label: f"{name} ({PRESETS[name].description}; `{PRESETS[name].train_command}`)"
                   for name, label in MODELS},
        "certificates": "verify.certify, L∞ ball ∩ [0, 1], methods ibp and crown (dense engine)",
        "attack": f"PGD L∞, {plan['pgd_steps']} steps of 2.5·ε/steps, {plan['pgd_restarts']} random starts, "
                  f"seed {ctx.seed}",
        "eps": plan["eps"],
        "statistics": "binomial SE √(p(1−p)/n); differences: paired SE on the same images (McNemar)",
    }
    data = {name: {"lipschitz": c["lipschitz"],
                   "eps": {e: {"ibp": sum(r["ibp"]["certified"]), "crown": sum(r["crown"]["certified"]),
                               "crown_bounded": r["crown"]["bounded"], "crown_seconds": r["crown"]["seconds"],
                               "ibp_seconds": r["ibp"]["seconds"], "union": sum(_union(r)),
                               "pgd": sum(r["pgd"]), "violations": _violations(r)} for e, r in c["eps"].items()},
                   "clean": sum(c["clean"]), "field_activity": c["field_activity"]}
            for name, c in cells.items()}
    data["comparison"] = rows
    return StudyReport(NAME, TITLE, SEED, ctx.quick, protocol,
                       (_accuracy_table(cells, plan), _comparison_table(rows), _lipschitz_table(cells)),
                       (_figure(ctx, cells, plan),), tuple(_findings(cells, rows, plan)), data)
