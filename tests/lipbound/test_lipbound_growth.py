"""Symbolic growth factors: closed forms, the e^{hK} comparison, dense output."""

from __future__ import annotations

import math

import pytest
import sympy
import torch

from lipbound import (TABLEAUS, continuous_factor, exceeds_exponential, exponential_excess,
                      fixed_grid_factor, growth_factor, interpolated_step_factor, resnet_factor,
                      stage_lipschitz, step_factor, step_polynomial, step_sequence_factor,
                      tableau_for_solver)
from lipbound._rk import rk_trajectory
from lipbound.growth import H, K, N, S, X


def test_euler_closed_form() -> None:
    assert sympy.simplify(step_factor(TABLEAUS["euler"]) - (1 + H * K)) == 0
    assert sympy.simplify(fixed_grid_factor(TABLEAUS["euler"]) - (1 + H * K) ** N) == 0


def test_classic_rk4_is_taylor_polynomial_of_exp() -> None:
    taylor = sum((H * K) ** k / sympy.factorial(k) for k in range(5))
    assert sympy.expand(step_factor(TABLEAUS["rk4"]) - taylor) == 0
    assert not exceeds_exponential(TABLEAUS["rk4"], 0.7)


def test_stage_constants_rk4() -> None:
    ks = stage_lipschitz(TABLEAUS["rk4"])
    assert sympy.expand(ks[1] - K * (1 + H * K / 2)) == 0
    assert sympy.expand(ks[3] - K * (1 + H * ks[2])) == 0


@pytest.mark.parametrize("name", ["midpoint", "heun", "ralston", "heun3", "bosh3"])
def test_positive_tableaus_match_exp_to_their_order(name: str) -> None:
    tab = TABLEAUS[name]
    poly = step_polynomial(tab).as_expr()
    taylor = sum(X**k / sympy.factorial(k) for k in range(tab.order + 1))
    assert sympy.expand(poly - taylor) == 0
    assert not exceeds_exponential(tab, 0.3)


def test_negative_coefficients_exceed_exponential() -> None:
    rk38 = step_polynomial(TABLEAUS["rk4-38"]).as_expr()
    assert sympy.expand(rk38 - (1 + X + X**2 + X**3 / 3 + X**4 / 24)) == 0
    dp = step_polynomial(TABLEAUS["dopri5"])
    assert dp.coeff_monomial(X) > 1  # sum |b_i| > 1 because b_5 < 0
    for name in ("rk4-38", "dopri5"):
        tab = TABLEAUS[name]
        assert tab.has_negative_coefficients
        for hk in (1e-3, 0.1, 1.0, 3.0):
            assert exceeds_exponential(tab, hk)
        assert sympy.N(exponential_excess(tab).subs(X, sympy.Rational(1, 10))) > 0
    assert not exceeds_exponential(TABLEAUS["euler"], 0.1)


def test_theorem_31_inequality_and_limits() -> None:
    for n in (1, 5, 50):
        for k in (0.5, 3.0):
            euler = float(fixed_grid_factor(TABLEAUS["euler"], n, sympy.Integer(1), k))
            assert euler <= math.exp(k) + 1e-12
    assert sympy.limit(fixed_grid_factor(TABLEAUS["euler"], N, sympy.Integer(1)), N, sympy.oo) == sympy.exp(K)
    assert sympy.limit(fixed_grid_factor(TABLEAUS["rk4"], N, sympy.Integer(2)), N, sympy.oo) == sympy.exp(2 * K)
    assert continuous_factor(2, K) == sympy.exp(2 * K)
    assert resnet_factor(4, 1, K) == (1 + K) ** 4
    assert resnet_factor() == (1 + S * K) ** N
    assert "\\frac" in sympy.latex(step_factor(TABLEAUS["rk4"]))


def test_growth_factor_numbers() -> None:
    gf = growth_factor("rk4", 2.0, n_steps=4, end_time=1.0)
    assert gf.method == "rk4-38"
    x = 0.5
    assert gf.value == pytest.approx((1 + x + x**2 + x**3 / 3 + x**4 / 24) ** 4, rel=1e-12)
    assert gf.continuous == pytest.approx(math.exp(2.0))
    assert gf.value > gf.continuous
    seq = growth_factor("euler", 3.0, steps=[0.1, 0.2, 0.7])
    assert seq.value == pytest.approx(1.3 * 1.6 * 3.1)
    with pytest.raises(ValueError):
        growth_factor("rk4", 1.0)
    with pytest.raises(ValueError):
        growth_factor("rk4", -1.0, n_steps=3)
    with pytest.raises(ValueError):
        step_sequence_factor(TABLEAUS["euler"], [0.1, -0.1], 1.0)


def test_interpolated_factor_reduces_to_step_factor_at_theta_one() -> None:
    for name in ("dopri5", "bosh3"):
        tab = TABLEAUS[name]
        assert sympy.expand(interpolated_step_factor(tab, 1) - step_factor(tab)) == 0
        assert sympy.expand(interpolated_step_factor(tab, 0) - 1) == 0


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_replayed_adaptive_steps_reproduce_torchdiffeq(method: str) -> None:
    """Replaying recorded steps with the tableau (and torchdiffeq's interpolant on the
    overshooting last step) gives torchdiffeq's output: the step-sequence bound is about
    the map the solver really computes."""
    from models.odenet import ODENet
    from models.solver import SolverConfig

    torch.manual_seed(0)
    model = ODENet(channels=4, solver=SolverConfig.adaptive(method, 1e-4)).double().eval()
    h0 = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    model.block.record_steps = True
    with torch.no_grad():
        out = model.block(h0)
        steps = model.block.accepted_steps
        replay = rk_trajectory(model.block.field, h0, tableau_for_solver(method), steps, 1.0)
    assert sum(dt for _, dt in steps) > 1.0  # the last step overshoots T
    assert torch.allclose(replay[-1], out, atol=1e-12, rtol=0)
