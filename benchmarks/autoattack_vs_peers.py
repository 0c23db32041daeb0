"""Our APGD, APGD-T, FAB-T, Square and AutoAttack against torchattacks 3.5.1's, side by side in one run.

Same zoo models, same held-out images, the paper's budgets on both sides (APGD / APGD-T / FAB-T: 100
iterations, 1 restart, 9 target classes; Square: 5,000 queries, p_init 0.8; L∞ ε = 0.3 for the
PGD-trained models, 0.1 for the others). Every side's points are scored by one forward pass of
the same model (robust accuracy over all n images: a clean mistake is not robust) and their
‖δ‖∞ is checked against ε. Both sides run with ``torch.set_num_threads(1)``, one after the
other (ours first, then theirs, per attack). The machine is shared, so the time ratio is taken
on each side's CPU time (``time.process_time``, one thread: the work it did); wall times are
recorded too.

torchattacks' ``AutoAttack`` class builds its APGD members with torchattacks' own default of
10 iterations; the AutoAttack side here is torchattacks' ``MultiAttack`` of APGD-CE, APGD-T,
FAB (multi-targeted, 9 targets) and Square at the paper's budgets (FAB: 100 iterations, not
torchattacks' default of 10), the ensemble ``AutoAttack`` documents. Ours is
:class:`attacks.AutoAttack` ``standard`` (APGD-CE, APGD-T, FAB-T, Square). The ``fab-t`` cell sets
our :class:`attacks.FABT` against torchattacks' ``FAB(multi_targeted=True)``.

Targets (issue 17): robust accuracy <= theirs + 0.5 points, wall time <= 1.0x theirs.

Every finished (model, attack) cell is appended to ``results/<tag>.jsonl`` and skipped when the
run resumes. Run: ``python -m benchmarks.autoattack_vs_peers [--n 500] [--models ode lenet5]
[--attacks fab-t autoattack] [--tag fab_vs_peers]``.

With ``--chunk C`` a cell is one range of C images (both sides, per-image verdicts kept), run
range by range across all models and attacks, so an interrupted run has the same images for every
(model, attack); the result rows aggregate, per (model, attack), the finished ranges from image 0 on
(their n), with the paired comparison: images robust for ours only / for theirs only, and the
standard error of the difference. ``--collect`` only aggregates what ``<tag>.jsonl`` holds.
Run: ``python -m benchmarks.autoattack_vs_peers --n 500 --chunk 50 --tag autoattack_vs_peers_500``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from attacks import APGD, APGDT, FABT, AutoAttack, Square
from models.data import load_dataset
from models.zoo import load
from studies._common import discordant, paired_difference

from ._cells import markdown_table, read_cells, resumable_cells, write_results

RESULTS = Path(__file__).resolve().parent / "results"
ATTACKS = ("apgd", "apgd-t", "fab-t", "square", "autoattack")
#: Points of robust accuracy ours may exceed theirs by, and the time ratio allowed.
TARGET_POINTS, TARGET_RATIO = 0.5, 1.0


def eps_for(model: str) -> float:
    """L∞ budget of a zoo model: 0.3 for the PGD-trained (``-adv``), 0.1 for the others."""
    return 0.3 if model.endswith("-adv") else 0.1


def _sides(model: nn.Module, attack: str, eps: float, steps: int, queries: int, seed: int = 0
           ) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """``{"ours": f, "torchattacks": g}``: functions (x, y) -> adversarial points, both sides seeded with ``seed``."""
    import torchattacks as ta

    if attack == "apgd":
        return {"ours": lambda x, y: APGD(model, eps, steps=steps, seed=seed)(x, y).x_adv,
                "torchattacks": lambda x, y: ta.APGD(model, eps=eps, steps=steps, n_restarts=1, loss="ce",
                                                     seed=seed)(x, y)}
    if attack == "apgd-t":
        return {"ours": lambda x, y: APGDT(model, eps, steps=steps, targets=9, seed=seed)(x, y).x_adv,
                "torchattacks": lambda x, y: ta.APGDT(model, eps=eps, steps=steps, n_restarts=1, n_classes=10,
                                                      seed=seed)(x, y)}
    if attack == "fab-t":
        return {"ours": lambda x, y: FABT(model, eps, steps=steps, targets=9, seed=seed)(x, y).x_adv,
                "torchattacks": lambda x, y: ta.FAB(model, eps=eps, norm="Linf", steps=steps, n_restarts=1,
                                                    multi_targeted=True, n_classes=10, seed=seed)(x, y)}
    if attack == "square":
        return {"ours": lambda x, y: Square(model, eps, queries=queries, seed=seed)(x, y).x_adv,
                "torchattacks": lambda x, y: ta.Square(model, eps=eps, n_queries=queries, n_restarts=1,
                                                       p_init=0.8, seed=seed)(x, y)}

    def theirs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        members = [ta.APGD(model, eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed),
                   ta.APGDT(model, eps=eps, steps=steps, n_restarts=1, n_classes=10, seed=seed),
                   ta.FAB(model, eps=eps, norm="Linf", steps=steps, multi_targeted=True, n_classes=10,
                          n_restarts=1, seed=seed),
                   ta.Square(model, eps=eps, n_queries=queries, n_restarts=1, p_init=0.8, seed=seed)]
        return ta.MultiAttack(members)(x, y)

    return {"ours": lambda x, y: AutoAttack(model, eps, steps=steps, queries=queries, seed=seed)(x, y).x_adv,
            "torchattacks": theirs}


def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, eps: float) -> dict[str, Any]:
    with torch.no_grad():
        robust = model(adv).argmax(1) == y
    linf = (adv - x).flatten(1).abs().amax(dim=1)
    return {"robust_accuracy": float(robust.float().mean()), "max_linf": float(linf.max()),
            "within_eps": bool((linf <= eps + 1e-6).all())}


def _run_sides(model: nn.Module, attack: str, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
               queries: int, seed: int = 0) -> dict[str, tuple[float, float, torch.Tensor]]:
    """``{side: (wall seconds, CPU seconds, adversarial points)}``, ours first, then theirs."""
    out = {}
    for side, fn in _sides(model, attack, eps, steps, queries, seed).items():
        t, cpu = time.perf_counter(), time.process_time()
        adv = fn(x, y).detach()
        out[side] = (time.perf_counter() - t, time.process_time() - cpu, adv)
    return out


def bench_cell(name: str, attack: str, n: int, steps: int, queries: int) -> dict[str, Any]:
    """One (model, attack) cell: both sides on the same n held-out images."""
    model = load(name).eval()
    x, y = load_dataset("mnist-t10k", "test", n=n)
    eps = eps_for(name)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    out: dict[str, Any] = {"model": name, "attack": attack, "n": n, "eps": eps, "norm": "inf", "steps": steps,
                           "queries": queries, "clean_accuracy": clean}
    for side, (seconds, cpu, adv) in _run_sides(model, attack, x, y, eps, steps, queries).items():
        out[side] = {"seconds": seconds, "cpu_seconds": cpu, **_score(model, x, y, adv, eps)}
    ours, theirs = out["ours"], out["torchattacks"]
    out["points_above_theirs"] = 100 * (ours["robust_accuracy"] - theirs["robust_accuracy"])
    # one thread each on a shared machine: CPU time is what the side spent, wall time includes waiting
    out["time_ratio"] = ours["cpu_seconds"] / theirs["cpu_seconds"]
    out["wall_ratio"] = ours["seconds"] / theirs["seconds"]
    out["meets_targets"] = out["points_above_theirs"] <= TARGET_POINTS and out["time_ratio"] <= TARGET_RATIO
    return out


def bench_chunk(name: str, attack: str, start: int, stop: int, steps: int, queries: int, seed: int = 0
                ) -> dict[str, Any]:
    """One range cell: both sides on held-out images ``start`` .. ``stop - 1``, with per-image verdicts
    (``"1"`` robust, ``"0"`` broken or misclassified); both sides' random draws seeded with ``seed``."""
    model = load(name).eval()
    x, y = load_dataset("mnist-t10k", "test", n=stop)
    x, y = x[start:], y[start:]
    eps = eps_for(name)
    with torch.no_grad():
        clean = int((model(x).argmax(1) == y).sum())
    out: dict[str, Any] = {"model": name, "attack": attack, "start": start, "stop": stop, "eps": eps, "norm": "inf",
                           "steps": steps, "queries": queries, "seed": seed, "clean": clean}
    for side, (seconds, cpu, adv) in _run_sides(model, attack, x, y, eps, steps, queries, seed).items():
        with torch.no_grad():
            robust = model(adv).argmax(1) == y
        linf = float((adv - x).flatten(1).abs().amax(dim=1).max())
        out[side] = {"seconds": seconds, "cpu_seconds": cpu, "max_linf": linf, "within_eps": linf <= eps + 1e-6,
                     "robust": "".join("1" if r else "0" for r in robust.tolist())}
    return out


