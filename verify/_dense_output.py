"""torchdiffeq's dense output of an adaptive Runge–Kutta step, as stage weights.

An adaptive torchdiffeq solve does not end on T: its last accepted step [t0, t0 + h]
overshoots, and the state at T is read from the quartic interpolant torchdiffeq fits to
that step (``_interp_fit``: y0, y1, the midpoint ``y0 + h Σ mid_i k_i``, f0 = k_1 and
f1 = k_s, the first-same-as-last stage at (t0 + h, y1)), evaluated at θ = (T − t0)/h.
Every term is linear in y0 and the stage derivatives k_i, and the y0 coefficients sum to
one, so the interpolant is one more Runge–Kutta output row:

    y(t0 + θh) = y0 + h Σ_i w_i(θ) k_i,
    w_i(θ) = b_i·(−5θ² + 14θ³ − 8θ⁴) + mid_i·(16θ² − 32θ³ + 16θ⁴)
             + [i = 1]·(θ − 4θ² + 5θ³ − 2θ⁴) + [i = s]·(θ² − 3θ³ + 2θ⁴),

with w(1) = b. The fixed-step surrogate of an adaptive solve replays its accepted steps
with these weights on the last one, which reproduces the solver's arithmetic.

References:
    Hairer, Nørsett, Wanner, "Solving Ordinary Differential Equations I", §II.6 (dense
    output). Chen, torchdiffeq (``_impl/interp.py``, ``_impl/rk_common.py``).
"""

from __future__ import annotations

from lipbound.tableau import ButcherTableau


class DenseOutputError(ValueError):
    """A method whose torchdiffeq interpolant is not reproduced here."""


def _midpoint_weights(method: str) -> tuple[float, ...]:
    """torchdiffeq's ``mid`` coefficients of a method (the midpoint ``y0 + h Σ mid_i k_i``)."""
    if method == "dopri5":
        from torchdiffeq._impl.dopri5 import DPS_C_MID as mid
    elif method == "bosh3":
        from torchdiffeq._impl.bosh3 import _BS_C_MID as mid
    else:
        raise DenseOutputError(f"no dense output of {method!r} here (dopri5 and bosh3 have one)")
    return tuple(float(v) for v in mid)


def dense_output_weights(method: str, tab: ButcherTableau, theta: float) -> tuple[float, ...]:
    """Stage weights w with ``y(t0 + θh) = y0 + h Σ w_i k_i`` for torchdiffeq's interpolant.

    Args:
        method: the SolverConfig method (``dopri5`` or ``bosh3``).
        tab: its tableau (last stage first-same-as-last: c_s = 1, a_s = b).
        theta: position in the step, 0 < θ ≤ 1.

    Returns:
        one weight per stage of ``tab`` (``tab.b_float`` when θ = 1).

    Raises:
        DenseOutputError: another method, a tableau without its FSAL stage, or θ outside (0, 1].
    """
    if not 0.0 < theta <= 1.0:
        raise DenseOutputError(f"interpolation point θ must lie in (0, 1], got {theta!r}")
    b = tuple(tab.b_float)
    if theta == 1.0:
        return b
    mid = _midpoint_weights(method)
    s = len(b)
    if len(mid) != s or tab.c_float[-1] != 1.0 or tuple(tab.a_float[-1])[: s - 1] != b[:-1] or b[-1] != 0.0:
        raise DenseOutputError(f"tableau {tab.name!r} does not end with torchdiffeq's FSAL stage of {method!r}")
    x = theta
    wb = -5 * x**2 + 14 * x**3 - 8 * x**4
    wm = 16 * x**2 - 32 * x**3 + 16 * x**4
    w = [b[i] * wb + mid[i] * wm for i in range(s)]
    w[0] += x - 4 * x**2 + 5 * x**3 - 2 * x**4
    w[-1] += x**2 - 3 * x**3 + 2 * x**4
    return tuple(w)


__all__ = ["DenseOutputError", "dense_output_weights"]
