"""How far can α-CROWN's radius go? Precise CROWN, α-CROWN and converged α-CROWN radii per example.

Issue 16 asks for α-CROWN radii ≥ 1.1× CROWN's median on zoo `ode`. The tightness study measures
radii at rtol 0.01, so a ratio near 1.1 cannot be told from it (each radius may lie up to 1 %
below its true value). Here, per held-out example of a zoo model, one thread:

* CROWN's radius to rtol 1e-4 (a bound costs seconds);
* the default α-CROWN's radius (what ``--method alpha-crown`` runs: 6 steps per layer of
  intermediate bounds, 20 on the margins, early stop) to rtol 1e-3;
* α-CROWN run to convergence (30 steps per layer, 50 on the margins, every step, no early or
  patience stop) to rtol 1e-3: on every net where LP-all (:mod:`verify._lp_all`, the ceiling of
  any α-CROWN) can be computed, this reaches it (``tests/verify/test_lp_all.py``; zoo ``mlp`` and
  ``ode-small`` to 1e-4 of the margin), so its radius is what no slope optimisation can beat.

The radius search is :meth:`verify.certify.Certifier.radius` (every radius is certified by a
bound computed at it); the first guesses are the tightness study's radii where its cells exist.
One cell per (model, example, radius) is appended to ``benchmarks/results/alpha_ceiling.jsonl``
as it finishes (:mod:`benchmarks._cells`: a rerun resumes; processes given disjoint ``--indices``
can share the file); the table and summary (per example ratios, medians, the ratio of the
medians) go to ``benchmarks/results/alpha_ceiling.{json,md}``.

Usage: ``python -m benchmarks.alpha_ceiling [--model ode] [--indices 0 1 ...]`` (about 8 CPU
minutes per `ode` example, most of it in the converged α-CROWN).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from ._cells import read_cells, resumable_cells, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CELLS = ROOT / "results" / "tightness" / "cells.jsonl"
#: (name, intermediate steps, margin steps, early stop, patience, warm start, rtol) of the α-CROWN
#: variants: every bound from CROWN's slopes (default settings; converged), and ``--method alpha-crown``
#: as deployed (warm: each bound of the search starts from the previous bound's slopes).
VARIANTS = (("alpha-default", 6, 20, True, 10, False, 1e-3), ("alpha-converged", 30, 50, False, 50, False, 1e-3),
            ("alpha-warm", 6, 20, True, 10, True, 2e-4))
CROWN_RTOL = 1e-4
EPS_MAX = 0.5
#: the radii of one example, one cell each: CROWN's, then the α-CROWN variants'.
PARTS = ("crown", *(v[0] for v in VARIANTS))
KEY_FIELDS = ("model", "index", "part")


def _guesses(model: str, index: int) -> dict[str, float]:
    out: dict[str, float] = {}
    if CELLS.exists():
        for line in CELLS.read_text().splitlines():
            r = json.loads(line)
            key = r["key"]
            if key == f"{model}/crown/i{index}/rtol0.01":
                out["crown"] = r["value"]["radius"]
            elif key.startswith(f"{model}/alpha-crown/i{index}/rtol0.01-"):
                out["alpha"] = r["value"]["radius"]
    return out


def radius(model_name: str, index: int, part: str) -> dict[str, Any]:
    """One radius of one example (``part``: "crown" or a variant of :data:`VARIANTS`), its bracket,
    bound evaluations, search history and CPU seconds (one thread)."""
    import torch

    from models.data import load_dataset
    from models.zoo import load
    from verify.certify import Certifier

    torch.set_num_threads(1)
    model = load(model_name).eval()
    x, y = load_dataset("mnist-t10k", split="test", n=index + 1)
    guess = _guesses(model_name, index)
    if part == "crown":
        cert, rtol, guess_eps = Certifier(model, "inf", "crown"), CROWN_RTOL, guess.get("crown")
    else:
        _, inter, iters, early, patience, warm, rtol = next(v for v in VARIANTS if v[0] == part)
        cert = Certifier(model, "inf", "alpha-crown")
        eng = cert.bounds._crown
        eng.intermediate_iterations, eng.iterations, eng.early_stop, eng.patience = inter, iters, early, patience
        eng.warm_start = warm
        guess_eps = guess.get("alpha", 1.09 * guess["crown"] if "crown" in guess else None)
    t = time.process_time()
    r = cert.radius(x[index:index + 1], y[index:index + 1], EPS_MAX, guess=guess_eps, rtol=rtol, atol=1e-7,
                    max_evals=30 if part == "crown" else 12)
    return {"model": model_name, "index": index, "part": part, "radius": r.radius, "upper": r.upper,
            "evals": r.evaluations, "cpu": time.process_time() - t, "margins": [list(m) for m in r.margins]}


def rows_of(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per example with every part: {"model", "index", part: its cell, ...}, by model and index."""
    by: dict[tuple[str, int], dict[str, Any]] = {}
    for c in cells:
        by.setdefault((c["model"], c["index"]), {"model": c["model"], "index": c["index"]})[c["part"]] = c
    return [r for _, r in sorted(by.items()) if all(k in r for k in PARTS)]


