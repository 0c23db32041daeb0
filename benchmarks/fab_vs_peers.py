"""Minimum-norm FAB (untargeted, no ε) against torchattacks 3.5.1's FAB: success, norms, CPU time.

Both sides run the paper's budget (100 iterations, 1 run from the clean point, α_max 0.1, η 1.05,
β 0.9) on the same held-out images, one thread each, one after the other. torchattacks' FAB has no
unbounded mode: its ε (which only sizes random restarts and the final ‖δ‖ <= ε test) is set to a
radius no perturbation reaches. Every returned point is scored by one forward pass of the model;
the norms compared are those of the images both sides broke (median of each side, and the median
per-image ratio ours / theirs). The fixed-ε FAB-T and AutoAttack cells are in
``benchmarks/autoattack_vs_peers.py`` (``--attacks fab-t autoattack``).

Every finished (model, norm) cell is appended to ``results/<tag>.jsonl`` and skipped on resume.
Run: ``python -m benchmarks.fab_vs_peers [--n 30] [--models lenet5 ode] [--norms inf 2]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from attacks import FAB
from models.data import load_dataset
from models.zoo import load

from ._cells import markdown_table, resumable_cells, write_results

RESULTS = Path(__file__).resolve().parent / "results"
#: torchattacks' ε for an unbounded run: farther than any two points of [0, 1]^784 in either norm.
UNBOUNDED = 1e3


def _norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "inf" else flat.norm(dim=1)


def bench_cell(name: str, norm: str, n: int, steps: int) -> dict[str, Any]:
    """One (model, norm) cell: both sides on the same n held-out images."""
    import torchattacks as ta

    model = load(name).eval()
    x, y = load_dataset("mnist-t10k", "test", n=n)
    sides = {
        "ours": lambda: FAB(model, norm=norm, steps=steps, restarts=1, seed=0)(x, y).x_adv,
        "torchattacks": lambda: ta.FAB(model, norm="Linf" if norm == "inf" else "L2", eps=UNBOUNDED, steps=steps,
                                       n_restarts=1, seed=0)(x, y),
    }
    out: dict[str, Any] = {"model": name, "norm": norm, "n": n, "steps": steps}
    broken = {}
    dist = {}
    for side, run in sides.items():
        t, cpu = time.perf_counter(), time.process_time()
        adv = run().detach()
        seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
        with torch.no_grad():
            broken[side] = model(adv).argmax(1) != y
        dist[side] = _norms(adv - x, norm)
        out[side] = {"seconds": seconds, "cpu_seconds": cpu_seconds,
                     "success_rate": float(broken[side].float().mean()),
                     "in_box": bool(adv.min() >= 0 and adv.max() <= 1)}
    both = broken["ours"] & broken["torchattacks"]
    for side in sides:
        out[side]["median_norm_both_broken"] = float(dist[side][both].median()) if both.any() else float("nan")
    ratio = dist["ours"][both] / dist["torchattacks"][both].clamp_min(1e-12)
    out["both_broken"] = int(both.sum())
    out["median_ratio"] = float(ratio.median()) if both.any() else float("nan")
    out["ours_shorter"] = int((ratio < 1 - 1e-3).sum())
    out["theirs_shorter"] = int((ratio > 1 + 1e-3).sum())
    out["time_ratio"] = out["ours"]["cpu_seconds"] / out["torchattacks"]["cpu_seconds"]
    return out


def _markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ("model", "norm", "n", "success ours", "success torchattacks", "median ‖δ‖ ours", "median ‖δ‖ torchattacks",
         "median ratio", "ours shorter / theirs shorter (>0.1 %)", "CPU s ours", "CPU s torchattacks", "CPU ratio"),
        ((r["model"], f"L{r['norm']}", r["n"], f"{100 * r['ours']['success_rate']:.1f}%",
          f"{100 * r['torchattacks']['success_rate']:.1f}%", f"{r['ours']['median_norm_both_broken']:.4f}",
          f"{r['torchattacks']['median_norm_both_broken']:.4f}", f"{r['median_ratio']:.4f}",
          f"{r['ours_shorter']} / {r['theirs_shorter']}", f"{r['ours']['cpu_seconds']:.1f}",
          f"{r['torchattacks']['cpu_seconds']:.1f}", f"{r['time_ratio']:.2f}")
         for r in rows))


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the benchmark; write ``results/<tag>.{jsonl,json,md}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "ode"])
    parser.add_argument("--norms", nargs="+", choices=["inf", "2"], default=["inf", "2"])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--tag", default="fab_vs_peers_min_norm")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys = [(name, norm, args.n, args.steps) for name in args.models for norm in args.norms]
    rows = resumable_cells(RESULTS / f"{args.tag}.jsonl", ("model", "norm", "n", "steps"), keys, bench_cell)
    write_results(RESULTS, args.tag, args, rows, _markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
