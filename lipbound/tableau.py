"""Butcher tableaus of explicit Runge–Kutta methods, with exact rational coefficients.

One :class:`ButcherTableau` drives both the symbolic error-growth bounds
(:mod:`lipbound.growth`) and the numeric unrolled solver used for certification, so the
coefficients are stored exactly as :class:`sympy.Rational` and exposed as floats through
``a_float``, ``b_float``, ``c_float`` (and ``b_err_float``).

The method ``y_{n+1} = y_n + h Σ_i b_i k_i`` with stages
``k_i = f(t_n + c_i h, y_n + h Σ_{j<i} a_ij k_j)``.

:data:`TABLEAUS` names the methods; :func:`tableau_for_solver` maps a
:class:`~models.solver.SolverConfig` method name to the tableau torchdiffeq really uses
(torchdiffeq's ``"rk4"`` is Kutta's 3/8 rule, not the classic RK4).

References:
    Butcher, "Numerical Methods for Ordinary Differential Equations", Wiley 2016.
    Hairer, Nørsett, Wanner, "Solving Ordinary Differential Equations I", Springer 1993.
    Dormand & Prince, "A family of embedded Runge-Kutta formulae", JCAM 1980.
    Bogacki & Shampine, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 1989.
"""

from __future__ import annotations

import dataclasses
import fractions
import numbers
from collections.abc import Sequence
from typing import Any

import sympy

__all__ = ["ButcherTableau", "TableauError", "TABLEAUS", "tableau_for_solver"]


class TableauError(ValueError):
    """An inconsistent Butcher tableau, or a solver method without one."""


def _rational(value: Any, where: str) -> sympy.Rational:
    """Exact conversion; floats are refused because they are not exact."""
    if isinstance(value, bool):
        raise TableauError(f"{where}: booleans are not tableau coefficients")
    if isinstance(value, sympy.Rational):
        return value
    if isinstance(value, (int, fractions.Fraction)):
        return sympy.Rational(value)
    if isinstance(value, str):
        try:
            return sympy.Rational(value)
        except (TypeError, ValueError, sympy.SympifyError) as err:
            raise TableauError(f"{where}: cannot read {value!r} as a rational number") from err
    if isinstance(value, numbers.Real):
        raise TableauError(
            f"{where}: got the inexact number {value!r}; give coefficients as int, "
            "fractions.Fraction, sympy.Rational or a string like '1/3'"
        )
    raise TableauError(f"{where}: {type(value).__name__} is not a rational coefficient")


def _vector(values: Sequence[Any], name: str) -> tuple[sympy.Rational, ...]:
    return tuple(_rational(v, f"{name}[{i}]") for i, v in enumerate(values))


