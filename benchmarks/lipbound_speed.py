"""Lipschitz bounds of the zoo: speed of the ``ode`` model's bounds and upper/lower ratios.

Run: ``.venv/bin/python -m benchmarks.lipbound_speed`` (needs ODE_ROBUSTNESS_DATA).
Writes benchmarks/results/lipbound_speed.json and .md.

Measures:
* wall time of all per-layer bounds + the network bound of zoo ``ode`` (best of 3,
  one thread; target ≤ 2 s);
* for every zoo model and norm: the network upper bound, the empirical lower bound
  (Jacobian / pair search from held-out images) and their ratio;
* the looseness of the ODE block's growth bound on the zoo ``ode`` field: the largest
  observed ‖z_N − y_N‖ / ‖δ‖ (random and gradient-ascent δ) over G_N.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from lipbound import empirical_lipschitz, network_bound
from lipbound._rk import rk_trajectory
from lipbound.tableau import tableau_for_solver
from models.zoo import PRESETS

RESULTS = Path(__file__).resolve().parent / "results"
ZOO = tuple(PRESETS)  # every zoo model


def _time_ode() -> dict[str, Any]:
    from models.zoo import load

    model = load("ode")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        bound = network_bound(model, "2")
        times.append(time.perf_counter() - start)
    return {"model": "ode", "norm": "2", "best_s": min(times), "all_s": times, "target_s": 2.0,
            "rows": len(bound.rows), "total": bound.total}


def _ratios(x: torch.Tensor) -> list[dict[str, Any]]:
    from models.zoo import ZOO_DIR, load

    rows = []
    for name in ZOO:
        if not (ZOO_DIR / f"{name}.pt").exists():
            rows.append({"model": name, "status": "pending: checkpoint not trained"})
            continue
        model = load(name)
        for norm in ("2", "inf"):
            bound = network_bound(model, norm, x=x[:1])
            emp = empirical_lipschitz(model, x, norm, steps=10, seed=0)
            rows.append({
                "model": name, "norm": norm, "upper": bound.total, "reason": bound.reason,
                "lower": emp.lower, "lower_jacobian": emp.jacobian, "lower_pairs": emp.pair,
                "ratio": None if bound.total is None or emp.lower == 0 else bound.total / emp.lower,
                "growth": None if bound.growth is None else bound.growth.value,
                "field_K": bound.field_lipschitz, "n_images": emp.n_points,
            })
    return rows


def _ode_looseness(x: torch.Tensor) -> dict[str, Any]:
    from models.zoo import load

    model = load("ode").double()
    with torch.no_grad():
        h0 = model.stem(x.double())
    bound = network_bound(model, "2")
    assert bound.growth is not None and bound.field_lipschitz is not None
    solver = model.solver
    steps = list(solver.grid())
    tab = tableau_for_solver(solver.method)
    field = model.block.field
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(h0.shape, generator=g, dtype=torch.float64)
    delta = 1e-2 * delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)

    def gap(d: torch.Tensor) -> torch.Tensor:
        ys = rk_trajectory(field, h0, tab, steps)[-1]
        zs = rk_trajectory(field, h0 + d, tab, steps)[-1]
        return (zs - ys).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)

    with torch.no_grad():
        random_ratio = float(gap(delta).max())
    d = delta.clone()
    for _ in range(20):
        d.requires_grad_(True)
        (grad,) = torch.autograd.grad(gap(d).sum(), d)
        d = (d + 1e-2 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).detach()
        d = 1e-2 * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    with torch.no_grad():
        adv_ratio = float(gap(d).max())
    return {"model": "ode", "method": tab.name, "n_steps": len(steps), "K": bound.field_lipschitz,
            "G": bound.growth.value, "e^TK": bound.growth.continuous,
            "observed_random": random_ratio, "observed_adversarial": adv_ratio,
            "looseness_G_over_observed": bound.growth.value / max(random_ratio, adv_ratio),
            "n_images": int(x.shape[0])}


def main() -> None:
    """Run the benchmark and write the results."""
    from models.data import load_dataset

    torch.set_num_threads(1)
    x, _ = load_dataset("mnist-t10k", split="test")
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:32]]
    speed = _time_ode()
    ratios = _ratios(x)
    loose = _ode_looseness(x[:8])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"speed": speed, "ratios": ratios, "ode_block_looseness": loose}
    (RESULTS / "lipbound_speed.json").write_text(json.dumps(out, indent=2) + "\n")

    def f(v: Any) -> str:
        return "N/A" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [
        "# lipbound_speed",
        "",
        f"All per-layer bounds + network bound of zoo `ode` (L2): best {speed['best_s']:.3f} s of 3 "
        f"(target <= 2 s).",
        "",
        "| model | norm | upper (network bound) | lower (empirical) | upper / lower | ODE growth G | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ratios:
        if "status" in r:
            lines.append(f"| {r['model']} | - | - | - | - | - | {r['status']} |")
            continue
        lines.append(f"| {r['model']} | {r['norm']} | {f(r['upper'])} | {f(r['lower'])} | {f(r['ratio'])} | "
                     f"{f(r['growth'])} | {r['reason'][:80]} |")
    lines += [
        "",
        f"ODE block of zoo `ode` ({loose['method']}, {loose['n_steps']} steps, K = {loose['K']:.4g}): "
        f"G = {loose['G']:.4g} (e^TK = {loose['e^TK']:.4g}); observed ||z_N - y_N|| / ||delta||: "
        f"random {loose['observed_random']:.4g}, adversarial {loose['observed_adversarial']:.4g}; "
        f"G / observed = {loose['looseness_G_over_observed']:.4g}.",
        "",
    ]
    (RESULTS / "lipbound_speed.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
