"""α-CROWN per bound: the dense engine (verify._alpha) next to auto_LiRPA 0.3's, one thread, one run.

Per held-out example of a zoo model, at the ε where CROWN stops certifying (the ``upper`` end
of the dense CROWN radius search, where slope optimisation matters), the worst margin bound
and the seconds of: dense CROWN; dense α-CROWN as ``--method alpha-crown`` runs it (20 margin
iterations, auto_LiRPA's default, ``verify._alpha.INTERMEDIATE_ITERATIONS`` (6) per layer of
intermediate bounds, stopping once every margin is positive); dense α-CROWN at auto_LiRPA's
iteration count everywhere ("20/20": exactly 20 margin and 20 intermediate iterations: no early
stop and no patience stop, whose relative threshold ended the margins' steps about 4 early and
cost up to 0.001 per margin on `ode`); and, on the first ``--n-lirpa`` examples, auto_LiRPA's
α-CROWN (``compute_bounds(method="CROWN-Optimized")``, 20 iterations, matrix mode).

auto_LiRPA's α-CROWN recomputes every layer's bounds with gradient at every step; on `ode` the
graph of its first step with gradient passes the 10 GB a process may use on the build machine
(its first step, without gradient, peaks at 1 GB), with dense slopes and also with
``--lirpa-sparse-alpha`` (its own default of slopes stored for unstable neurons only, which one
bound per traced module allows; the same bounds as dense slopes on `resnet`) and
``--lirpa-reference`` (its CROWN bounds at the same ε as ``aux_reference_bounds``, so that it
re-bounds CROWN's unstable neurons only, as the dense engine does, instead of every neuron IBP
calls unstable; the reference's CPU time is part of auto_LiRPA's). ``--n-fixed`` gives the
comparison that fits: both engines with the intermediate bounds fixed at CROWN's (auto_LiRPA's
``intermediate_layer_bounds`` from its CROWN at the same ε; the dense engine with 0 intermediate
steps) and exactly 20 margin iterations.

Rows are appended to a JSONL as they finish (a rerun resumes; dense and fixed rows carry the
default's steps per layer of intermediate bounds and whether the equal-iteration variants ran
without the patience stop, and the summary uses the current ones); times are the one-thread
process's CPU seconds (its wall seconds too, which a shared machine stretches); the summary goes
to benchmarks/results/alpha_crown_speed.{json,md}.

Usage: ``python -m benchmarks.alpha_crown_speed [--models ode resnet] [--n 5 10] [--n-lirpa 0 3]
[--n-fixed 2 0] [--lirpa-sparse-alpha] [--lirpa-reference]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
LOG = RESULTS / "alpha_crown_speed.jsonl"


#: auto_LiRPA's slope storage with ``--lirpa-sparse-alpha`` (its own defaults; ours are dense).
SPARSE_ALPHA = {"sparse_features_alpha": True, "sparse_spec_alpha": True}


def _row(model_name: str, index: int, part: str, eps: float | None = None,
         lirpa_opts: dict | None = None, lirpa_reference: bool = False) -> dict:
    """One example's bounds: ``part`` "dense" (the dense engines), "fixed" (both α-CROWNs with
    CROWN's intermediate bounds) or "lirpa" (auto_LiRPA's α-CROWN
    with ``lirpa_opts`` over the engine's options, and with ``lirpa_reference`` its CROWN bounds
    as reference); ``eps`` None: CROWN's radius search finds it."""
    import torch

    from models.data import load_dataset
    from models.zoo import load
    from verify._alpha import INTERMEDIATE_ITERATIONS, ITERATIONS
    from verify.certify import Certifier, spec_matrix

    model = load(model_name)
    x, y = load_dataset("mnist-t10k", split="test", n=index + 1)
    xi, yi = x[index:index + 1], y[index:index + 1]
    crown = Certifier(model, "inf", "crown")
    eps = crown.radius(xi, yi, eps_max=0.5).upper if eps is None else eps
    row: dict = {"model": model_name, "index": index, "part": part, "eps": eps, "threads": torch.get_num_threads()}
    if part == "dense":
        row["intermediate_iterations"] = INTERMEDIATE_ITERATIONS
    row["without_patience"] = True
    if part == "dense":
        equal = _Exact(crown.ir, ITERATIONS)
        engines = [("crown", crown.bounds), ("alpha_dense", Certifier(model, "inf", "alpha-crown").bounds),
                   ("alpha_dense_equal", equal)]
    elif part == "fixed":
        alpha = Certifier(model, "inf", "alpha-crown", engine="auto_lirpa", bound_opts=SPARSE_ALPHA).bounds
        engines = [("alpha_dense_fixed", _Exact(crown.ir, 0)),
                   ("alpha_lirpa_fixed", _Referenced(model, alpha, fixed=True))]
    else:
        lirpa = Certifier(model, "inf", "alpha-crown", engine="auto_lirpa", bound_opts=lirpa_opts).bounds
        row["lirpa_bound_opts"] = getattr(lirpa, "bound_opts", None)
        row["lirpa_reference"] = lirpa_reference
        engines = [("alpha_lirpa", _Referenced(model, lirpa) if lirpa_reference else lirpa)]
    C = spec_matrix(yi, 10)
    for key, engine in engines:
        start, cpu = time.perf_counter(), time.process_time()
        lower = engine.margins(xi, torch.tensor([eps]), C)[0]
        row[key] = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                    "worst": float(lower.min()),
                    "margins": lower.tolist(), "engine": engine.name}
    for key, engine in engines:
        if isinstance(engine, _Referenced):
            row[key]["reference_cpu_seconds"] = engine.reference_cpu_seconds
    with torch.no_grad():
        row["clean_worst"] = float((C[0] @ model(xi)[0]).min())
    row["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return row


class _Exact:
    """Dense α-CROWN at exactly 20 margin steps and ``intermediate`` steps per layer: no early stop,
    no patience stop (auto_LiRPA's stops only after 10 steps without any gain)."""

    name = "dense"

    def __init__(self, ir: Any, intermediate: int) -> None:
        from verify._alpha import ITERATIONS, AlphaCrown
        from verify._dense_graph import DenseGraph

        self.alpha = AlphaCrown(DenseGraph.from_lowered(ir), "inf", ITERATIONS, intermediate, early_stop=False,
                                patience=ITERATIONS)

    def margins(self, x: Any, eps: Any, C: Any) -> Any:
        """(1, K') margin lower bounds of the one example ``x`` (1, ...) at ``eps`` (1,)."""
        return self.alpha.margins(x[0], float(eps[0]), C[0])[None]


class _Referenced:
    """auto_LiRPA's α-CROWN given its own CROWN bounds at the same ε as ``aux_reference_bounds``
    (``fixed``: as its fixed ``intermediate_layer_bounds``, so that only the margins' slopes move)."""

    name = "auto_LiRPA"

    def __init__(self, model: Any, alpha: Any, fixed: bool = False) -> None:
        from verify.certify import Certifier

        self.alpha, self.fixed = alpha, fixed
        self.crown = Certifier(model, "inf", "crown", engine="auto_lirpa", bound_opts=alpha.bound_opts).bounds
        self.reference_cpu_seconds = 0.0

    def margins(self, x: Any, eps: Any, C: Any) -> Any:
        """auto_LiRPA's CROWN, then its α-CROWN with those bounds as reference."""
        import torch

        cpu = time.process_time()
        with torch.no_grad():
            self.crown.margins(x, eps, C)
        reference = self.crown.reference()
        self.reference_cpu_seconds = time.process_time() - cpu
        return self.alpha.margins(x, eps, C, reference, fixed_intermediate=self.fixed)


def _version(row: dict) -> tuple | None:
    """What a row of the dense engine was computed with: the default's steps per layer of intermediate
    bounds (dense rows; before the field existed: 3) and whether the equal-iteration variants ran
    without the patience stop; None for auto_LiRPA's rows, which depend on neither."""
    if row["part"] == "lirpa":
        return None
    return row.get("intermediate_iterations", 3) if row["part"] == "dense" else None, row.get("without_patience", False)


def _current(row: dict) -> bool:
    from verify._alpha import INTERMEDIATE_ITERATIONS

    return _version(row) in (None, (INTERMEDIATE_ITERATIONS if row["part"] == "dense" else None, True))


def _summary(parts: list[dict]) -> tuple[dict, str]:
    merged: dict = {}
    for r in parts:  # one example's dense rows (of the current default) and auto_LiRPA's side by side
        if not _current(r):
            continue
        merged.setdefault((r["model"], r["index"]), {}).update(r)
    rows = [r for r in merged.values() if "crown" in r]
    out: dict = {}
    lines = ["| model | examples (auto_LiRPA) | CROWN CPU s | dense α CPU s | dense α (20/20) CPU s | "
             "auto_LiRPA α CPU s | dense α ≥ CROWN | dense α − CROWN (worst, median) | "
             "dense α − auto_LiRPA α (worst, median) | dense α 20/20 − auto_LiRPA α (worst, min) | "
             "margins dense 20/20 ≥ auto_LiRPA − 1e-4 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in sorted({r["model"] for r in rows}):
        rs = [r for r in rows if r["model"] == model]
        lr = [r for r in rs if "alpha_lirpa" in r]
        pairs = [(a, b) for r in lr for a, b in zip(r["alpha_dense_equal"]["margins"], r["alpha_lirpa"]["margins"])]
        s = {
            "n": len(rs), "n_lirpa": len(lr),
            "crown_s_median": statistics.median(r["crown"]["cpu_seconds"] for r in rs),
            "alpha_dense_s_median": statistics.median(r["alpha_dense"]["cpu_seconds"] for r in rs),
            "alpha_dense_s_max": max(r["alpha_dense"]["cpu_seconds"] for r in rs),
            "alpha_lirpa_s_median": statistics.median(r["alpha_lirpa"]["cpu_seconds"] for r in lr) if lr else None,
            "alpha_dense_wall_s_median": statistics.median(r["alpha_dense"]["seconds"] for r in rs),
            "alpha_equal_s_median": statistics.median(r["alpha_dense_equal"]["cpu_seconds"] for r in rs),
            "dense_ge_crown": all(a >= c - 1e-6 for r in rs
                                  for a, c in zip(r["alpha_dense"]["margins"], r["crown"]["margins"])),
            "worst_gain_over_lirpa_median": statistics.median(
                r["alpha_dense"]["worst"] - r["alpha_lirpa"]["worst"] for r in lr) if lr else None,
            "equal_worst_gain_over_lirpa_min": min(
                r["alpha_dense_equal"]["worst"] - r["alpha_lirpa"]["worst"] for r in lr) if lr else None,
            "alpha_gain_over_crown_median": statistics.median(
                r["alpha_dense"]["worst"] - r["crown"]["worst"] for r in rs),
            "margins_dense_ge_lirpa": f"{sum(a >= b - 1e-4 for a, b in pairs)}/{len(pairs)}",
            "lirpa_sparse_alpha": sorted({bool(r.get("lirpa_bound_opts", {}).get("sparse_spec_alpha")) for r in lr}),
        }
        out[model] = s
        lir = f"{s['alpha_lirpa_s_median']:.1f}" if lr else "—"
        lir += " (sparse α)" if True in s["lirpa_sparse_alpha"] else ""
        lir += " (CROWN reference)" if any(r.get("lirpa_reference") for r in lr) else ""
        gain = f"{s['worst_gain_over_lirpa_median']:+.4f}" if lr else "—"
        eq = f"{s['equal_worst_gain_over_lirpa_min']:+.4f}" if lr else "—"
        lines.append(f"| {model} | {s['n']} ({s['n_lirpa']}) | {s['crown_s_median']:.2f} | "
                     f"{s['alpha_dense_s_median']:.1f} (max {s['alpha_dense_s_max']:.1f}) | "
                     f"{s['alpha_equal_s_median']:.1f} | {lir} | {s['dense_ge_crown']} | "
                     f"{s['alpha_gain_over_crown_median']:+.4f} | {gain} | {eq} | {s['margins_dense_ge_lirpa']} |")
    fixed = [r for r in merged.values() if "alpha_lirpa_fixed" in r]
    if fixed:
        lines += ["", "Intermediate bounds fixed at CROWN's, 20 margin iterations on both sides, no early stop:", "",
                  "| model | examples | dense α CPU s | auto_LiRPA α CPU s (of which its CROWN) | "
                  "dense − auto_LiRPA (worst margin, min) | margins dense ≥ auto_LiRPA − 1e-4 |", "|---|---|---|---|---|---|"]
    for model in sorted({r["model"] for r in fixed}):
        rs = [r for r in fixed if r["model"] == model]
        pairs = [(a, b) for r in rs for a, b in zip(r["alpha_dense_fixed"]["margins"], r["alpha_lirpa_fixed"]["margins"])]
        f = {"n": len(rs),
             "dense_s_median": statistics.median(r["alpha_dense_fixed"]["cpu_seconds"] for r in rs),
             "lirpa_s_median": statistics.median(r["alpha_lirpa_fixed"]["cpu_seconds"] for r in rs),
             "lirpa_reference_s_median": statistics.median(r["alpha_lirpa_fixed"]["reference_cpu_seconds"] for r in rs),
             "worst_gain_min": min(r["alpha_dense_fixed"]["worst"] - r["alpha_lirpa_fixed"]["worst"] for r in rs),
             "margins_dense_ge_lirpa": f"{sum(a >= b - 1e-4 for a, b in pairs)}/{len(pairs)}"}
        out.setdefault(model, {})["fixed_intermediate"] = f
        lines.append(f"| {model} | {f['n']} | {f['dense_s_median']:.1f} | {f['lirpa_s_median']:.1f} "
                     f"({f['lirpa_reference_s_median']:.1f}) | {f['worst_gain_min']:+.4f} | {f['margins_dense_ge_lirpa']} |")
    return out, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ode", "resnet"])
    p.add_argument("--n", type=int, nargs="+", default=[5, 10], help="examples per model (dense engines)")
    p.add_argument("--n-lirpa", type=int, nargs="+", default=[0, 3],
                   help="of which auto_LiRPA also bounds (not on ode by default: over 10 GB)")
    p.add_argument("--n-fixed", type=int, nargs="+", default=[2, 0],
                   help="examples bounded by both α-CROWNs with CROWN's intermediate bounds fixed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lirpa-sparse-alpha", action="store_true",
                   help="auto_LiRPA's own sparse slope tensors (one bound per traced module)")
    p.add_argument("--lirpa-reference", action="store_true",
                   help="auto_LiRPA's CROWN bounds at the same eps as its α-CROWN's reference bounds")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    logged = [json.loads(line) for line in LOG.read_text().splitlines()] if LOG.exists() else []
    done = {(r["model"], r["index"], r["part"]) for r in logged if _current(r)}
    eps_of = {(r["model"], r["index"]): r["eps"] for r in logged}  # auto_LiRPA's rows at the dense rows' ε
    # every dense row first (minutes), then auto_LiRPA's (about 1 CPU minute per bound on resnet, 10 on ode)
    plan = [(m, i, "dense") for m, n in zip(args.models, args.n) for i in range(n)]
    plan += [(m, i, "fixed") for m, n in zip(args.models, args.n_fixed) for i in range(n)]
    plan += [(m, i, "lirpa") for m, n in sorted(zip(args.models, args.n_lirpa), key=lambda t: t[0] == "ode")
             for i in range(n)]
    for model, i, part in plan:
        if (model, i, part) in done:
            continue
        if part == "dense":
            row = _row(model, i, part)
            eps_of[(model, i)] = row["eps"]
        elif part == "fixed":
            row = _row(model, i, part, eps_of.get((model, i)))
        else:
            row = _row(model, i, part, eps_of.get((model, i)), SPARSE_ALPHA if args.lirpa_sparse_alpha else None,
                       args.lirpa_reference)
        with LOG.open("a") as f:
            f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in LOG.read_text().splitlines()]
    summary, table = _summary(rows)
    (RESULTS / "alpha_crown_speed.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    (RESULTS / "alpha_crown_speed.md").write_text(
        "# α-CROWN per bound: dense engine vs auto_LiRPA 0.3 (one thread, one resumable run)\n\n"
        "At the ε where dense CROWN stops certifying; 20 margin iterations on both sides. Times are CPU\n"
        "seconds of the one-thread process (wall seconds, longer on a shared machine, are in the JSON).\n"
        "auto_LiRPA's α-CROWN on `ode` does not fit in the 10 GB a process may use on the build machine\n"
        "(see the script's docstring); the second table is the side by side that fits.\n\n" + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
