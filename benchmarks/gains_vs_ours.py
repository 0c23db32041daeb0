"""GAINS's verifier against ours on GAINS's own models, deployed solver, same images and ε.

Both certify GAINS's released MNIST ODE-nets (ε_t = 0.11 and 0.22) *as deployed*, with their
controlled adaptive dopri5: GAINS with its trajectory graph (Box + DeepPoly), its per-(image, ε)
rows read from the cache of :mod:`benchmarks._gains_peer` (GAINS runs as a subprocess there,
one thread); ours with :class:`verify.TrajectoryGraph` through :func:`verify.certify` (one
thread, one image per call), on exactly the images GAINS has covered. Like GAINS, we attempt
ε = 0.15 only on images certified at 0.1, and 0.2 only on those certified at 0.15, so both
sides make the same kind of attempts and their certified accuracies are nested in ε.

Reported per model and ε: certified accuracy of both, the images GAINS certifies and we do not
(target 0) with both margin bounds, seconds per (image, ε) attempt of both and their ratio
(target ≤ 0.1; wall seconds), our CPU seconds per attempt (``time.process_time``: on a machine
shared with other jobs, wall seconds grow with the load), our trajectory-graph nodes, and our peak
memory (the process's maximum resident set, ``resource.getrusage``). GAINS's seconds were
measured when the cache was filled; the machine's load during our run is recorded as the load
average.

Run: ``python -m benchmarks.gains_vs_ours`` (resumable: ``benchmarks/results/gains_vs_ours.jsonl``
holds one row per (model, image, ε) attempt; results in ``benchmarks/results/gains_vs_ours.json|md``);
``--side-by-side N --target T`` first runs GAINS and ours one after the other on the first N
images (``benchmarks/results/gains_vs_ours_side_by_side_<T>.json``).

References:
    Zeqiri, Müller, Fischer, Vechev, "Efficient Certified Training and Robustness Verification
    of Neural ODEs", ICLR 2023.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._gains_peer import GAINS_EPS, TARGETS, checkpoint, load_rows

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = RESULTS / "gains_vs_ours.jsonl"
#: the first official test-set position of mnist-t10k's held-out split.
HELD_OUT_START = 8000


def _done() -> dict[tuple[float, int, float], dict[str, Any]]:
    if not ROWS.exists():
        return {}
    rows = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
    return {(r["target"], r["index"], r["eps"]): r for r in rows}


def run_ours(target: float, images: list[int]) -> None:
    """Certify the images with our verifier, appending one row per attempt (skipping those done)."""
    from models.data import load_dataset
    from models.gains import load_gains
    from verify import certify

    done = _done()
    model, _ = load_gains(checkpoint(target))
    x, y = load_dataset("mnist-t10k", split="test")
    for index in images:
        xi, yi = x[index - HELD_OUT_START: index - HELD_OUT_START + 1], y[index - HELD_OUT_START: index - HELD_OUT_START + 1]
        with torch.no_grad():
            correct = bool(model(xi).argmax(1) == yi)
        for eps in GAINS_EPS:
            key = (target, index, eps)
            if key in done:
                if not done[key]["cert"]:
                    break
                continue
            row: dict[str, Any] = {"target": target, "index": index, "eps": eps, "label": int(yi), "clean_correct": correct,
                                   "attempted": correct, "cert": False, "min_lb": None, "time_s": None, "nodes": None}
            if correct:
                t0, c0 = time.perf_counter(), time.process_time()
                res = certify(model, xi, yi, eps)
                row.update(time_s=round(time.perf_counter() - t0, 3), cpu_s=round(time.process_time() - c0, 3),
                           cert=bool(res.certified[0]),
                           min_lb=round(float(res.lower.min()), 5), covers=res.covers)
                row["nodes"] = _last_nodes()
            row["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            row["load_avg"] = round(os.getloadavg()[0], 2)
            with ROWS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if not row["cert"]:
                break


def _last_nodes() -> int | None:
    """Nodes of the trajectory graph of the last bound (certify builds one engine per call)."""
    return _LAST.get("nodes")


_LAST: dict[str, int] = {}


def _track_nodes() -> None:
    """Record the node count of every trajectory graph built in this process."""
    from verify import _trajectory

    original = _trajectory.TrajectoryGraph.margins

    def margins(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = original(self, *args, **kwargs)
        _LAST["nodes"] = self.last_stats[-1].nodes
        return out

    _trajectory.TrajectoryGraph.margins = margins  # type: ignore[method-assign]


def side_by_side(target: float, start: int, n: int) -> dict[str, Any]:
    """GAINS and ours one after the other on images start..start+n-1, in one run (same machine load):
    wall seconds per attempt of both, and CPU seconds (GAINS: its subprocess's user + system time
    over its attempts, start-up included; ours: this process's time per attempt)."""
    from benchmarks._gains_peer import run_chunk
    from models.data import load_dataset
    from models.gains import load_gains
    from verify import certify

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    cpu0, load0 = children_cpu(), os.getloadavg()[0]
    rows, wall = run_chunk(target, start, n, threads=1)
    gains_cpu = children_cpu() - cpu0
    attempts = [r for r in rows if r["attempted"]]
    model, _ = load_gains(checkpoint(target))
    x, y = load_dataset("mnist-t10k", split="test")
    ours = []
    for r in attempts:
        i = r["index"] - HELD_OUT_START
        t0, c0 = time.perf_counter(), time.process_time()
        res = certify(model, x[i:i + 1], y[i:i + 1], r["eps"])
        ours.append({"index": r["index"], "eps": r["eps"], "wall_s": time.perf_counter() - t0,
                     "cpu_s": time.process_time() - c0, "cert": bool(res.certified[0]), "gains_cert": r["cert"],
                     "min_lb": float(res.lower.min()), "gains_min_lb": r["min_lb"], "gains_wall_s": r["time_s"]})
    g_wall = statistics.mean(r["time_s"] for r in attempts)
    o_wall = statistics.mean(o["wall_s"] for o in ours)
    o_cpu = statistics.mean(o["cpu_s"] for o in ours)
    return {"target": target, "images": [start, start + n - 1], "attempts": len(attempts),
            "gains_wall_s_per_attempt": round(g_wall, 2), "gains_cpu_s_per_attempt": round(gains_cpu / len(attempts), 2),
            "gains_process_wall_s": round(wall, 1), "ours_wall_s_per_attempt": round(o_wall, 2),
            "ours_cpu_s_per_attempt": round(o_cpu, 2), "wall_ratio": round(o_wall / g_wall, 4),
            "cpu_ratio": round(o_cpu / (gains_cpu / len(attempts)), 4), "load_avg_start": round(load0, 2),
            "load_avg_end": round(os.getloadavg()[0], 2), "rows": ours}


def _mean(values: list[float]) -> float | None:
    return round(statistics.mean(values), 3) if values else None


def image_ranges(images: list[int]) -> list[list[int]]:
    """Sorted image indices as [first, last] runs of consecutive indices."""
    runs: list[list[int]] = []
    for i in images:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def summarize() -> dict[str, Any]:
    """Per model and ε: both certified accuracies, disagreements, seconds, ratio, nodes, memory."""
    ours = _done()
    out: dict[str, Any] = {"models": {}}
    for target in TARGETS:
        gains = [r for r in load_rows(target) if any((target, r["index"], e) in ours for e in GAINS_EPS)]
        images = sorted({r["index"] for r in gains})
        if not images:
            continue
        per_eps = {}
        for eps in GAINS_EPS:
            g = {r["index"]: r for r in gains if r["eps"] == eps}
            o = {i: ours.get((target, i, eps)) for i in images}
            g_cert = [i for i in images if g[i]["cert"]]
            o_cert = [i for i in images if o[i] and o[i]["cert"]]
            g_t = [g[i]["time_s"] for i in images if g[i]["attempted"] and g[i]["time_s"] is not None]
            o_t = [o[i]["time_s"] for i in images if o[i] and o[i]["attempted"] and o[i]["time_s"] is not None]
            o_c = [o[i]["cpu_s"] for i in images if o[i] and o[i].get("cpu_s") is not None]
            nodes = [o[i]["nodes"] for i in images if o[i] and o[i].get("nodes") is not None]
            disagree = [{"index": i, "gains_min_lb": g[i]["min_lb"], "ours_min_lb": o[i]["min_lb"] if o[i] else None}
                        for i in g_cert if i not in o_cert]
            per_eps[str(eps)] = {
                "n": len(images), "gains_cert_acc": round(len(g_cert) / len(images), 4),
                "ours_cert_acc": round(len(o_cert) / len(images), 4), "gains_not_ours": disagree,
                "ours_not_gains": [i for i in o_cert if i not in g_cert],
                "gains_attempts": len(g_t), "ours_attempts": len(o_t),
                "gains_s_per_attempt": _mean(g_t), "ours_s_per_attempt": _mean(o_t), "ours_cpu_s_per_attempt": _mean(o_c),
                "time_ratio": round(statistics.mean(o_t) / statistics.mean(g_t), 4) if g_t and o_t else None,
                "ours_nodes_median": statistics.median(nodes) if nodes else None,
                "ours_nodes_max": max(nodes) if nodes else None,
            }
        rss = [r.get("max_rss_mb", 0.0) for (t, _, _), r in ours.items() if t == target]
        out["models"][f"{target:g}"] = {"images": [images[0], images[-1]], "ranges": image_ranges(images),
                                        "per_eps": per_eps,
                                        "ours_peak_rss_mb": max(rss) if rss else None,
                                        "ours_load_avg_mean": _mean([r.get("load_avg", 0.0) for (t, _, _), r in
                                                                     ours.items() if t == target])}
    return out


def markdown(summary: dict[str, Any]) -> str:
    """The table of :func:`summarize`."""
    lines = ["| model ε_t | ε | n | GAINS cert. acc. | ours cert. acc. | GAINS-only certified | GAINS s / attempt | "
             "ours s / attempt | ratio | ours CPU s / attempt | ours nodes (median, max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for target, m in summary["models"].items():
        for eps, r in m["per_eps"].items():
            lines.append(f"| {target} | {eps} | {r['n']} | {100 * r['gains_cert_acc']:.1f} % | "
                         f"{100 * r['ours_cert_acc']:.1f} % | {len(r['gains_not_ours'])} | {r['gains_s_per_attempt']} | "
                         f"{r['ours_s_per_attempt']} | {r['time_ratio']} | {r.get('ours_cpu_s_per_attempt')} | "
                         f"{r['ours_nodes_median']}, {r['ours_nodes_max']} |")
    for target, m in summary["models"].items():
        spans = ", ".join(f"{lo}..{hi}" for lo, hi in m.get("ranges", [m["images"]]))
        lines.append(f"\nε_t = {target}: images {spans}; our peak memory (max RSS of the "
                     f"process) {m['ours_peak_rss_mb']} MB; mean load average during our run {m['ours_load_avg_mean']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=float, choices=TARGETS, nargs="+", default=list(TARGETS))
    p.add_argument("--max-images", type=int, default=100)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--side-by-side", type=int, default=0, metavar="N",
                   help="also run GAINS and ours one after the other on the first N images (CPU and wall seconds)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.side_by_side:
        sbs = side_by_side(args.target[0], HELD_OUT_START, args.side_by_side)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"gains_vs_ours_side_by_side_{args.target[0]:g}.json").write_text(json.dumps(sbs, indent=1))
        print(json.dumps({k: v for k, v in sbs.items() if k != "rows"}))
    if not args.report_only:
        _track_nodes()
        for target in args.target:
            images = sorted({r["index"] for r in load_rows(target)})[: args.max_images]
            run_ours(target, images)
    summary = summarize()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gains_vs_ours.json").write_text(json.dumps(summary, indent=1))
    (RESULTS / "gains_vs_ours.md").write_text(markdown(summary) + "\n")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
