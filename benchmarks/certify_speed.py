"""CROWN L∞ certified radii of held-out examples of a zoo model: this toolkit vs plain auto_LiRPA.

fast:  what ``python -m verify certify --model M --method crown --no-attack [--jobs J]`` runs
       (verify.run.certify_parallel): the dense CROWN engine (verify.crown), a radius search
       that starts just above the expected radius and models the bound's drop as a power of ε,
       and stable-neuron skipping from the failed larger-ε bound; J worker processes.
plain: per example a fresh BoundedModule and plain ``compute_bounds(method="backward")``
       at exactly the ε values the fast search evaluated, so the bounds can be compared
       (max |difference| reported) and the time per example is like-for-like (one thread
       per example on both sides when J equals the number of cores).

Usage: ``python -m benchmarks.certify_speed [--model ode] [--n 100] [--n-plain 3] [--threads 1] [--jobs 1]``;
writes benchmarks/results/certify_speed.{json,md}. Peak memory is ru_maxrss of a
subprocess per configuration (and of each fast worker).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _worker(mode: str, model_name: str, n: int, plan_path: str | None, threads: int, jobs: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from models.data import load_dataset
    from models.zoo import load
    from verify._lirpa_compat import import_auto_lirpa
    from verify.certify import Certifier, spec_matrix
    from verify._backends import certify_parallel
    from verify.run import RunSpec, read_records
    from verify.unroll import unroll

    model = load(model_name)
    x, y = load_dataset("mnist-t10k", split="test", n=None)
    out: dict = {"mode": mode, "n": n, "examples": []}
    if mode == "fast":
        out["engine"] = Certifier(model, "inf", "crown").engine  # before the clock starts
    start, cpu0 = time.perf_counter(), time.process_time()
    if mode == "fast":
        # exactly what `python -m verify certify --model M --method crown --no-attack --jobs J` runs
        with tempfile.TemporaryDirectory() as tmp:
            spec = RunSpec(model=model_name, methods=("crown",), n=n, attack=False, jobs=jobs)
            certify_parallel(spec, tmp, model, x, y, progress=False)
            records = read_records(Path(tmp) / "results.jsonl")
        out["max_rss_mb_workers"] = max(r["max_rss_mb"] for r in records)
        for r in records:
            c = r["methods"]["crown"]
            out["examples"].append({"index": r["index"], "radius": c["radius"], "upper": c["upper"],
                                    "evals": c["evaluations"], "seconds": c["seconds"], "history": c["margins"]})
    else:
        lirpa = import_auto_lirpa()
        # Evenly spaced examples of the fast run: the first example of each worker has no prior
        # radius to start from, so the first few are not typical of the run.
        examples = json.loads(Path(plan_path).read_text())["examples"]
        plan = examples[::max(1, len(examples) // n)][:n]
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
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the --jobs workers, reaped by now
    out["total_cpu_seconds"] = time.process_time() - cpu0 + kids.ru_utime + kids.ru_stime
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ode")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--n-plain", type=int, default=3)
    p.add_argument("--worker", choices=["fast", "plain"])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the plain side and of a single fast job")
    p.add_argument("--jobs", type=int, default=1, help="worker processes of the fast side (verify certify --jobs)")
    p.add_argument("--reuse-fast", action="store_true", help="compare with the fast run already in results/_fast.json")
    p.add_argument("--plan")
    p.add_argument("--out")
    a = p.parse_args()
    if a.worker:
        Path(a.out).write_text(json.dumps(_worker(a.worker, a.model, a.n, a.plan, a.threads, a.jobs)))
        return 0
    RESULTS.mkdir(exist_ok=True)
    fast_p, plain_p = RESULTS / "_fast.json", RESULTS / "_plain.json"
    cmd = [sys.executable, "-m", "benchmarks.certify_speed", "--model", a.model, "--threads", str(a.threads),
           "--jobs", str(a.jobs)]
    if not a.reuse_fast:
        subprocess.run(cmd + ["--worker", "fast", "--n", str(a.n), "--out", str(fast_p)], check=True)
    subprocess.run(cmd + ["--worker", "plain", "--n", str(a.n_plain), "--plan", str(fast_p), "--out", str(plain_p)],
                   check=True)
    fast, plain = json.loads(fast_p.read_text()), json.loads(plain_p.read_text())
    by_index = {e["index"]: e for e in fast["examples"]}
    pairs = [(w, h[1]) for pe in plain["examples"] for w, h in zip(pe["worst"], by_index[pe["index"]]["history"][1:])]
    diffs = [abs(w - f) for w, f in pairs]
    k = len(plain["examples"])
    fast_k = sum(by_index[pe["index"]]["seconds"] for pe in plain["examples"]) / k
    plain_k = sum(e["seconds"] for e in plain["examples"]) / k
    res = {"model": a.model, "engine": fast["engine"], "threads": a.threads, "jobs": a.jobs, "n_fast": a.n, "n_plain": k, "fast_total_seconds": fast["total_seconds"],
           "fast_seconds_per_example": fast["total_seconds"] / a.n,
           "fast_total_cpu_seconds": fast["total_cpu_seconds"], "plain_total_cpu_seconds": plain["total_cpu_seconds"],
           "load_average_at_end": round(os.getloadavg()[0], 2), "fast_seconds_per_example_on_shared": fast_k,
           "plain_seconds_per_example_on_shared": plain_k, "speedup_on_shared": plain_k / fast_k,
           "max_bound_difference": max(diffs) if diffs else None, "bounds_compared": len(diffs),
           "bounds_differing_over_1e-5": sum(d > 1e-5 for d in diffs),
           "max_relative_bound_difference": max((abs(w - f) / max(1.0, abs(w)) for w, f in pairs), default=None),
           "certified_decisions_differing": sum((w > 0) != (f > 0) for w, f in pairs),
           "plain_examples": [pe["index"] for pe in plain["examples"]],
           "fast_mean_evals": sum(e["evals"] for e in fast["examples"]) / a.n,
           "fast_max_rss_mb": fast["max_rss_mb"], "fast_worker_max_rss_mb": fast["max_rss_mb_workers"],
           # the parent plus every worker at its own peak: an upper bound on the run's peak memory
           "fast_peak_memory_mb_bound": fast["max_rss_mb"] + (a.jobs if a.jobs > 1 else 0) * fast["max_rss_mb_workers"],
           "plain_max_rss_mb": plain["max_rss_mb"],
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
