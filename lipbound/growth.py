"""Symbolic error-growth factors of explicit Runge–Kutta methods (Theorems 3.1 and 3.2).

Two numerical solutions of dy/dt = f(t, y) from y_0 and z_0 = y_0 + δ, computed with the
same steps, satisfy ‖z_n − y_n‖ ≤ G_n ‖δ‖. If f is K-Lipschitz in y (in some norm, for
every t), the stages k_i = f(t + c_i h, y + h Σ_j a_ij k_j) are K_i-Lipschitz with

    K_i = K (1 + h Σ_j |a_ij| K_j),

the increment Φ of y_{n+1} = y_n + h Φ(y_n) is L_Φ-Lipschitz with L_Φ = Σ_i |b_i| K_i, so
one step multiplies the perturbation by at most 1 + h L_Φ, and n equal steps by
(1 + h L_Φ)^n. For Euler this is the seed's (1 + hK)^n ≤ e^{(b−t_0)K}; for the classic RK4
it is (Σ_{k≤4} (hK)^k / k!)^n ≤ e^{(b−t_0)K}; methods with negative coefficients (the 3/8
rule, Dormand–Prince) have a per-step factor that exceeds e^{hK}.

1 + h L_Φ is a polynomial in x = hK; :data:`X` is that symbol.

References:
    Seed 003, "Towards natural robustness against adversarial examples", Thms 3.1, 3.2.
    Hairer, Nørsett, Wanner, "Solving Ordinary Differential Equations I", §II.3.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import sympy

from .tableau import ButcherTableau, TableauError, tableau_for_solver

__all__ = [
    "H", "K", "N", "X", "T", "S",
    "GrowthFactor",
    "stage_lipschitz", "increment_lipschitz", "step_factor", "step_polynomial",
    "fixed_grid_factor", "interpolated_step_factor", "step_sequence_factor",
    "continuous_factor", "resnet_factor", "exponential_excess", "exceeds_exponential",
    "growth_factor",
]

#: step size h, Lipschitz constant K, number of steps n, x = hK, end time T, ResNet step s.
H, K = sympy.symbols("h K", positive=True)
N = sympy.Symbol("n", positive=True, integer=True)
X = sympy.Symbol("x", positive=True)
T = sympy.Symbol("T", positive=True)
S = sympy.Symbol("s", positive=True)


def stage_lipschitz(tableau: ButcherTableau, h: sympy.Expr = H,
                    k: sympy.Expr = K) -> tuple[sympy.Expr, ...]:
    """Lipschitz constants K_i of the stages k_i as functions of the step's input.

    Args:
        tableau: an explicit method.
        h: step size (symbol or number).
        k: Lipschitz constant of the field in y (symbol or number).

    Returns:
        (K_1, ..., K_s), expanded polynomials in h and k.
    """
    out: list[sympy.Expr] = []
    for i in range(tableau.stages):
        acc = sum((abs(tableau.a[i][j]) * out[j] for j in range(i)), sympy.Integer(0))
        out.append(sympy.expand(k * (1 + h * acc)))
    return tuple(out)


def increment_lipschitz(tableau: ButcherTableau, h: sympy.Expr = H, k: sympy.Expr = K) -> sympy.Expr:
    """L_Φ = Σ_i |b_i| K_i, the Lipschitz constant of the increment function Φ."""
    ks = stage_lipschitz(tableau, h, k)
    return sympy.expand(sum((abs(bi) * ki for bi, ki in zip(tableau.b, ks)), sympy.Integer(0)))


def step_factor(tableau: ButcherTableau, h: sympy.Expr = H, k: sympy.Expr = K) -> sympy.Expr:
    """Per-step growth factor 1 + h L_Φ(h, K)."""
    return sympy.expand(1 + h * increment_lipschitz(tableau, h, k))


def step_polynomial(tableau: ButcherTableau) -> sympy.Poly:
    """1 + h L_Φ as a polynomial in x = hK (it depends on h and K only through hK)."""
    return sympy.Poly(step_factor(tableau, X, sympy.Integer(1)), X)


def fixed_grid_factor(tableau: ButcherTableau, n: sympy.Expr = N, end_time: sympy.Expr | None = None,
                      k: sympy.Expr = K) -> sympy.Expr:
    """n-step bound (1 + h L_Φ)^n; with ``end_time`` the step is h = end_time / n."""
    h = H if end_time is None else end_time / n
    return step_factor(tableau, h, k) ** n


def _interp_weights(tableau: ButcherTableau, theta: sympy.Expr) -> tuple[sympy.Expr, ...]:
    """Stage weights w_i(θ) of torchdiffeq's dense output: y(t + θh) = y + h Σ_i w_i(θ) k_i.

    torchdiffeq fits a quartic through y0, y1 = y0 + hΣb_i k_i, y_mid = y0 + hΣm_i k_i,
    f0 = k_1 and f1 = k_s (see torchdiffeq/_impl/interp.py); the y0 terms cancel to 1.
    """
    if tableau.b_mid is None:
        raise TableauError(f"tableau {tableau.name!r} has no dense output (b_mid)")
    s = tableau.stages
    e1 = [sympy.Integer(int(i == 0)) for i in range(s)]
    es = [sympy.Integer(int(i == s - 1)) for i in range(s)]
    b, m = tableau.b, tableau.b_mid
    return tuple(
        sympy.nsimplify(
            theta * e1[i]
            + theta**2 * (es[i] - 4 * e1[i] - 5 * b[i] + 16 * m[i])
            + theta**3 * (5 * e1[i] - 3 * es[i] + 14 * b[i] - 32 * m[i])
            + theta**4 * (2 * es[i] - 2 * e1[i] - 8 * b[i] + 16 * m[i])
        )
        for i in range(s)
    )


def interpolated_step_factor(tableau: ButcherTableau, theta: sympy.Expr, h: sympy.Expr = H,
                             k: sympy.Expr = K) -> sympy.Expr:
    """Growth factor of a step of size h read off torchdiffeq's interpolant at t0 + θh.

    An adaptive solve's last accepted step usually overshoots T and torchdiffeq returns
    its dense-output interpolant at T; that map is y ↦ y + h Σ_i w_i(θ) k_i, so its
    factor is 1 + h Σ_i |w_i(θ)| K_i (at θ = 1 this is :func:`step_factor`).

    Raises:
        TableauError: the tableau has no dense output.
    """
    ks = stage_lipschitz(tableau, h, k)
    w = _interp_weights(tableau, sympy.nsimplify(theta))
    return sympy.expand(1 + h * sum((abs(wi) * ki for wi, ki in zip(w, ks)), sympy.Integer(0)))


def _poly_value(poly: sympy.Poly, x: float) -> float:
    value = 0.0
    for coeff in poly.all_coeffs():
        value = value * x + float(coeff)
    return value


def step_sequence_factor(tableau: ButcherTableau, steps: Sequence[tuple[float, float]] | Sequence[float],
                         lipschitz: float, end_time: float | None = None) -> float:
    """∏_i (1 + h_i L_Φ(h_i)) over a given (e.g. recorded adaptive) step sequence.

    Args:
        tableau: the method.
        steps: step sizes h_i, or (t_i, h_i) pairs as in ``ODEBlock.accepted_steps``.
        lipschitz: K, the field's Lipschitz constant in the state.
        end_time: when given and the last step ends after it (dopri5 overshoots T and
            interpolates back), the last factor is :func:`interpolated_step_factor` at
            θ = (end_time − t_last) / h_last.

    Returns:
        the product, a float (``math.inf`` on overflow).

    Raises:
        ValueError: negative K or a non-positive step.
    """
    if not lipschitz >= 0:
        raise ValueError(f"Lipschitz constant must be >= 0, got {lipschitz}")
    pairs: list[tuple[float, float]] = []
    t = 0.0
    for st in steps:
        t0, dt = (st if isinstance(st, tuple) else (t, float(st)))
        if not dt > 0:
            raise ValueError(f"step sizes must be positive, got {dt}")
        pairs.append((float(t0), float(dt)))
        t = t0 + dt
    poly = step_polynomial(tableau)
    log_total = 0.0
    for idx, (t0, dt) in enumerate(pairs):
        last = idx == len(pairs) - 1
        if last and end_time is not None and t0 + dt > end_time * (1 + 1e-12) + 1e-12:
            theta = (end_time - t0) / dt
            expr = interpolated_step_factor(tableau, sympy.Rational(theta), X, sympy.Integer(1))
            factor = float(expr.subs(X, dt * lipschitz))
        else:
            factor = _poly_value(poly, dt * lipschitz)
        log_total += math.log(factor)
    return math.exp(log_total) if log_total < 700 else math.inf


def continuous_factor(end_time: sympy.Expr = T, k: sympy.Expr = K) -> sympy.Expr:
    """The continuous limit e^{(b − t_0) K} (Grönwall)."""
    return sympy.exp(end_time * k)


def resnet_factor(n: sympy.Expr = N, s: sympy.Expr = S, k: sympy.Expr = K) -> sympy.Expr:
    """n residual blocks h ← h + s f(h): (1 + sK)^n; the seed's ResNet is s = 1."""
    return (1 + s * k) ** n


