"""ODE block and solver configuration against exact solutions and known facts of the methods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models import ODEBlock, ODENet, ResNet, SolverConfig, SolverConfigError, SolverStepLimitError
from models.fields import VectorField, VerifiableField



class LinearField(VectorField):
    """dh/dt = (a + b t) A h for states of shape (N, d).

    With scalar time factor the exact flow is h(T) = expm((a T + b T^2 / 2) A) h(0).
    """

    def __init__(self, A: torch.Tensor, a: float = 1.0, b: float = 0.0) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())
        self.a, self.b = a, b

    def _f(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return (self.a + self.b * t) * (h @ self.A.T)

    def exact(self, h0: torch.Tensor, T: float) -> torch.Tensor:
        M = torch.linalg.matrix_exp((self.a * T + self.b * T * T / 2) * self.A.detach())
        return h0 @ M.T


class TanhField(VectorField):
    """A smooth nonlinear time-dependent field dh/dt = tanh(h W^T + t c) (N, d)."""

    def __init__(self, d: int, scale: float = 2.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(d, d, generator=g, dtype=torch.float64) * scale / math.sqrt(d))
        self.c = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))

    def _f(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(h @ self.W.T + t * self.c)


def _system(d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    h0 = torch.randn(3, d, generator=g, dtype=torch.float64)
    return A, h0


# --------------------------------------------------------------------------- exact solutions


def test_dopri5_tight_tolerance_matches_expm() -> None:
    A, h0 = _system()
    field = LinearField(A, a=1.0, b=0.5)
    block = ODEBlock(field, SolverConfig(method="dopri5", rtol=1e-8, atol=1e-8, T=1.7))
    with torch.no_grad():
        out = block(h0)
    exact = field.exact(h0, 1.7)
    assert (exact - h0).abs().max() > 0.5  # the flow moves the state a lot
    assert (out - exact).abs().max() < 1e-6
    assert block.nfe > 0


def test_rk4_many_steps_matches_expm() -> None:
    A, h0 = _system(seed=1)
    field = LinearField(A, a=0.5, b=1.0)
    block = ODEBlock(field, SolverConfig.fixed("rk4", 200, T=2.0))
    with torch.no_grad():
        out = block(h0)
    exact = field.exact(h0, 2.0)
    assert (out - exact).abs().max() < 1e-8 * exact.abs().max()
    assert block.nfe == 4 * 200


# --------------------------------------------------------------------------- order of accuracy


@pytest.mark.parametrize(
    "method,order,steps",
    [("euler", 1, (16, 32, 64, 128)), ("midpoint", 2, (8, 16, 32, 64)), ("heun2", 2, (8, 16, 32, 64)),
     ("heun3", 3, (8, 16, 32, 64)),
     ("rk4", 4, (4, 8, 16, 32))],
)
def test_order_of_accuracy(method: str, order: int, steps: tuple[int, ...]) -> None:
    # Time-dependent field, so a method that evaluates its stages at the wrong times loses order.
    A, h0 = _system(seed=2)
    field = LinearField(A, a=0.5, b=1.5)
    T = 1.0
    exact = field.exact(h0, T)
    errors, hs = [], []
    for n in steps:
        block = ODEBlock(field, SolverConfig.fixed(method, n, T))
        with torch.no_grad():
            errors.append(float((block(h0) - exact).abs().max()))
        hs.append(T / n)
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, f"{method}: slope {slope:.3f}, errors {errors}"


# --------------------------------------------------------------------------- adaptive NFE


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_tighter_tolerance_needs_more_evaluations(method: str) -> None:
    field = TanhField(6, scale=3.0)
    h0 = torch.randn(2, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nfes, outs = [], []
    for tol in (1e-2, 1e-4, 1e-6, 1e-8):
        block = ODEBlock(field, SolverConfig.adaptive(method, tol, T=2.0))
        with torch.no_grad():
            outs.append(block(h0))
        nfes.append(block.nfe)
    assert all(a < b for a, b in zip(nfes, nfes[1:])), nfes
    # ...and buys accuracy: distance to the tightest solve shrinks with the tolerance.
    errs = [float((o - outs[-1]).abs().max()) for o in outs[:-1]]
    assert errs[0] > errs[1] > errs[2], errs


def test_swapping_solver_at_eval_time_changes_nfe_not_weights() -> None:
    torch.manual_seed(0)
    model = ODENet(channels=4, solver=SolverConfig.adaptive("dopri5", 1e-2)).eval()
    x = torch.rand(2, 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y_loose = model(x)
        nfe_loose = model.nfe
        model.solver = SolverConfig.adaptive("dopri5", 1e-7)
        y_tight = model(x)
        nfe_tight = model.nfe
        model.solver = SolverConfig.fixed("rk4", 3)
        model(x)
        nfe_rk4 = model.nfe
        model.solver = SolverConfig.fixed("midpoint", 5, T=2.0)
        model(x)
        nfe_mid = model.nfe
        model.solver = SolverConfig.fixed("euler", 7)
        y_euler = model(x)
        nfe_euler = model.nfe
    assert nfe_tight > nfe_loose
    assert (nfe_rk4, nfe_mid, nfe_euler) == (12, 10, 7)
    assert model.block.solver == SolverConfig.fixed("euler", 7)
    assert not torch.equal(y_euler, y_tight) and (y_loose - y_tight).abs().max() < 1e-2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError):
        model.solver = {"method": "rk4"}  # type: ignore[assignment]


# --------------------------------------------------------------------------- ResNet == Euler ODE-net


@pytest.mark.parametrize("time_channel", [False, True])
@pytest.mark.parametrize("n,T", [(4, 1.0), (5, 2.0)])
def test_tied_resnet_equals_euler_odenet(time_channel: bool, n: int, T: float) -> None:
    torch.manual_seed(1)
    ode = ODENet(channels=6, solver=SolverConfig.fixed("euler", n, T), time_channel=time_channel).eval()
    res = ResNet(channels=6, n_blocks=n, step=T / n, tied=True, time_channel=time_channel).eval()
    state = {k.replace("block.field.", "fields.0."): v for k, v in ode.state_dict().items()}
    res.load_state_dict(state, strict=True)
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        y_ode, y_res = ode(x), res(x)
        ode.solver = SolverConfig.fixed("rk4", n, T)
        y_rk4 = ode(x)
    assert (y_ode - y_res).abs().max() < 1e-5
    # The comparison can tell solvers apart: the field really moves the state.
    assert (y_rk4 - y_res).abs().max() > 1e-4
    if time_channel:
        res_untimed = ResNet(channels=6, n_blocks=n, step=T / n, tied=True, time_channel=True).eval()
        res_untimed.load_state_dict(state)
        with torch.no_grad():
            w = res_untimed.fields[0]
            w.conv1.conv.weight[:, 0].zero_()
            w.conv2.conv.weight[:, 0].zero_()
            assert (res_untimed(x) - y_res).abs().max() > 1e-5  # the time plane matters here


# --------------------------------------------------------------------------- gradients


def test_gradcheck_tiny_block_direct() -> None:
    torch.manual_seed(2)
    field = VerifiableField(2, hidden=3, time_channel=True).double()
    block = ODEBlock(field, SolverConfig.fixed("rk4", 3, T=0.5))
    h = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (h,), eps=1e-6, atol=1e-6)


def test_gradcheck_tiny_block_adjoint() -> None:
    field = TanhField(3, scale=1.5, seed=4)
    cfg = SolverConfig(method="dopri5", rtol=1e-10, atol=1e-10, T=0.7, adjoint=True)
    block = ODEBlock(field, cfg)
    h = torch.randn(2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (h,), eps=1e-6, atol=1e-5)
    # Adjoint parameter gradients agree with back-propagation through the solver.
    grads = []
    for adjoint in (True, False):
        block.solver = cfg.replace(adjoint=adjoint)
        field.zero_grad()
        block(h.detach()).square().sum().backward()
        grads.append(field.W.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "rk45"}, "unknown ODE solver method 'rk45'"),
        ({"method": "dopri5", "T": 0.0}, "T must be positive"),
        ({"method": "dopri5", "T": -1.0}, "T must be positive"),
        ({"method": "dopri5", "T": math.inf}, "T must be positive"),
        ({"method": "euler", "step_size": 0.3, "T": 1.0}, "whole number of steps"),
        ({"method": "rk4"}, "needs a positive step_size"),
        ({"method": "rk4", "step_size": -0.1}, "needs a positive step_size"),
        ({"method": "dopri5", "rtol": 0.0}, "rtol and atol must be positive"),
        ({"method": "dopri5", "max_steps": 0}, "max_steps must be >= 1"),
    ],
)
def test_solver_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(SolverConfigError, match=match):
        SolverConfig(**kwargs)


def test_solver_config_constructors() -> None:
    with pytest.raises(SolverConfigError, match="not a fixed-grid method"):
        SolverConfig.fixed("dopri5", 4)
    with pytest.raises(SolverConfigError, match="not an adaptive method"):
        SolverConfig.adaptive("rk4")
    with pytest.raises(SolverConfigError, match="n_steps must be a positive integer"):
        SolverConfig.fixed("rk4", 0)
    with pytest.raises(SolverConfigError, match="unknown solver config keys"):
        SolverConfig.from_dict({"method": "rk4", "steps": 4})
    cfg = SolverConfig.fixed("midpoint", 10, T=3.0)
    assert cfg.n_steps == 10 and cfg.is_fixed and SolverConfig.from_dict(cfg.to_dict()) == cfg
    assert SolverConfig(method="euler", step_size=0.1, T=1.0).n_steps == 10
    assert SolverConfig.adaptive("bosh3", 1e-4).n_steps is None


# --------------------------------------------------------------------------- recorded steps, step cap


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_recorded_steps_reach_T(method: str) -> None:
    field = TanhField(4, scale=3.0, seed=6)
    block = ODEBlock(field, SolverConfig.adaptive(method, 1e-5, T=1.3))
    block.record_steps = True
    with torch.no_grad():
        block(torch.randn(2, 4, dtype=torch.float64))
    steps = block.accepted_steps
    assert len(steps) >= 3
    assert steps[0][0] == 0.0
    for (t0, dt), (t1, _) in zip(steps, steps[1:]):
        assert t1 == pytest.approx(t0 + dt, abs=1e-12) and dt > 0
    total = sum(dt for _, dt in steps)
    assert total >= 1.3 - 1e-9  # the last step may overshoot T ...
    assert total - steps[-1][1] < 1.3  # ... but only the last one reaches it
    # Fixed grids record the grid.
    block.solver = SolverConfig.fixed("rk4", 4, T=1.3)
    with torch.no_grad():
        block(torch.randn(2, 4, dtype=torch.float64))
    assert [round(t, 12) for t, _ in block.accepted_steps] == [round(k * 1.3 / 4, 12) for k in range(4)]
    assert sum(dt for _, dt in block.accepted_steps) == pytest.approx(1.3)


def test_max_steps_exceeded_raises() -> None:
    field = TanhField(4, scale=3.0, seed=7)
    h0 = torch.randn(2, 4, dtype=torch.float64)
    block = ODEBlock(field, SolverConfig(method="dopri5", rtol=1e-10, atol=1e-10, T=2.0, max_steps=5))
    with pytest.raises(SolverStepLimitError, match="max_steps=5"):
        block(h0)
    block.solver = block.solver.replace(max_steps=10_000)
    block(h0)
    assert block.nfe > 6 * 5
