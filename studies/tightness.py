"""Study ``tightness``: how much of the gap between certified and empirical radii is the bound's, and how much the attack's.

For each example the L∞ radii of IBP, CROWN, α-CROWN, branch and bound (BaB), the exact
minimal adversarial distance by mixed-integer programming (:func:`verify._milp.exact_radius`,
where HiGHS finishes within its time limit) and the strongest attack (the smaller of the
minimal-ε PGD and APGD radii) are put side by side, on the zoo `mlp`, the small ODE-net
`ode-small`, the zoo `ode` and the certified-trained `ode-cert-0.1`. With the exact radius r*
known, the CROWN–attack gap r_att − r_CROWN splits into the bound's part r* − r_CROWN and the
attack's part r_att − r*; every certified radius must lie below r* and every attack radius
above it (a violation is a bug and is counted).

References:
    Tjeng, Xiao and Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
    Programming", ICLR 2019. Xu et al., "Fast and Complete" (α-CROWN), ICLR 2021. Wang et al.,
    "Beta-CROWN", NeurIPS 2021. Croce and Hein, "Reliable evaluation of adversarial robustness
    with an ensemble of diverse parameter-free attacks" (APGD), ICML 2020.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
from torch import nn

from attacks.minimal_eps import SEARCH_ATTACKS, minimal_eps
from models.data import load_dataset
from models.zoo import PRESETS
from verify._alpha import INTERMEDIATE_ITERATIONS
from verify._bab import ROOT_INTERMEDIATE_ITERATIONS
from verify._milp import exact_radius
from verify.certify import METHODS, Certifier

from ._common import StudyContext, StudyReport, Table, figure_path

NAME = "tightness"
SEED = "project"
TITLE = "Tightness of certified radii: IBP, CROWN, α-CROWN, branch and bound and the exact radius (MILP) vs attacks"

#: the study's models (quick mode: the first two) and, per model, whether the exact MILP is attempted.
MODELS: tuple[str, ...] = ("mlp", "ode-small", "ode", "ode-cert-0.1")
EXACT_SKIP: dict[str, str] = {"ode": "not attempted: thousands of unstable ReLUs at the attack radius (see the "
                                     "unstable column), beyond HiGHS in minutes"}
#: models without the LP-all column (two LPs per unstable neuron over the network before it).
LP_SKIP: dict[str, str] = {"ode": "LP-all not attempted: ~3,600 unstable neurons over 18 ReLU layers, each two LPs of "
                                  "6,000 to 49,000 columns (the first layer's 194 took 60 CPU s): hours per bound",
                           "ode-cert-0.1": "LP-all not attempted: ~1,200 LPs of 6,500 to 12,500 columns per bound "
                                           "(example 0 at ε = 0.138; its first layer's 628 LPs had not finished after "
                                           "4 minutes at a load of 4)"}
#: full mode: seconds of HiGHS per example and model (the quick mode: 10 s).
EXACT_SECONDS: dict[str, float] = {"mlp": 120.0, "ode-small": 120.0, "ode-cert-0.1": 60.0}
#: full mode: examples per model (one α-CROWN bound costs 15-35 s on `ode` on the shared machine, measured).
N_FULL: dict[str, int] = {"mlp": 6, "ode-small": 6, "ode": 10, "ode-cert-0.1": 4}
#: full mode: BaB's time limit (CPU seconds of the process per call) where 10 s is too short for its root
#: α-CROWN bound (8 s on `ode`).
BAB_SECONDS: dict[str, float] = {"ode": 30.0}
#: full mode: BaB calls per example where the default 4 cost too much (`ode`: up to 30 CPU s each).
BAB_EVALS: dict[str, int] = {"ode": 3}
#: models computed first (the longest, whose cells matter most if a run is stopped); the report keeps MODELS' order.
FIRST: tuple[str, ...] = ("ode",)
#: certified radius methods in table order (α-CROWN and BaB only where the dense engines exist).
BOUNDS: tuple[str, ...] = ("ibp", "crown", "alpha-crown", "lp-all", "bab")
#: attacks whose minimal-ε radius is taken (the smaller per example is the empirical radius).
ATTACKS: tuple[str, ...] = ("pgd", "apgd")
EPS_MAX = 0.5
#: seconds of linear programming per LP-all bound (a bound that runs out keeps CROWN's bounds where not reached).
LP_TIME_LIMIT = 600.0
#: the α-CROWN settings in the keys of its cells (and BaB's, whose root bound it is).
ALPHA_KEY = f"inter{INTERMEDIATE_ITERATIONS}"
#: ratio tolerance of the soundness check certified ≤ exact ≤ attack.
SLACK = 1e-4


def _settings(ctx: StudyContext) -> dict[str, Any]:
    return ctx.pick(
        {"exact_s": 10.0, "bab_s": 2.0, "bab_evals": 2, "alpha_evals": 3, "rtol": 0.1, "max_evals": 10},
        {"exact_s": 120.0, "bab_s": 10.0, "bab_evals": 4, "alpha_evals": 8, "rtol": 0.01, "max_evals": 30})


def _attack_radii(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ATTACKS:
        if name not in SEARCH_ATTACKS:
            continue
        start = time.perf_counter()
        res = minimal_eps(model, x, y, "inf", name, eps_max=EPS_MAX, tol=1e-4, seed=seed)
        out[name] = {"radius": [float(r) if math.isfinite(r) else None for r in res.eps.tolist()],
                     "x_adv": [res.x_adv[i].flatten().tolist() if math.isfinite(float(res.eps[i])) else None
                               for i in range(x.shape[0])],
                     "seconds": time.perf_counter() - start}
    return out


def _certifier(model: nn.Module, method: str, s: dict[str, Any], bab_s: float) -> Certifier | None:
    """The method's certifier, or None where it is not available in the dense engine (auto_LiRPA's
    α-CROWN costs ~10 min per bound on `ode`)."""
    if method not in METHODS:
        return None
    if method == "bab":
        cert = Certifier(model, "inf", "bab", time_limit=bab_s)
        cert.bounds.clock = time.process_time  # CPU seconds: wall time on a shared machine varies 2-5x
        return cert
    if method == "lp-all":
        return Certifier(model, "inf", method, time_limit=LP_TIME_LIMIT)
    cert = Certifier(model, "inf", method)
    if method == "alpha-crown":
        if cert.engine != "dense":
            return None
        cert.bounds.warm_start = False  # every bound from CROWN's slopes, as the cells were computed
    return cert


def _radius(cert: Certifier, x: torch.Tensor, y: torch.Tensor, s: dict[str, Any], guess: float | None,
            max_evals: int) -> dict[str, Any]:
    res = cert.radius(x, y, EPS_MAX, guess=guess, rtol=s["rtol"], atol=1e-5, max_evals=max_evals)
    return {"radius": res.radius, "upper": None if math.isinf(res.upper) else res.upper,
            "evaluations": res.evaluations, "seconds": res.seconds}


def _bab_radius(cert: Certifier, x: torch.Tensor, y: torch.Tensor, lo: float, hi: float, evals: int
               ) -> dict[str, Any]:
    """Branch and bound's radius by exponential search up from ``lo`` (certified: the α-CROWN radius, whose
    bound is BaB's root bound), then bisection: steps of 2, 4, 8, … % of ``lo`` while BaB verifies, and the
    midpoint of the bracket once a call fails (``hi``: an attack's radius, never certifiable). A verified
    call is cheap (a few subdomains); a failed one costs the time limit."""
    start = time.perf_counter()
    step, bracketed = 0.02 * lo, False
    for _ in range(evals):
        mid = 0.5 * (lo + hi) if bracketed or lo + step >= hi else lo + step
        if bool((cert.margins(x, y, mid) > 0).all()):
            lo, step = mid, 2 * step
        else:
            hi, bracketed = mid, True
    return {"radius": lo, "upper": hi, "evaluations": evals, "seconds": time.perf_counter() - start}


def _exact(model: nn.Module, x: torch.Tensor, y: int, x_adv: list[float] | None, seconds: float) -> dict[str, Any]:
    hint = torch.tensor(x_adv, dtype=x.dtype).view_as(x) if x_adv is not None else None
    r = exact_radius(model, x, y, EPS_MAX, seconds, hint)
    with torch.no_grad():
        margin = None if r.counterexample is None else float(
            (lambda o: o[y] - o[r.target])(model(r.counterexample)[0]))
    return {"radius": r.radius if math.isfinite(r.radius) else None, "lower": r.lower, "status": r.status,
            "seconds": r.seconds, "binaries": max((c.binaries for c in r.classes), default=0),
            "classes_solved": sum(c.status in ("optimal", "infeasible") for c in r.classes),
            "classes_skipped": sum(c.status == "skipped" for c in r.classes), "model_margin": margin}


def _model_records(ctx: StudyContext, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor
                   ) -> list[dict[str, Any]]:
    s = _settings(ctx)
    n = x.shape[0]
    att = ctx.cell(f"{name}/attacks/{'+'.join(ATTACKS)}/n{n}/seed{ctx.seed}",
                   lambda: _attack_radii(model, x, y, ctx.seed))
    bab_s = s["bab_s"] if ctx.quick else BAB_SECONDS.get(name, s["bab_s"])
    bab_evals = s["bab_evals"] if ctx.quick else BAB_EVALS.get(name, s["bab_evals"])
    certs = {m: None if m == "lp-all" and name in LP_SKIP else _certifier(model, m, s, bab_s) for m in BOUNDS}
    with torch.no_grad():
        pred = model(x).argmax(1)
    records = []
    for i in range(n):
        xi, yi = x[i:i + 1], y[i:i + 1]
        rec: dict[str, Any] = {"index": i, "label": int(yi), "correct": int(pred[i]) == int(yi), "radii": {}}
        found = {a: v["radius"][i] for a, v in att.items() if v["radius"][i] is not None}
        rec["attacks"] = found
        best = min(found, key=found.get) if found else None
        rec["attack"] = found[best] if best else None
        if not rec["correct"]:
            records.append(rec)
            continue
        tkey = f"rtol{s['rtol']:g}"
        crown = ctx.cell(f"{name}/crown/i{i}/{tkey}", lambda: _radius(certs["crown"], xi, yi, s, None, s["max_evals"]))
        rec["radii"]["crown"] = crown
        g = crown["radius"] or None
        for m, cert in certs.items():
            if m == "crown" or cert is None:
                continue
            if m == "bab":
                if rec["attack"] is None:
                    continue
                lo = max(crown["radius"], rec["radii"].get("alpha-crown", crown)["radius"])
                key = f"{name}/bab-gallop/i{i}/{tkey}/cpu{bab_s:g}-e{bab_evals}-{ALPHA_KEY}"
                rec["radii"][m] = ctx.cell(key, lambda c=cert, lo=lo, hi=rec["attack"]:
                                           _bab_radius(c, xi, yi, lo, hi, bab_evals))
                continue
            evals = s["alpha_evals"] if m == "alpha-crown" else s["max_evals"]
            version = f"-{ALPHA_KEY}" if m == "alpha-crown" else ""
            guess = None if m == "ibp" else rec["radii"].get("alpha-crown", crown)["radius"] if m == "lp-all" else g
            rec["radii"][m] = ctx.cell(f"{name}/{m}/i{i}/{tkey}-e{evals}{version}",
                                       lambda c=cert, e=evals, gg=guess: _radius(c, xi, yi, s, gg, e))
        if name not in EXACT_SKIP:
            hint = att[best]["x_adv"][i] if best else None
            limit = s["exact_s"] if ctx.quick else EXACT_SECONDS.get(name, s["exact_s"])
            rec["exact"] = ctx.cell(f"{name}/exact/i{i}/t{limit:g}/hint-{best}",
                                    lambda: _exact(model, xi, int(yi), hint, limit))
        records.append(rec)
    return records


def _median(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if r["correct"]]
    exact_ok = [r for r in ok if r.get("exact", {}).get("status") == "optimal"]
    out: dict[str, Any] = {"n": len(records), "correct": len(ok), "exact_solved": len(exact_ok),
                           "exact_attempted": sum(1 for r in ok if "exact" in r)}
    methods = [m for m in BOUNDS if any(m in r["radii"] for r in ok)]
    out["median_radius"] = {m: _median([r["radii"][m]["radius"] for r in ok if m in r["radii"]]) for m in methods}
    out["median_radius"]["exact"] = _median([r["exact"]["radius"] for r in exact_ok])
    out["median_radius"]["attack"] = _median([r["attack"] for r in ok])
    out["median_seconds"] = {m: _median([r["radii"][m]["seconds"] for r in ok if m in r["radii"]]) for m in methods}
    out["median_seconds"]["exact"] = _median([r["exact"]["seconds"] for r in ok if "exact" in r])
    out["median_ratio_to_exact"] = {
        m: _median([r["radii"][m]["radius"] / r["exact"]["radius"] for r in exact_ok if m in r["radii"]
                    and r["exact"]["radius"]]) for m in methods}
    out["median_ratio_to_exact"]["attack"] = _median([r["attack"] / r["exact"]["radius"] for r in exact_ok
                                                     if r["attack"] and r["exact"]["radius"]])
    out["alpha_vs_lp_all"] = _median([r["radii"]["alpha-crown"]["radius"] / r["radii"]["lp-all"]["radius"] for r in ok
                                      if "lp-all" in r["radii"] and "alpha-crown" in r["radii"]
                                      and r["radii"]["lp-all"]["radius"]])
    crown = out["median_radius"].get("crown")
    out["median_vs_crown"] = {m: (v / crown if v is not None and crown else None)
                              for m, v in out["median_radius"].items()}
    gaps = [(r["attack"] - r["radii"]["crown"]["radius"], r["exact"]["radius"] - r["radii"]["crown"]["radius"])
            for r in exact_ok if r["attack"] is not None and "crown" in r["radii"]]
    total = sum(g for g, _ in gaps)
    out["bound_share"] = sum(b for _, b in gaps) / total if gaps and total > 0 else None
    out["attack_share"] = 1 - out["bound_share"] if out["bound_share"] is not None else None
    out["violations"] = _violations(ok)
    return out


def _violations(ok: list[dict[str, Any]]) -> list[str]:
    """Every breach of certified ≤ exact ≤ attack, named (must be none): a certified radius above the
    distance of the MILP's counterexample, or the MILP's proven lower bound above an attack's radius (the
    MILP starts from the best attack's point, so its radius is below the attack's by construction)."""
    bad = []
    for r in ok:
        ex = r.get("exact")
        if not ex or ex["status"] == "misclassified":
            continue
        for m, v in r["radii"].items():
            if ex["radius"] is not None and v["radius"] > ex["radius"] * (1 + SLACK) + 1e-6:
                bad.append(f"example {r['index']}: {m} certified {v['radius']:.6g} > exact {ex['radius']:.6g}")
        for a, v in r["attacks"].items():
            if ex["lower"] > v * (1 + SLACK) + 1e-6:
                bad.append(f"example {r['index']}: exact lower bound {ex['lower']:.6g} > {a} radius {v:.6g}")
    return bad


def _unstable(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> dict[str, int]:
    """ReLUs CROWN leaves unstable at ε (each one a binary of the MILP) and all ReLUs."""
    from verify._dense_graph import DenseGraph
    from verify._spec import spec_matrix
    from verify.crown import Crown

    crown = Crown(DenseGraph.from_model(model), "inf")
    with torch.no_grad():
        crown.margins(x, eps, spec_matrix(y, 10)[0])
    unstable = sum(int(((lo < 0) & (hi > 0)).sum()) for lo, hi in crown.bounds.values())
    return {"unstable": unstable, "relus": sum(int(lo.numel()) for lo, _ in crown.bounds.values())}


def _radii_table(summaries: dict[str, dict[str, Any]]) -> Table:
    rows = []
    for name, s in summaries.items():
        med = s["median_radius"]
        rows.append((name, f"{s['correct']}/{s['n']}", f"{s['exact_solved']}/{s['exact_attempted']}",
                     *(med.get(m) for m in (*BOUNDS, "exact", "attack")), s["median_unstable"],
                     len(s["violations"])))
    columns = ("model", "correct/n", "exact solved", *(f"median r {m}" for m in (*BOUNDS, "exact", "attack")),
               "median unstable ReLUs at r_att", "violations")
    note = ("L∞ radii in pixel units, medians over the correctly classified of the first n held-out images "
            "(exact: over the examples HiGHS solved, so not comparable with the other medians). Attack: the smaller "
            "of the minimal-ε PGD and APGD radii. Violations: a certified radius above the distance of the MILP's "
            "counterexample, or the MILP's proven lower bound above an attack's radius (must be 0).")
    return Table("Certified, exact and empirical L∞ radii", columns, tuple(rows), note)


def _ratio_table(summaries: dict[str, dict[str, Any]]) -> Table:
    rows = []
    for name, s in summaries.items():
        ratio, vs = s["median_ratio_to_exact"], s["median_vs_crown"]
        rows.append((name, *(ratio.get(m) for m in (*BOUNDS, "attack")), vs.get("alpha-crown"), vs.get("bab"),
                     s.get("alpha_vs_lp_all"), s["bound_share"], s["attack_share"]))
    columns = ("model", *(f"median r_{m}/r_exact" for m in (*BOUNDS, "attack")), "median α-CROWN / median CROWN",
               "median BaB / median CROWN", "α-CROWN / LP-all", "gap share: bound", "gap share: attack")
    note = ("Ratios per example, then the median (examples with an exact radius; α-CROWN / LP-all: every example with "
            "both). Gap shares: over the examples with "
            "an exact radius, Σ(r_exact − r_CROWN) / Σ(r_att − r_CROWN) is the part of the CROWN–attack gap that "
            "is CROWN's looseness; the rest, Σ(r_att − r_exact) / Σ(r_att − r_CROWN), is the attack's.")
    return Table("Each radius relative to the exact one, and who owns the gap", columns, tuple(rows), note)


def _time_table(summaries: dict[str, dict[str, Any]]) -> Table:
    rows = [(name, *(s["median_seconds"].get(m) for m in (*BOUNDS, "exact"))) for name, s in summaries.items()]
    return Table("Median seconds per example (one thread, shared 2-core machine)",
                 ("model", *(f"{m} s" for m in (*BOUNDS, "exact"))), tuple(rows))


def _figure(ctx: StudyContext, records: dict[str, list[dict[str, Any]]]) -> tuple[str, ...]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path, rel = figure_path(ctx, "ratios")
    fig, axes = plt.subplots(1, len(records), figsize=(4 * len(records), 3.6), squeeze=False)
    cols = (*BOUNDS, "exact", "attack")
    for ax, (name, recs) in zip(axes[0], records.items()):
        for k, m in enumerate(cols):
            pts = []
            for r in recs:
                ref = r["attack"]
                if not r["correct"] or not ref:
                    continue
                if m == "exact":
                    v = r.get("exact", {}).get("radius") if r.get("exact", {}).get("status") == "optimal" else None
                elif m == "attack":
                    v = ref
                else:
                    v = r["radii"].get(m, {}).get("radius")
                if v is not None:
                    pts.append(v / ref)
            ax.scatter([k] * len(pts), pts, s=18, alpha=0.7)
        ax.set_xticks(range(len(cols)), cols, rotation=45, fontsize=8)
        ax.axhline(1.0, color="k", ls="--", lw=0.8)
        ax.set_ylim(0, 1.1)
        ax.set_title(name)
    axes[0][0].set_ylabel("radius / attack radius")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return (rel,)


def _findings(summaries: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    out = []
    bad = sum(len(s["violations"]) for s in summaries.values())
    out.append(f"Ground truth: {bad} violations of certified ≤ exact ≤ attack over all models and examples"
               + (": " + "; ".join(v for s in summaries.values() for v in s["violations"]) if bad else "."))
    for name, s in summaries.items():
        r = s["median_ratio_to_exact"]
        if s["exact_solved"]:
            parts = ", ".join(f"{m} {r[m]:.3f}" for m in (*BOUNDS, "attack") if r.get(m) is not None)
            out.append(f"{name}: median radius / exact radius over {s['exact_solved']} solved examples: {parts}"
                       + (f"; the bound owns {100 * s['bound_share']:.0f} % of the CROWN–attack gap, the attack "
                          f"{100 * s['attack_share']:.0f} %." if s["bound_share"] is not None else "."))
        vs = s["median_vs_crown"]
        if s.get("alpha_vs_lp_all") is not None:
            out.append(f"{name}: median per example of α-CROWN's radius / LP-all's {s['alpha_vs_lp_all']:.3f}; LP-all "
                       f"(every neuron bounded by its own triangle LP) is the ceiling of any α-CROWN, so α-CROWN's "
                       f"gap to the exact radius is the single-neuron relaxation's, not its optimiser's.")
        if vs.get("alpha-crown") or vs.get("bab"):
            out.append(f"{name}: median α-CROWN radius {vs.get('alpha-crown') or float('nan'):.3f}× and median BaB "
                       f"radius {vs.get('bab') or float('nan'):.3f}× the median CROWN radius.")
    return tuple(out)


def run(ctx: StudyContext) -> StudyReport:
    """Run (or resume) the study."""
    x, y = load_dataset("mnist-t10k", "test")
    names = ctx.pick(MODELS[:2], MODELS)
    sizes = {m: min(ctx.n(1, N_FULL[m]), x.shape[0]) for m in names}
    n = max(sizes.values())
    x, y = x[:n].to(ctx.device), y[:n].to(ctx.device)
    records, summaries = {}, {}
    for name in sorted(names, key=lambda m: m not in FIRST):
        model = ctx.zoo(name)
        records[name] = _model_records(ctx, name, model, x[:sizes[name]], y[:sizes[name]])
        summaries[name] = _summary(records[name])
        unstable = [ctx.cell(f"{name}/unstable-at-attack/i{r['index']}",
                             lambda r=r: _unstable(model, x[r["index"]:r["index"] + 1], y[r["index"]:r["index"] + 1],
                                                   r["attack"]))["unstable"]
                    for r in records[name] if r["correct"] and r["attack"]]
        summaries[name]["median_unstable"] = _median([float(u) for u in unstable])
    records, summaries = {m: records[m] for m in names}, {m: summaries[m] for m in names}
    s = _settings(ctx)
    protocol = {
        "data": "mnist-t10k (train 0-7999, held out 8000-9999); the first n held-out images",
        "n": sizes,
        "models": {m: PRESETS[m].description for m in names},
        "norm": "L∞ (ε-ball ∩ [0, 1])",
        "attack radius": f"min over {', '.join(ATTACKS)} of attacks.minimal_eps (bisection tol 1e-4, ε ≤ {EPS_MAX})",
        "certified radii": f"Certifier.radius, rtol {s['rtol']}, atol 1e-5; α-CROWN: dense engine "
                           f"({INTERMEDIATE_ITERATIONS} Adam steps per layer of intermediate bounds, 20 on the "
                           f"margins, every bound from CROWN's slopes: no warm start), ≤ {s['alpha_evals']} bounds "
                           f"from the CROWN radius; BaB (root α-CROWN with "
                           f"{ROOT_INTERMEDIATE_ITERATIONS} steps per layer): calls up from the α-CROWN radius (steps "
                           f"of 2, 4, 8 % while verified, then bisection below the first failure or the attack "
                           f"radius), calls per example and time limit "
                           + (f"{s['bab_evals']}, {s['bab_s']:g} s" if ctx.quick else
                              ", ".join(f"{m} {BAB_EVALS.get(m, s['bab_evals'])}, {BAB_SECONDS.get(m, s['bab_s']):g} s"
                                        for m in names))
                           + " (CPU seconds of the one-thread process) per call",
        "exact radius": f"verify._milp.exact_radius (HiGHS, big-M from CROWN bounds at the attack radius), "
                        + (f"{s['exact_s']:g} s per example; " if ctx.quick else
                           ", ".join(f"{m} {v:g} s" for m, v in EXACT_SECONDS.items()) + " per example; ")
                        + "; ".join(f"{m}: {v}" for m, v in EXACT_SKIP.items() if m in names),
        "LP-all": f"verify._lp_all.LpAll (HiGHS, {LP_TIME_LIMIT:g} s per bound), radius search like the others from "
                  "the α-CROWN radius; " + "; ".join(f"{m}: {v}" for m, v in LP_SKIP.items() if m in names),
        "machine": "2 shared CPU cores, one thread per process (timings include contention)",
        "seed": ctx.seed,
    }
    tables = (_radii_table(summaries), _ratio_table(summaries), _time_table(summaries))
    return StudyReport(NAME, TITLE, SEED, ctx.quick, protocol, tables, _figure(ctx, records), _findings(summaries),
                       {"summaries": summaries, "records": records})
