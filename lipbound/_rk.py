"""A plain explicit Runge–Kutta integrator driven by a :class:`ButcherTableau`.

It replays a given step sequence (a fixed grid, or the accepted steps recorded from a
torchdiffeq adaptive solve, with torchdiffeq's dense-output interpolation when the last
step overshoots the end time), so two initial states can be propagated with exactly the
same steps, as Theorems 3.1 and 3.2 assume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy
import torch

from .growth import _interp_weights
from .tableau import ButcherTableau

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _stages(f: Field, tab: ButcherTableau, t0: float, y: torch.Tensor, dt: float) -> list[torch.Tensor]:
    a, c = tab.a_float, tab.c_float
    ks: list[torch.Tensor] = []
    for i in range(tab.stages):
        yi = y
        for j in range(i):
            if a[i][j] != 0.0:
                yi = yi + (dt * a[i][j]) * ks[j]
        ks.append(f(torch.tensor(t0 + c[i] * dt, dtype=y.dtype), yi))
    return ks


def rk_trajectory(f: Field, y0: torch.Tensor, tab: ButcherTableau,
                  steps: Sequence[tuple[float, float]], end_time: float | None = None) -> list[torch.Tensor]:
    """States after each step: [y_0, y_1, ..., y_N].

    Args:
        f: vector field f(t, y).
        y0: initial state.
        tab: the method.
        steps: (t0, dt) pairs.
        end_time: if the last step ends after it, the last state is torchdiffeq's
            interpolant at ``end_time`` instead of the end of the step.

    Returns:
        list of N + 1 tensors.
    """
    out = [y0]
    y = y0
    for idx, (t0, dt) in enumerate(steps):
        ks = _stages(f, tab, t0, y, dt)
        last = idx == len(steps) - 1
        if last and end_time is not None and t0 + dt > end_time * (1 + 1e-12) + 1e-12:
            w = [float(v) for v in _interp_weights(tab, sympy.Rational((end_time - t0) / dt))]
        else:
            w = list(tab.b_float)
        for wi, k in zip(w, ks):
            if wi != 0.0:
                y = y + (dt * wi) * k
        out.append(y)
    return out
