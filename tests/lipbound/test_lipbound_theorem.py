"""Theorems 3.1 / 3.2 sanity: ‖z_n − y_n‖ ≤ G_n ‖δ‖ at every step n, for random fields
with a controlled Lipschitz constant and for the zoo ``ode`` model's field."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
import sympy
import torch

from lipbound import TABLEAUS, ButcherTableau, field_bound, interpolated_step_factor, step_polynomial
from lipbound._rk import rk_trajectory
from lipbound.growth import X

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bounds(tab: ButcherTableau, steps: Sequence[tuple[float, float]], k: float, end: float | None) -> list[float]:
    poly = step_polynomial(tab)
    out, total = [1.0], 1.0
    for i, (t0, dt) in enumerate(steps):
        if i == len(steps) - 1 and end is not None and t0 + dt > end + 1e-12:
            expr = interpolated_step_factor(tab, sympy.Rational((end - t0) / dt), X, sympy.Integer(1))
            total *= float(expr.subs(X, dt * k))
        else:
            total *= float(poly.as_expr().subs(X, dt * k))
        out.append(total)
    return out


def _norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    return v.flatten(1).norm(dim=1) if norm == "2" else v.flatten(1).abs().amax(dim=1)


def _adversarial_delta(f: Field, y0: torch.Tensor, tab: ButcherTableau, steps, end, radius: float,
                       norm: str, iters: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    d = torch.randn(y0.shape, generator=g, dtype=y0.dtype)
    shape = (-1,) + (1,) * (y0.dim() - 1)
    d = radius * d / _norm(d, norm).view(shape)
    with torch.no_grad():
        y_end = rk_trajectory(f, y0, tab, steps, end)[-1]
    for _ in range(iters):
        d.requires_grad_(True)
        gap = _norm(rk_trajectory(f, y0 + d, tab, steps, end)[-1] - y_end, norm).sum()
        (grad,) = torch.autograd.grad(gap, d)
        d = (d + radius * grad / _norm(grad, "2").clamp_min(1e-30).view(shape)).detach()
        d = radius * d / _norm(d, norm).view(shape)
    return d


def _check(f: Field, y0: torch.Tensor, tab: ButcherTableau, steps, end, k: float, norm: str) -> float:
    """Asserts the bound at every step for random and adversarial δ; returns the
    tightest observed ratio (observed / bound), for information."""
    bounds = _bounds(tab, steps, k, end)
    g = torch.Generator().manual_seed(3)
    shape = (-1,) + (1,) * (y0.dim() - 1)
    rand = torch.randn(y0.shape, generator=g, dtype=y0.dtype)
    rand = 1e-2 * rand / _norm(rand, norm).view(shape)
    tightest = 0.0
    for delta in (rand, _adversarial_delta(f, y0, tab, steps, end, 1e-2, norm)):
        with torch.no_grad():
            ys = rk_trajectory(f, y0, tab, steps, end)
            zs = rk_trajectory(f, y0 + delta, tab, steps, end)
        d0 = _norm(delta, norm)
        for n, (yn, zn) in enumerate(zip(ys, zs)):
            ratio = _norm(zn - yn, norm) / d0
            assert float(ratio.max()) <= bounds[n] * (1 + 1e-9), (n, float(ratio.max()), bounds[n])
            if n > 0:
                tightest = max(tightest, float(ratio.max()) / bounds[n])
    return tightest


def _random_field(dim: int, k: float, norm: str, seed: int) -> tuple[Field, float]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    scale = torch.linalg.matrix_norm(w, 2) if norm == "2" else w.abs().sum(1).max()
    w = k * w / scale
    u = torch.randn(dim, generator=g, dtype=torch.float64)

    def f(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(h @ w.T + torch.sin(3 * t) * u)  # |tanh'| <= 1: K-Lipschitz in h

    return f, k


CASES = [("euler", 10), ("rk4", 4), ("rk4-38", 4), ("dopri5", 3)]


@pytest.mark.parametrize("method,n", CASES)
@pytest.mark.parametrize("k", [0.5, 4.0])
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_random_field_fixed_steps(method: str, n: int, k: float, norm: str) -> None:
    f, kk = _random_field(12, k, norm, seed=int(k * 10))
    y0 = torch.randn(6, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = [(i / n, 1.0 / n) for i in range(n)]
    tight = _check(f, y0, TABLEAUS[method], steps, None, kk, norm)
    assert 0 < tight <= 1 + 1e-9


@pytest.mark.parametrize("k", [1.0, 5.0])
def test_random_field_recorded_dopri5_steps(k: float) -> None:
    from torchdiffeq import odeint

    f, kk = _random_field(12, k, "2", seed=7)
    y0 = torch.randn(6, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    steps: list[tuple[float, float]] = []

    class Rec(torch.nn.Module):
        def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return f(t, h)

        def callback_accept_step(self, t0: torch.Tensor, y: torch.Tensor, dt: torch.Tensor) -> None:
            steps.append((float(t0), float(dt)))

    odeint(Rec(), y0, torch.tensor([0.0, 1.0], dtype=torch.float64), method="dopri5", rtol=1e-5, atol=1e-5)
    assert len(steps) >= 2
    _check(f, y0, TABLEAUS["dopri5"], steps, 1.0, kk, "2")


def test_zoo_ode_field() -> None:
    from models.zoo import ZOO_DIR, load

    if not (ZOO_DIR / "ode.pt").exists():
        pytest.skip("zoo checkpoint models/checkpoints/ode.pt is not trained yet")
    model = load("ode").double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 28, 28, generator=g, dtype=torch.float64)
    with torch.no_grad():
        h0 = model.stem(x)
    _, k, reason = field_bound(model.block.field, tuple(h0.shape[1:]), "2")
    assert k is not None, reason
    field = model.block.field
    for method, n in (("euler", 8), ("rk4", 4), ("rk4-38", 4), ("dopri5", 2)):
        steps = [(i / n, 1.0 / n) for i in range(n)]
        _check(field, h0, TABLEAUS[method], steps, None, k, "2")
    # the model's own solver (torchdiffeq rk4 = 3/8 rule, 4 steps) equals the replay
    with torch.no_grad():
        ref = model.block(h0)
        rep = rk_trajectory(field, h0, TABLEAUS["rk4-38"], [(i / 4, 0.25) for i in range(4)])[-1]
    assert torch.allclose(ref, rep, atol=1e-10)
    assert math.isfinite(k)