def exponential_excess(tableau: ButcherTableau) -> sympy.Expr:
    """(1 + h L_Φ) − e^{hK} as a function of x = hK; positive where the method's
    factor exceeds the exponential (Theorem 3.1's e^{nhK} bound then fails per step)."""
    return step_polynomial(tableau).as_expr() - sympy.exp(X)


def exceeds_exponential(tableau: ButcherTableau, hk: float) -> bool:
    """Whether 1 + h L_Φ > e^{hK} at x = hK (exactly, by comparing in high precision)."""
    poly = step_polynomial(tableau).as_expr()
    x = sympy.nsimplify(hk)
    return bool(sympy.N(poly.subs(X, x) - sympy.exp(x), 50) > 0)


@dataclasses.dataclass(frozen=True)
class GrowthFactor:
    """A solver's perturbation-growth bound G for one ODE block.

    Attributes:
        method: tableau name.
        formula: symbolic bound (in h, K, n for fixed grids; the per-step factor in h, K
            for a step sequence).
        latex: ``sympy.latex(formula)``.
        lipschitz: K used.
        value: G evaluated at K and the steps.
        n_steps: number of steps.
        end_time: T.
        continuous: e^{TK}, for comparison.
    """

    method: str
    formula: sympy.Expr
    latex: str
    lipschitz: float
    value: float
    n_steps: int
    end_time: float
    continuous: float