def lp_check(model_name: str, index: int, eps: float, per_layer: int, seed: int = 0) -> dict[str, Any]:
    """Is converged α-CROWN at its LP? At ``eps``, the converged α-CROWN's bounds of ``per_layer``
    random unstable neurons of every ReLU layer, and its margins, against the triangle LP of the
    network before them relaxed with α-CROWN's own bounds of the earlier layers (HiGHS). α-CROWN
    is a dual-feasible point of exactly that LP, so the LP is never below it; a gap near 0 at every
    layer means its slopes reached the LP optimum, layer by layer, i.e. LP-all. (LP-all itself
    costs about 7,200 LPs on zoo `ode`, hours; this samples it.)"""
    import numpy as np
    import torch

    from models.data import load_dataset
    from models.zoo import load
    from verify._alpha import AlphaCrown
    from verify._dense_graph import DenseGraph
    from verify._lp_all import minimise
    from verify._milp_encoding import Encoder
    from verify._spec import spec_matrix

    torch.set_num_threads(1)
    model = load(model_name).eval()
    x, y = load_dataset("mnist-t10k", split="test", n=index + 1)
    xi = x[index:index + 1]
    C = spec_matrix(y[index:index + 1], 10)[0]
    graph = DenseGraph.from_model(model)
    name, inter, iters, _, patience, _, _ = VARIANTS[1]
    alpha = AlphaCrown(graph, "inf", iterations=iters, intermediate_iterations=inter, patience=patience,
                       early_stop=False)
    t = time.process_time()
    with torch.enable_grad():
        margins = alpha.margins(xi, eps, C).detach().double().numpy()
    alpha_cpu = time.process_time() - t
    enc = Encoder(graph)
    bounds, _ = enc.bounds(xi, eps, C, tighter=alpha.bounds)
    x0 = enc.node_x(xi)
    rng = np.random.default_rng(seed)
    programs = 0
    layers = []
    t = time.process_time()
    for _, p in graph.relus:
        node = graph.nodes[p]
        if node.kind == "affine" and node.src[0] == 0:
            continue
        lo, hi = bounds[p]
        unstable = np.nonzero((lo < 0) & (hi > 0))[0]
        pick = rng.choice(unstable, size=min(per_layer, unstable.size), replace=False) if unstable.size else unstable
        prog, cols, _, _ = enc.encode(x0, bounds[0], bounds, None, upto=p)
        vals, runs = minimise(prog, [(cols[j], sgn) for j in pick for sgn in (1.0, -1.0)], math.inf)
        programs += runs
        width = hi[pick] - lo[pick]
        gaps = [None if vals[2 * k] is None else (vals[2 * k] - lo[j]) / width[k] for k, j in enumerate(pick)]
        gaps += [None if vals[2 * k + 1] is None else (hi[j] + vals[2 * k + 1]) / width[k]
                 for k, j in enumerate(pick)]
        layers.append({"node": p, "unstable": int(unstable.size), "columns": prog.n_col, "sampled": len(pick),
                       "gap_rel_width": gaps})
    prog, logits, _, _ = enc.encode(x0, bounds[0], bounds, None)
    final, runs = minimise(prog, [(logits, r) for r in C.double().numpy()], math.inf)
    return {"model": model_name, "index": index, "eps": eps, "variant": name, "alpha_margins": margins.tolist(),
            "lp_margins": final, "layers": layers, "alpha_cpu": alpha_cpu, "lp_cpu": time.process_time() - t,
            "programs": programs + runs}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per example ratios to CROWN's radius, their medians and the ratios of the medians."""
    ok = [r for r in rows if r["crown"]["radius"] > 0]
    med = {k: statistics.median(r[k]["radius"] for r in ok) for k in ("crown", *(v[0] for v in VARIANTS))}
    per = {v[0]: [r[v[0]]["radius"] / r["crown"]["radius"] for r in ok] for v in VARIANTS}
    return {"model": sorted({r["model"] for r in rows}), "n": len(ok), "indices": [r["index"] for r in ok],
            "median_radius": med, "ratio_of_medians": {k: med[k] / med["crown"] for k in per},
            "median_ratio": {k: statistics.median(v) for k, v in per.items()},
            "ratio_range": {k: [min(v), max(v)] for k, v in per.items()},
            "median_cpu_per_bound": {k: statistics.median(r[k]["cpu"] / max(r[k]["evals"], 1) for r in ok)
                                     for k in ("crown", *per)},
            "over_default": {k: statistics.median(r[k]["radius"] / r["alpha-default"]["radius"] for r in ok)
                             for k in per if k != "alpha-default"},
            "ratio_of_upper_medians": {k: statistics.median(r[k]["upper"] for r in ok)
                                       / statistics.median(r["crown"]["upper"] for r in ok) for k in per}}


