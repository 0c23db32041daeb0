"""Butcher tableaus: validation, and agreement with the steps torchdiffeq really takes."""

from __future__ import annotations

import fractions

import pytest
import sympy
import torch
from torchdiffeq import odeint
from torchdiffeq._impl.bosh3 import Bosh3Solver
from torchdiffeq._impl.dopri5 import Dopri5Solver
from torchdiffeq._impl.rk_common import _runge_kutta_step

from lipbound import TABLEAUS, ButcherTableau, TableauError, tableau_for_solver


def _field(dim: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    w2 = torch.randn(dim, dim, generator=g, dtype=torch.float64)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ w1.T + t) @ w2.T * 0.7 + torch.sin(3 * t) * y

    return f


def _rk_step(tab: ButcherTableau, f, t: float, y: torch.Tensor, h: float) -> torch.Tensor:
    a, b, c = tab.a_float, tab.b_float, tab.c_float
    ks: list[torch.Tensor] = []
    for i in range(tab.stages):
        yi = y + h * sum((a[i][j] * ks[j] for j in range(i)), torch.zeros_like(y))
        ks.append(f(torch.tensor(t + c[i] * h, dtype=y.dtype), yi))
    return y + h * sum(bi * k for bi, k in zip(b, ks))


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "heun3", "rk4"])
def test_fixed_grid_matches_torchdiffeq(method: str) -> None:
    f = _field()
    y0 = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    n, T = 7, 1.3
    h = T / n
    ref = odeint(f, y0, torch.tensor([0.0, T], dtype=torch.float64), method=method,
                 options={"step_size": h})[-1]
    tab = tableau_for_solver(method)
    y = y0
    for k in range(n):
        y = _rk_step(tab, f, k * h, y, h)
    assert torch.allclose(y, ref, atol=1e-6, rtol=0), (y - ref).abs().max()
    # the wrong RK4 variant is measurably different: the mapping matters
    if method == "rk4":
        y = y0
        for k in range(n):
            y = _rk_step(TABLEAUS["rk4"], f, k * h, y, h)
        assert (y - ref).abs().max() > 1e-9


@pytest.mark.parametrize("method,solver", [("dopri5", Dopri5Solver), ("bosh3", Bosh3Solver)])
def test_adaptive_tableau_matches_torchdiffeq_step(method: str, solver: type) -> None:
    f = _field(seed=2)
    y0 = torch.randn(4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t0, dt = torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.37, dtype=torch.float64)
    def g(t: torch.Tensor, y: torch.Tensor, perturb: object = None) -> torch.Tensor:
        return f(t, y)

    y1, _, y_err, _ = _runge_kutta_step(g, y0, f(t0, y0), t0, dt, t0 + dt, solver.tableau)
    tab = tableau_for_solver(method)
    ours = _rk_step(tab, f, 0.2, y0, 0.37)
    assert torch.allclose(ours, y1, atol=1e-12, rtol=0)
    # torchdiffeq's error estimate is h * sum (b - b_err) k
    a, c = tab.a_float, tab.c_float
    ks: list[torch.Tensor] = []
    for i in range(tab.stages):
        yi = y0 + 0.37 * sum((a[i][j] * ks[j] for j in range(i)), torch.zeros_like(y0))
        ks.append(f(torch.tensor(0.2 + c[i] * 0.37, dtype=y0.dtype), yi))
    assert tab.b_err_float is not None
    err = 0.37 * sum((bi - ei) * k for bi, ei, k in zip(tab.b_float, tab.b_err_float, ks))
    assert torch.allclose(err, y_err, atol=1e-12, rtol=0)


def test_coefficients_are_exact_rationals() -> None:
    for tab in TABLEAUS.values():
        for v in (*tab.b, *tab.c, *(x for row in tab.a for x in row)):
            assert isinstance(v, sympy.Rational)
    assert TABLEAUS["rk4-38"].a[2][0] == sympy.Rational(-1, 3)
    assert tableau_for_solver("rk4") is TABLEAUS["rk4-38"]
    assert tableau_for_solver("heun2") is TABLEAUS["heun"]


def test_accepts_fractions_and_strings_and_pads_rows() -> None:
    t = ButcherTableau("mid", ((), (fractions.Fraction(1, 2),)), ("0", 1), (0, "1/2"), 2)
    assert t.a == ((0, 0), (sympy.Rational(1, 2), 0))
    assert t.c_float == (0.0, 0.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"a": ((), (sympy.Rational(1, 2),)), "b": (0, 1), "c": (0, 1), "order": 2}, "row sum"),
        ({"a": ((), (1,)), "b": (sympy.Rational(1, 2), sympy.Rational(1, 3)), "c": (0, 1), "order": 1},
         "sum to"),
        ({"a": ((0, 1), (1, 0)), "b": (sympy.Rational(1, 2),) * 2, "c": (1, 1), "order": 1},
         "lower triangular"),
        ({"a": ((), (1,)), "b": (sympy.Rational(1, 2),) * 2, "c": (0, 1, 2), "order": 1}, "len"),
        ({"a": ((), (0.5,)), "b": (0, 1), "c": (0, "1/2"), "order": 2}, "inexact"),
        ({"a": ((), (1,)), "b": (1, 0), "c": (0, 1), "order": 2}, "order condition"),
        ({"a": ((), (1,)), "b": (sympy.Rational(1, 2),) * 2, "c": (0, 1), "order": 2,
          "b_err": (1, 1)}, "embedded"),
        ({"a": ((), (1,)), "b": (sympy.Rational(1, 2),) * 2, "c": (0, 1), "order": 0}, "order"),
    ],
)
def test_bad_tableaus_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(TableauError, match=match):
        ButcherTableau(name="bad", **kwargs)


def test_tableau_error_is_value_error_and_unknown_method() -> None:
    assert issubclass(TableauError, ValueError)
    with pytest.raises(TableauError, match="dopri8"):
        tableau_for_solver("dopri8")
    with pytest.raises(TableauError, match="nope"):
        tableau_for_solver("nope")


@pytest.mark.parametrize("method", ["adaptive_heun", "fehlberg2"])
def test_non_one_step_torchdiffeq_methods_refused(method: str) -> None:
    with pytest.raises(TableauError, match="embedded"):
        tableau_for_solver(method)
