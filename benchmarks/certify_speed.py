"""CROWN L∞ certified radii of held-out examples of a zoo model: this toolkit vs plain auto_LiRPA.

fast:  ``verify.certify.Certifier.radius``: the dense CROWN engine (verify.crown), a search
       that starts just above the expected radius, and stable-neuron skipping from the failed
       larger-ε bound.
plain: per example a fresh BoundedModule and plain ``compute_bounds(method="backward")``
       at exactly the ε values the fast search evaluated, so the bounds can be compared
       (max |difference| reported) and the time per example is like-for-like.

Usage: ``python -m benchmarks.certify_speed [--model ode] [--n 100] [--n-plain 3]``;
writes benchmarks/results/certify_speed.{json,md}. Peak memory is ru_maxrss of a
subprocess per configuration.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _worker(mode: str, model_name: str, n: int, plan_path: str | None) -> dict:
    import torch

    torch.set_num_threads(1)
    from models.data import load_dataset
    from models.zoo import load
    from verify._lirpa_compat import import_auto_lirpa
    from verify.certify import Certifier, spec_matrix
    from verify.unroll import unroll

    model = load(model_name)
    x, y = load_dataset("mnist-t10k", split="test", n=None)
    x, y = x[:n], y[:n]
    out: dict = {"mode": mode, "n": n, "examples": []}
    start = time.perf_counter()
    if mode == "fast":
        cert = Certifier(model, "inf", "crown")
        out["engine"] = cert.engine
        for i in range(n):
            r = cert.radius(x[i:i + 1], y[i:i + 1], 0.5)
            out["examples"].append({"index": i, "radius": r.radius, "upper": r.upper, "evals": r.evaluations,
                                    "seconds": r.seconds, "history": r.margins})
    else:
        lirpa = import_auto_lirpa()
        plan = json.loads(Path(plan_path).read_text())["examples"][:n]
        for ex in plan:
            i = ex["index"]
            t0 = time.perf_counter()
            xi, yi = x[i:i + 1], y[i:i + 1]
            bm = lirpa.BoundedModule(unroll(model).module, torch.zeros_like(xi), device="cpu")
            C = spec_matrix(yi, 10)
            worst = []
            for eps, _ in ex["history"][1:]:
                ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(xi - eps).clamp(0, 1),
                                               x_U=(xi + eps).clamp(0, 1))
                lb, _ = bm.compute_bounds(x=(lirpa.BoundedTensor(xi, ptb),), C=C, method="backward")
                worst.append(float(lb.min()))
            out["examples"].append({"index": i, "seconds": time.perf_counter() - t0, "worst": worst})
    out["total_seconds"] = time.perf_counter() - start
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ode")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--n-plain", type=int, default=3)
    p.add_argument("--worker", choices=["fast", "plain"])
    p.add_argument("--plan")
    p.add_argument("--out")
    a = p.parse_args()
    if a.worker:
        Path(a.out).write_text(json.dumps(_worker(a.worker, a.model, a.n, a.plan)))
        return 0
    RESULTS.mkdir(exist_ok=True)
    fast_p, plain_p = RESULTS / "_fast.json", RESULTS / "_plain.json"
    cmd = [sys.executable, "-m", "benchmarks.certify_speed", "--model", a.model]
    subprocess.run(cmd + ["--worker", "fast", "--n", str(a.n), "--out", str(fast_p)], check=True)
    subprocess.run(cmd + ["--worker", "plain", "--n", str(a.n_plain), "--plan", str(fast_p), "--out", str(plain_p)],
                   check=True)
    fast, plain = json.loads(fast_p.read_text()), json.loads(plain_p.read_text())
    diffs = [abs(w - h[1]) for fe, pe in zip(fast["examples"], plain["examples"])
             for w, h in zip(pe["worst"], fe["history"][1:])]
    k = len(plain["examples"])
    fast_k = sum(e["seconds"] for e in fast["examples"][:k]) / k
    plain_k = sum(e["seconds"] for e in plain["examples"]) / k
    res = {"model": a.model, "engine": fast["engine"], "threads": 1, "n_fast": a.n, "n_plain": k, "fast_total_seconds": fast["total_seconds"],
           "fast_seconds_per_example": fast["total_seconds"] / a.n, "fast_seconds_per_example_on_shared": fast_k,
           "plain_seconds_per_example_on_shared": plain_k, "speedup_on_shared": plain_k / fast_k,
           "max_bound_difference": max(diffs) if diffs else None, "bounds_compared": len(diffs),
           "bounds_differing_over_1e-5": sum(d > 1e-5 for d in diffs),
           "certified_decisions_differing": sum((w > 0) != (h[1] > 0) for fe, pe in zip(fast["examples"], plain["examples"])
                                                for w, h in zip(pe["worst"], fe["history"][1:])),
           "fast_max_rss_mb": fast["max_rss_mb"], "plain_max_rss_mb": plain["max_rss_mb"],
           "median_evals": sorted(e["evals"] for e in fast["examples"])[a.n // 2],
           "radii": [e["radius"] for e in fast["examples"]]}
    (RESULTS / "certify_speed.json").write_text(json.dumps(res, indent=1))
    md = ["| quantity | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                                                  for k, v in res.items() if k != "radii"]
    (RESULTS / "certify_speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