def markdown(rows: list[dict[str, Any]], s: dict[str, Any]) -> str:
    names = [v[0] for v in VARIANTS]
    lines = [f"# α-CROWN's ceiling on {', '.join(s['model'])}: precise radii, {s['n']} held-out examples", "",
             f"CROWN rtol {CROWN_RTOL:g}. α-CROWN: " + "; ".join(
                 f"{n}: {inter} steps per layer, {iters} on the margins, "
                 + ("early stop" if early else "every step") + (", warm-started" if warm else ", from CROWN's slopes")
                 + f", rtol {rtol:g}" for n, inter, iters, early, _, warm, rtol in VARIANTS)
             + ". Radii are certified (a bound at that ε).", "",
             "| example | CROWN | " + " | ".join(names) + " | " + " | ".join(f"{n} / CROWN" for n in names)
             + " | CPU s per bound (CROWN / " + " / ".join(names) + ") |",
             "|---" * (2 + 2 * len(names) + 1) + "|"]
    for r in sorted(rows, key=lambda r: r["index"]):
        c = r["crown"]
        lines.append(f"| {r['index']} | {c['radius']:.5f} | " + " | ".join(f"{r[n]['radius']:.5f}" for n in names)
                     + " | " + " | ".join(f"{r[n]['radius'] / c['radius']:.4f}" for n in names) + " | "
                     + " / ".join(f"{r[k]['cpu'] / max(r[k]['evals'], 1):.1f}" for k in ("crown", *names)) + " |")
    rom, mr = s["ratio_of_medians"], s["median_ratio"]
    lines += ["", "Median radius: " + ", ".join(f"{k} {v:.5f}" for k, v in s["median_radius"].items()) + ".",
              "Median α-CROWN radius / median CROWN radius (each radius the lower, certified end of its bracket): "
              + ", ".join(f"{n} **{rom[n]:.5f}**" for n in names)
              + "; from the brackets' upper ends: " + ", ".join(f"{n} {s['ratio_of_upper_medians'][n]:.5f}" for n in names)
              + "; median of the per-example ratios: " + ", ".join(f"{n} {mr[n]:.4f}" for n in names)
              + "; radius / default radius (median): " + ", ".join(f"{k} {v:.4f}" for k, v in s["over_default"].items())
              + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ode")
    p.add_argument("--indices", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--log", default=str(RESULTS / "alpha_ceiling.jsonl"))
    p.add_argument("--lp-check", type=int, default=0, metavar="K",
                   help="instead: per listed example, K sampled neurons per layer of the converged α-CROWN against "
                        "their LP (see lp_check), at the example's converged α-CROWN failing ε from --log")
    a = p.parse_args(argv)
    if any(i < 0 for i in a.indices) or a.lp_check < 0:
        p.error("--indices and --lp-check must be >= 0")
    if a.lp_check:
        return _lp_check_main(a)
    cells = resumable_cells(Path(a.log), KEY_FIELDS, [(a.model, i, part) for i in a.indices for part in PARTS], radius)
    tag = "alpha_ceiling" + ("" if a.model == "ode" else "-" + a.model)
    write_results(RESULTS, tag, a, rows_of(cells), lambda rows: markdown(rows, summary(rows)))
    return 0


def _lp_check_main(a: argparse.Namespace) -> int:
    rows = {(r["model"], r["index"]): r for r in rows_of(read_cells(Path(a.log)))}
    out = RESULTS / f"alpha_ceiling_lp{'' if a.model == 'ode' else '-' + a.model}.jsonl"
    for i in a.indices:
        if (a.model, i) not in rows:
            raise SystemExit(f"error: no radii of {a.model} example {i} in {a.log}: run without --lp-check first")
        rec = lp_check(a.model, i, rows[(a.model, i)]["alpha-converged"]["upper"], a.lp_check)
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        gaps = [g for layer in rec["layers"] for g in layer["gap_rel_width"] if g is not None]
        print(f"{a.model} {i} at ε {rec['eps']:.5f}: {len(gaps)} sampled bounds, LP − α-CROWN gap / bound width "
              f"median {statistics.median(gaps):.2e} max {max(gaps):.2e}; worst margin α-CROWN "
              f"{min(rec['alpha_margins']):.4f}, LP {min(v for v in rec['lp_margins'] if v is not None):.4f}; "
              f"LP CPU {rec['lp_cpu']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
