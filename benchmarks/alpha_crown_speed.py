"""α-CROWN per bound: the dense engine (verify._alpha) next to auto_LiRPA 0.3's, one thread, one run.

Per held-out example of a zoo model, at the ε where CROWN stops certifying (the ``upper`` end
of the dense CROWN radius search, where slope optimisation matters), the worst margin bound
and the seconds of: dense CROWN; dense α-CROWN as ``--method alpha-crown`` runs it (20 margin
iterations, auto_LiRPA's default, ``verify._alpha.INTERMEDIATE_ITERATIONS`` (6) per layer of
intermediate bounds, stopping once every
margin is positive); dense α-CROWN at auto_LiRPA's iteration count everywhere ("20/20": 20
margin and 20 intermediate iterations, no early stop); and, on the first ``--n-lirpa`` examples, auto_LiRPA's α-CROWN (``compute_bounds(method=
"CROWN-Optimized")``, 20 iterations, matrix mode). Rows are appended to a JSONL as they finish
(a rerun resumes; dense rows carry the default's steps per layer of intermediate bounds, and the
summary uses the rows of the current default); times are the one-thread process's CPU seconds (its
wall seconds too, which a shared machine stretches); the summary goes to
benchmarks/results/alpha_crown_speed.{json,md}.

Usage: ``python -m benchmarks.alpha_crown_speed [--models ode resnet] [--n 5 10] [--n-lirpa 2 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LOG = RESULTS / "alpha_crown_speed.jsonl"


def _row(model_name: str, index: int, part: str) -> dict:
    """One example's bounds: ``part`` "dense" (the dense engines) or "lirpa" (auto_LiRPA's α-CROWN)."""
    import torch

    from models.data import load_dataset
    from models.zoo import load
    from verify import DenseAlphaCrown
    from verify._alpha import INTERMEDIATE_ITERATIONS, ITERATIONS
    from verify.certify import Certifier, spec_matrix

    model = load(model_name)
    x, y = load_dataset("mnist-t10k", split="test", n=index + 1)
    xi, yi = x[index:index + 1], y[index:index + 1]
    crown = Certifier(model, "inf", "crown")
    eps = crown.radius(xi, yi, eps_max=0.5).upper
    row: dict = {"model": model_name, "index": index, "part": part, "eps": eps, "threads": torch.get_num_threads()}
    if part == "dense":
        row["intermediate_iterations"] = INTERMEDIATE_ITERATIONS
    if part == "dense":
        equal = DenseAlphaCrown(crown.ir, "inf", intermediate_iterations=ITERATIONS, early_stop=False)
        engines = [("crown", crown.bounds), ("alpha_dense", Certifier(model, "inf", "alpha-crown").bounds),
                   ("alpha_dense_equal", equal)]
    else:
        engines = [("alpha_lirpa", Certifier(model, "inf", "alpha-crown", engine="auto_lirpa").bounds)]
    C = spec_matrix(yi, 10)
    for key, engine in engines:
        start, cpu = time.perf_counter(), time.process_time()
        lower = engine.margins(xi, torch.tensor([eps]), C)[0]
        row[key] = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                    "worst": float(lower.min()),
                    "margins": lower.tolist(), "engine": engine.name}
    with torch.no_grad():
        row["clean_worst"] = float((C[0] @ model(xi)[0]).min())
    return row


def _version(row: dict) -> int | None:
    """The default α-CROWN's steps per layer of intermediate bounds a dense row was computed with (rows
    before the field existed: 3); None for auto_LiRPA's rows, which do not depend on it."""
    return row.get("intermediate_iterations", 3) if row["part"] == "dense" else None


def _summary(parts: list[dict]) -> tuple[dict, str]:
    from verify._alpha import INTERMEDIATE_ITERATIONS

    merged: dict = {}
    for r in parts:  # one example's dense rows (of the current default) and auto_LiRPA's side by side
        if _version(r) not in (None, INTERMEDIATE_ITERATIONS):
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
        }
        out[model] = s
        lir = f"{s['alpha_lirpa_s_median']:.1f}" if lr else "—"
        gain = f"{s['worst_gain_over_lirpa_median']:+.4f}" if lr else "—"
        eq = f"{s['equal_worst_gain_over_lirpa_min']:+.4f}" if lr else "—"
        lines.append(f"| {model} | {s['n']} ({s['n_lirpa']}) | {s['crown_s_median']:.2f} | "
                     f"{s['alpha_dense_s_median']:.1f} (max {s['alpha_dense_s_max']:.1f}) | "
                     f"{s['alpha_equal_s_median']:.1f} | {lir} | {s['dense_ge_crown']} | "
                     f"{s['alpha_gain_over_crown_median']:+.4f} | {gain} | {eq} | {s['margins_dense_ge_lirpa']} |")
    return out, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ode", "resnet"])
    p.add_argument("--n", type=int, nargs="+", default=[5, 10], help="examples per model (dense engines)")
    p.add_argument("--n-lirpa", type=int, nargs="+", default=[2, 3], help="of which auto_LiRPA also bounds")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    from verify._alpha import INTERMEDIATE_ITERATIONS

    done = ({(r["model"], r["index"], r["part"]) for r in map(json.loads, LOG.read_text().splitlines())
             if _version(r) in (None, INTERMEDIATE_ITERATIONS)} if LOG.exists() else set())
    # every dense row first (minutes), then auto_LiRPA's (about 1 CPU minute per bound on resnet, 10 on ode)
    plan = [(m, i, "dense") for m, n in zip(args.models, args.n) for i in range(n)]
    plan += [(m, i, "lirpa") for m, n in sorted(zip(args.models, args.n_lirpa), key=lambda t: t[0] == "ode")
             for i in range(n)]
    for model, i, part in plan:
        if (model, i, part) in done:
            continue
        row = _row(model, i, part)
        with LOG.open("a") as f:
            f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in LOG.read_text().splitlines()]
    summary, table = _summary(rows)
    (RESULTS / "alpha_crown_speed.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    (RESULTS / "alpha_crown_speed.md").write_text(
        "# α-CROWN per bound: dense engine vs auto_LiRPA 0.3 (one thread, one resumable run)\n\n"
        "At the ε where dense CROWN stops certifying; 20 margin iterations on both sides. Times are CPU\n"
        "seconds of the one-thread process (wall seconds, longer on a shared machine, are in the JSON).\n\n" + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