# The four order-4 rooted-tree conditions beyond order 2 are written with the stage
# vector c = A·1 (validated), as in Hairer–Nørsett–Wanner Table II.2.2.
def _order_residuals(a: Sequence[Sequence[sympy.Rational]], b: Sequence[sympy.Rational],
                     c: Sequence[sympy.Rational], order: int) -> list[tuple[str, sympy.Rational]]:
    s = len(b)

    def av(v: Sequence[sympy.Rational]) -> list[sympy.Rational]:
        return [sum((a[i][j] * v[j] for j in range(s)), sympy.Integer(0)) for i in range(s)]

    def dot(u: Sequence[sympy.Rational], v: Sequence[sympy.Rational]) -> sympy.Rational:
        return sum((x * y for x, y in zip(u, v)), sympy.Integer(0))

    ones = [sympy.Integer(1)] * s
    c2 = [x * x for x in c]
    c3 = [x * x * x for x in c]
    ac = av(c)
    conds: list[tuple[int, str, sympy.Rational, sympy.Rational]] = [
        (1, "sum b = 1", dot(b, ones), sympy.Integer(1)),
        (2, "sum b c = 1/2", dot(b, c), sympy.Rational(1, 2)),
        (3, "sum b c^2 = 1/3", dot(b, c2), sympy.Rational(1, 3)),
        (3, "sum b A c = 1/6", dot(b, ac), sympy.Rational(1, 6)),
        (4, "sum b c^3 = 1/4", dot(b, c3), sympy.Rational(1, 4)),
        (4, "sum b (c * A c) = 1/8", dot(b, [x * y for x, y in zip(c, ac)]), sympy.Rational(1, 8)),
        (4, "sum b A c^2 = 1/12", dot(b, av(c2)), sympy.Rational(1, 12)),
        (4, "sum b A A c = 1/24", dot(b, av(ac)), sympy.Rational(1, 24)),
    ]
    return [(label, got - want) for p, label, got, want in conds if p <= order]


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method with exact rational coefficients.

    Coefficients may be given as ``int``, :class:`fractions.Fraction`,
    :class:`sympy.Rational` or strings such as ``"1/3"``; they are stored as
    :class:`sympy.Rational` (exact, and usable directly in sympy expressions). Floats are
    refused. ``a`` may be given as full square rows or as ragged lower-triangular rows
    (row ``i`` with ``i`` entries); it is stored as an ``s x s`` tuple of tuples with zeros
    on and above the diagonal.

    Args:
        name: identifier, e.g. ``"rk4"``.
        a: stage coefficients, strictly lower triangular.
        b: weights of the propagated solution (sum to 1).
        c: nodes, ``c[0] == 0`` and ``c_i = Σ_j a_ij``.
        order: classical order of the ``b`` solution (order conditions up to
            ``min(order, 4)`` are checked exactly).
        b_err: weights of the embedded lower-order solution of an adaptive pair, or None.
        b_mid: dense-output weights of the solution at the step midpoint,
            ``y(t + h/2) ≈ y + h Σ b_mid_i k_i`` (they sum to 1/2), or None. torchdiffeq fits
            its 4th-order interpolant through y0, y1, this midpoint, f0 and f1 = k_s.

    Raises:
        TableauError: on inconsistent lengths, a non-strictly-lower-triangular ``a``,
            row sums that differ from ``c``, ``c[0] != 0``, weights not summing to 1,
            inexact (float) coefficients, or a violated order condition.

    References:
        Butcher, "Numerical Methods for Ordinary Differential Equations", 2016.
    """

    name: str
    a: tuple[tuple[sympy.Rational, ...], ...]
    b: tuple[sympy.Rational, ...]
    c: tuple[sympy.Rational, ...]
    order: int
    b_err: tuple[sympy.Rational, ...] | None = None
    b_mid: tuple[sympy.Rational, ...] | None = None

    def _row(self, i: int, row: Any, s: int, ci: sympy.Rational) -> tuple[sympy.Rational, ...]:
        """Row i of a, padded to s entries, checked strictly lower triangular with row sum c_i."""
        vals = _vector(row, f"a[{i}]")
        if len(vals) == i:
            vals = vals + (sympy.Integer(0),) * (s - i)
        if len(vals) != s:
            raise TableauError(f"tableau {self.name!r}: row a[{i}] has {len(vals)} entries, expected {i} or {s}")
        if any(v != 0 for v in vals[i:]):
            raise TableauError(
                f"tableau {self.name!r}: a must be strictly lower triangular (explicit method); "
                f"row {i} has a nonzero entry on or above the diagonal"
            )
        if sum(vals, sympy.Integer(0)) != ci:
            raise TableauError(
                f"tableau {self.name!r}: row sum of a[{i}] is {sum(vals, sympy.Integer(0))}, but c[{i}] = {ci}"
            )
        return vals

    def _extra_weights(self, s: int) -> tuple[tuple[sympy.Rational, ...] | None, tuple[sympy.Rational, ...] | None]:
        """The embedded weights b_err (summing to 1) and the midpoint weights b_mid (to 1/2), checked."""
        b_err = None
        if self.b_err is not None:
            b_err = _vector(self.b_err, "b_err")
            if len(b_err) != s:
                raise TableauError(f"tableau {self.name!r}: len(b_err)={len(b_err)} != {s}")
            if sum(b_err, sympy.Integer(0)) != 1:
                raise TableauError(
                    f"tableau {self.name!r}: embedded weights sum to {sum(b_err, sympy.Integer(0))}, not 1"
                )
        b_mid = None
        if self.b_mid is not None:
            b_mid = _vector(self.b_mid, "b_mid")
            if len(b_mid) != s or sum(b_mid, sympy.Integer(0)) != sympy.Rational(1, 2):
                raise TableauError(
                    f"tableau {self.name!r}: b_mid needs {s} entries summing to 1/2"
                )
        return b_err, b_mid

    def __post_init__(self) -> None:
        b = _vector(self.b, "b")
        s = len(b)
        if s < 1:
            raise TableauError(f"tableau {self.name!r}: needs at least one stage")
        c = _vector(self.c, "c")
        if len(c) != s:
            raise TableauError(f"tableau {self.name!r}: len(c)={len(c)} != len(b)={s}")
        if len(self.a) != s:
            raise TableauError(f"tableau {self.name!r}: a has {len(self.a)} rows, expected {s}")
        rows = [self._row(i, row, s, c[i]) for i, row in enumerate(self.a)]
        if c[0] != 0:
            raise TableauError(f"tableau {self.name!r}: c[0] must be 0 for an explicit method, got {c[0]}")
        if int(self.order) != self.order or self.order < 1:
            raise TableauError(f"tableau {self.name!r}: order must be a positive integer, got {self.order}")
        b_err, b_mid = self._extra_weights(s)
        if sum(b, sympy.Integer(0)) != 1:
            raise TableauError(f"tableau {self.name!r}: weights b sum to {sum(b, sympy.Integer(0))}, not 1")
        for label, residual in _order_residuals(rows, b, c, min(int(self.order), 4)):
            if residual != 0:
                raise TableauError(
                    f"tableau {self.name!r}: claimed order {self.order} but order condition "
                    f"'{label}' is off by {residual}"
                )
        object.__setattr__(self, "a", tuple(rows))
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "order", int(self.order))
        object.__setattr__(self, "b_err", b_err)
        object.__setattr__(self, "b_mid", b_mid)

    @property
    def stages(self) -> int:
        """Number of stages s."""
        return len(self.b)

    @property
    def a_float(self) -> tuple[tuple[float, ...], ...]:
        """``a`` as an ``s x s`` tuple of float tuples."""
        return tuple(tuple(float(v) for v in row) for row in self.a)

    @property
    def b_float(self) -> tuple[float, ...]:
        """``b`` as floats."""
        return tuple(float(v) for v in self.b)

    @property
    def c_float(self) -> tuple[float, ...]:
        """``c`` as floats."""
        return tuple(float(v) for v in self.c)

    @property
    def b_err_float(self) -> tuple[float, ...] | None:
        """``b_err`` as floats (None without an embedded pair)."""
        return None if self.b_err is None else tuple(float(v) for v in self.b_err)

    @property
    def has_negative_coefficients(self) -> bool:
        """True when some a_ij or b_i is negative (the growth factor can then exceed e^{hK})."""
        return any(v < 0 for row in self.a for v in row) or any(v < 0 for v in self.b)

    @property
    def effective_stages(self) -> int:
        """Stages that influence the step: up to the last stage with b_i != 0.

        Dormand–Prince's 7th (first-same-as-last) stage only feeds the error estimate.
        """
        nonzero = [i for i, v in enumerate(self.b) if v != 0]
        return nonzero[-1] + 1


def _t(name: str, a: Sequence[Sequence[Any]], b: Sequence[Any], c: Sequence[Any], order: int,
       b_err: Sequence[Any] | None = None, b_mid: Sequence[Any] | None = None) -> ButcherTableau:
    return ButcherTableau(name=name, a=tuple(tuple(r) for r in a), b=tuple(b), c=tuple(c),
                          order=order, b_err=None if b_err is None else tuple(b_err),
                          b_mid=None if b_mid is None else tuple(b_mid))


_R = sympy.Rational

#: Named explicit Runge–Kutta tableaus.
TABLEAUS: dict[str, ButcherTableau] = {
    "euler": _t("euler", [[]], [1], [0], 1),
    "midpoint": _t("midpoint", [[], [_R(1, 2)]], [0, 1], [0, _R(1, 2)], 2),
    # Heun's (explicit trapezoidal) method = torchdiffeq "heun2".
    "heun": _t("heun", [[], [1]], [_R(1, 2), _R(1, 2)], [0, 1], 2),
    "ralston": _t("ralston", [[], [_R(2, 3)]], [_R(1, 4), _R(3, 4)], [0, _R(2, 3)], 2),
    # Heun's third-order method = torchdiffeq "heun3".
    "heun3": _t("heun3", [[], [_R(1, 3)], [0, _R(2, 3)]], [_R(1, 4), 0, _R(3, 4)],
                [0, _R(1, 3), _R(2, 3)], 3),
    "rk4": _t("rk4", [[], [_R(1, 2)], [0, _R(1, 2)], [0, 0, 1]],
              [_R(1, 6), _R(1, 3), _R(1, 3), _R(1, 6)], [0, _R(1, 2), _R(1, 2), 1], 4),
    # Kutta's 3/8 rule = torchdiffeq "rk4" (rk4_alt_step_func).
    "rk4-38": _t("rk4-38", [[], [_R(1, 3)], [_R(-1, 3), 1], [1, -1, 1]],
                 [_R(1, 8), _R(3, 8), _R(3, 8), _R(1, 8)], [0, _R(1, 3), _R(2, 3), 1], 4),
    # Bogacki–Shampine 3(2), first same as last; b_err as in torchdiffeq (b - c_error).
    "bosh3": _t("bosh3", [[], [_R(1, 2)], [0, _R(3, 4)], [_R(2, 9), _R(1, 3), _R(4, 9)]],
                [_R(2, 9), _R(1, 3), _R(4, 9), 0], [0, _R(1, 2), _R(3, 4), 1], 3,
                [_R(7, 24), _R(1, 4), _R(1, 3), _R(1, 8)], [0, _R(1, 2), 0, 0]),
    # Dormand–Prince 5(4); b_err is torchdiffeq's (Shampine's) embedded solution b - c_error.
    "dopri5": _t(
        "dopri5",
        [[],
         [_R(1, 5)],
         [_R(3, 40), _R(9, 40)],
         [_R(44, 45), _R(-56, 15), _R(32, 9)],
         [_R(19372, 6561), _R(-25360, 2187), _R(64448, 6561), _R(-212, 729)],
         [_R(9017, 3168), _R(-355, 33), _R(46732, 5247), _R(49, 176), _R(-5103, 18656)],
         [_R(35, 384), 0, _R(500, 1113), _R(125, 192), _R(-2187, 6784), _R(11, 84)]],
        [_R(35, 384), 0, _R(500, 1113), _R(125, 192), _R(-2187, 6784), _R(11, 84), 0],
        [0, _R(1, 5), _R(3, 10), _R(4, 5), _R(8, 9), 1, 1], 5,
        [_R(1951, 21600), 0, _R(22642, 50085), _R(451, 720), _R(-12231, 42400), _R(649, 6300),
         _R(1, 60)],
        [_R(6025192743, 60171106304), 0, _R(51252292925, 130801643196),
         _R(-2691868925, 90256659456), _R(187940372067, 3189068634112),
         _R(-1776094331, 39487288512), _R(11237099, 470086768)]),
    # Heun–Euler 2(1) pair, as in torchdiffeq "adaptive_heun" (see tableau_for_solver).
    "heun-euler": _t("heun-euler", [[], [1]], [_R(1, 2), _R(1, 2)], [0, 1], 2, [0, 1]),
    # Runge–Kutta–Fehlberg 2(1), as in torchdiffeq "fehlberg2" (see tableau_for_solver).
    "fehlberg2": _t("fehlberg2", [[], [_R(1, 2)], [_R(1, 256), _R(255, 256)]],
                    [_R(1, 512), _R(255, 256), _R(1, 512)], [0, _R(1, 2), 1], 2,
                    [_R(1, 256), _R(255, 256), 0]),
}

#: SolverConfig method name -> TABLEAUS key of the tableau torchdiffeq uses.
_SOLVER_TABLEAU: dict[str, str] = {
    "euler": "euler",
    "midpoint": "midpoint",
    "heun2": "heun",
    "heun3": "heun3",
    "rk4": "rk4-38",
    "bosh3": "bosh3",
    "dopri5": "dopri5",
}

#: Methods whose torchdiffeq steps are not the one-step method of their tableau.
_NOT_ONE_STEP: dict[str, str] = {
    "adaptive_heun": "heun-euler",
    "fehlberg2": "fehlberg2",
}


def tableau_for_solver(method: str) -> ButcherTableau:
    """The tableau torchdiffeq integrates with for a :class:`SolverConfig` method name.

    torchdiffeq's ``"rk4"`` is the 3/8 rule (``TABLEAUS["rk4-38"]``), its ``"heun2"`` is
    Heun's method (``TABLEAUS["heun"]``).

    ``adaptive_heun`` and ``fehlberg2`` are refused: torchdiffeq reuses the last stage
    ``k_s`` as the next step's first stage (first-same-as-last), but for these two pairs
    ``k_s`` is evaluated at the embedded solution, not at ``y_{n+1}``, so a sequence of
    their torchdiffeq steps is not a sequence of steps of the tableau (``TABLEAUS`` still
    holds the tableaus, as ``"heun-euler"`` and ``"fehlberg2"``).

    Args:
        method: a SolverConfig method (euler, midpoint, heun2, heun3, rk4, bosh3, dopri5).

    Returns:
        the :class:`ButcherTableau`.

    Raises:
        TableauError: for a method without a faithful tableau here (``dopri8``,
            ``adaptive_heun``, ``fehlberg2``) or an unknown name.
    """
    if method in _NOT_ONE_STEP:
        raise TableauError(
            f"torchdiffeq's {method!r} reuses a last stage evaluated at the embedded solution as the "
            f"next step's first stage, so its steps are not those of TABLEAUS[{_NOT_ONE_STEP[method]!r}]"
        )
    if method not in _SOLVER_TABLEAU:
        if method == "dopri8":
            raise TableauError("no tableau for 'dopri8' (Dormand-Prince 8(5,3)) is provided")
        raise TableauError(
            f"no Butcher tableau for solver method {method!r}; known: {', '.join(_SOLVER_TABLEAU)}"
        )
    return TABLEAUS[_SOLVER_TABLEAU[method]]