def aggregate(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, attack, steps, queries), in order of first appearance: the range cells that cover
    images 0 .. n - 1 without a gap, summed into one row with the paired comparison of the two sides.

    ``points_above_theirs`` is 100 (r_ours - r_theirs) / n; with b images robust for ours only and c
    for theirs only, its standard error is 100 sqrt(b + c - (b - c)^2 / n) / n (paired proportions).
    """
    groups: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["model"], c["attack"], c["steps"], c["queries"], c.get("seed", 0)), {})[c["start"]] = c
    rows = []
    for by_start in groups.values():
        chain, start = [], 0
        while start in by_start:
            chain.append(by_start[start])
            start = by_start[start]["stop"]
        if not chain:
            continue
        first = chain[0]
        row: dict[str, Any] = {k: first[k] for k in ("model", "attack", "eps", "norm", "steps", "queries")}
        row.update(n=start, seed=first.get("seed", 0), clean_accuracy=sum(c["clean"] for c in chain) / start)
        flags = {}
        for side in ("ours", "torchattacks"):
            flags[side] = "".join(c[side]["robust"] for c in chain)
            row[side] = {"robust": flags[side].count("1"), "robust_accuracy": flags[side].count("1") / start,
                         "cpu_seconds": sum(c[side]["cpu_seconds"] for c in chain),
                         "seconds": sum(c[side]["seconds"] for c in chain),
                         "max_linf": max(c[side]["max_linf"] for c in chain),
                         "within_eps": all(c[side]["within_eps"] for c in chain)}
        ours, theirs = ([f == "1" for f in flags[side]] for side in ("ours", "torchattacks"))
        b, d = discordant(ours, theirs)
        diff, se = paired_difference(ours, theirs)
        row.update(ours_only_robust=b, theirs_only_robust=d,
                   ours_only_robust_images=[i for i, (o, t) in enumerate(zip(ours, theirs)) if o and not t],
                   points_above_theirs=100 * diff, points_se=100 * se,
                   time_ratio=row["ours"]["cpu_seconds"] / row["torchattacks"]["cpu_seconds"],
                   wall_ratio=row["ours"]["seconds"] / row["torchattacks"]["seconds"])
        row["meets_targets"] = row["points_above_theirs"] <= TARGET_POINTS and row["time_ratio"] <= TARGET_RATIO
        rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    """The result table; rows of ranged (``--chunk``) runs carry the paired columns, the others a wall ratio."""
    paired = bool(rows) and "points_se" in rows[0]
    header = ["model", "ε (L∞)", "attack", "n", "robust acc. ours", "robust acc. torchattacks"]
    header += (["points above (± s.e.)", "robust for ours only / theirs only"] if paired else ["points above"])
    header += ["CPU s ours", "CPU s torchattacks", "CPU time ratio"] + ([] if paired else ["wall ratio"])
    lines = []
    for r in rows:
        o, t = r["ours"], r["torchattacks"]
        attack = r["attack"] + (f" (seed {r['seed']})" if r.get("seed", 0) else "")
        cells = [r["model"], f"{r['eps']:g}", attack, r["n"], f"{100 * o['robust_accuracy']:.1f}%",
                 f"{100 * t['robust_accuracy']:.1f}%"]
        cells += ([f"{r['points_above_theirs']:+.1f} ± {r['points_se']:.1f}",
                   f"{r['ours_only_robust']} / {r['theirs_only_robust']}"] if paired
                  else [f"{r['points_above_theirs']:+.1f}"])
        cells += [f"{o['cpu_seconds']:.1f}", f"{t['cpu_seconds']:.1f}", f"{r['time_ratio']:.2f}"]
        cells += ([] if paired else [f"{r['wall_ratio']:.2f}"]) + ["yes" if r["meets_targets"] else "no"]
        lines.append(cells)
    return markdown_table(header + ["targets met"], lines)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ode", "lenet5", "ode-adv", "lenet5-adv"])
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--steps", type=int, default=100, help="APGD / APGD-T / FAB-T iterations (the paper's 100)")
    parser.add_argument("--queries", type=int, default=5000, help="Square's query budget (the paper's 5000)")
    parser.add_argument("--tag", default="autoattack_vs_peers")
    # SUPPRESS: absent from the namespace (and the result metadata) unless given
    parser.add_argument("--chunk", type=int, default=argparse.SUPPRESS,
                        help="cells of this many images, aggregated per (model, attack)")
    parser.add_argument("--collect", action="store_true", default=argparse.SUPPRESS,
                        help="with --chunk: only aggregate the finished cells of <tag>.jsonl")
    parser.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                        help="with --chunk: seed of both sides' random draws (default 0; rows per seed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the benchmark; write ``results/<tag>.{jsonl,json,md}``."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if hasattr(args, "seed") and (not hasattr(args, "chunk") or args.seed < 0):
        print(f"error: --seed needs --chunk and must be >= 0, got --seed {args.seed}"
              + ("" if hasattr(args, "chunk") else " without --chunk"), file=sys.stderr)
        return 2
    if hasattr(args, "chunk"):
        return _main_chunked(args)
    keys = [(name, attack, args.n, args.steps, args.queries) for name in args.models for attack in args.attacks]
    rows = resumable_cells(RESULTS / f"{args.tag}.jsonl", ("model", "attack", "n", "steps", "queries"), keys,
                           bench_cell)
    write_results(RESULTS, args.tag, args, rows, _markdown)
    return 0


def _main_chunked(args: argparse.Namespace) -> int:
    if args.chunk < 1:
        print(f"error: --chunk must be >= 1, got {args.chunk}", file=sys.stderr)
        return 2
    path = RESULTS / f"{args.tag}.jsonl"
    if not getattr(args, "collect", False):
        # range-major: an interrupted run has covered the same images for every model and attack
        seed = getattr(args, "seed", 0)
        keys = [(name, attack, start, min(start + args.chunk, args.n), args.steps, args.queries, seed)
                for start in range(0, args.n, args.chunk) for name in args.models for attack in args.attacks]
        # cells written before --seed existed were seeded with 0
        resumable_cells(path, ("model", "attack", "start", "stop", "steps", "queries", "seed"), keys, bench_chunk,
                        defaults={"seed": 0})
    write_results(RESULTS, args.tag, args, aggregate(read_cells(path)), _markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