def growth_factor(method: ButcherTableau | str, lipschitz: float, n_steps: int | None = None,
                  end_time: float = 1.0,
                  steps: Sequence[tuple[float, float]] | Sequence[float] | None = None) -> GrowthFactor:
    """The growth factor G of an ODE block for a fixed grid or a recorded step sequence.

    Args:
        method: a tableau or a SolverConfig method name (:func:`tableau_for_solver`).
        lipschitz: K, an upper bound on the field's Lipschitz constant in the state.
        n_steps: equal steps h = end_time / n_steps (fixed grid).
        end_time: T.
        steps: recorded steps instead of ``n_steps`` (see :func:`step_sequence_factor`).

    Returns:
        a :class:`GrowthFactor`.

    Raises:
        ValueError: neither or both of ``n_steps`` and ``steps``, n_steps < 1, K < 0.
    """
    tab = method if isinstance(method, ButcherTableau) else tableau_for_solver(method)
    if (n_steps is None) == (steps is None):
        raise ValueError("give exactly one of n_steps (fixed grid) and steps (step sequence)")
    if not lipschitz >= 0:
        raise ValueError(f"Lipschitz constant must be >= 0, got {lipschitz}")
    if steps is not None:
        steps = list(steps)
        if not steps:
            raise ValueError("the step sequence is empty")
        value = step_sequence_factor(tab, steps, lipschitz, end_time)
        formula = step_factor(tab)
        count = len(steps)
    else:
        if int(n_steps) != n_steps or n_steps < 1:
            raise ValueError(f"n_steps must be a positive integer, got {n_steps}")
        count = int(n_steps)
        formula = fixed_grid_factor(tab)
        value = step_sequence_factor(tab, [end_time / count] * count, lipschitz)
    cont = math.exp(end_time * lipschitz) if end_time * lipschitz < 700 else math.inf
    return GrowthFactor(tab.name, formula, sympy.latex(formula), float(lipschitz), value, count,
                        float(end_time), cont)
