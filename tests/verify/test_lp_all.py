"""LP-all (verify._lp_all): the triangle relaxation's LP with every neuron bounded by its own LP.

It is the ceiling of every α-CROWN bound (Salman et al. 2019): never below α-CROWN at any
iteration count, reached by α-CROWN run to convergence, and never above the exact minimum
(MILP) or what per-margin PGD attains. On a one-hidden-layer net on two inputs it equals a
triangle LP written out by hand and solved by scipy's linprog.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from models import MLP, ODENet, SolverConfig
from verify import Certifier, CertifyError, lower, spec_matrix
from verify._alpha import AlphaCrown
from verify._dense_graph import DenseGraph
from verify._lp_all import LpAll
from verify.cli import main

from ._margin_attack import min_margins

#: LP values are widened by BOUND_SLACK = 1e-5 (relative and absolute) before they become bounds.
TOL = 3e-5


def _nets() -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    mlp = MLP(hidden=(12, 12), input_size=6).eval()
    ode = ODENet(channels=2, solver=SolverConfig.fixed("euler", 2), input_size=8, head_pool=2).eval()
    xs = [torch.rand(1, 1, 6, 6), torch.rand(1, 1, 8, 8)]
    torch.manual_seed(2)
    rk = ODENet(channels=2, solver=SolverConfig.fixed("rk4", 1), input_size=8, time_channel=True).eval()
    return [("mlp", mlp, xs[0]), ("ode-euler2", ode, xs[1]), ("ode-rk4", rk, torch.rand(1, 1, 8, 8))]


def _alpha(model: nn.Module, x: torch.Tensor, eps: float, C: torch.Tensor, steps: int) -> torch.Tensor:
    a = AlphaCrown(DenseGraph.from_lowered(lower(model)), "inf", iterations=steps, intermediate_iterations=steps,
                   patience=steps, early_stop=False)
    with torch.enable_grad():
        return a.margins(x, eps, C).detach()


@pytest.mark.parametrize("case", range(3))
def test_lp_all_is_the_ceiling_of_alpha_crown_and_below_exact_and_attacks(case):
    name, model, x = _nets()[case]
    with torch.no_grad():
        y = model(x).argmax(1)
    C = spec_matrix(y, int(model(x).shape[1]))
    milp = Certifier(model, "inf", "milp")
    lp = Certifier(model, "inf", "lp-all")
    crown = Certifier(model, "inf", "crown")
    gained = False
    for eps in (0.02, 0.2, 0.4):
        bound = lp.margins(x, y, eps)[0]
        assert lp.bounds.complete
        c = crown.margins(x, y, eps)[0]
        assert bool((bound >= c - 1e-6).all()), name
        for steps in (3, 100):  # any iteration count stays below; run to convergence it reaches LP-all
            a = _alpha(model, x, eps, C[0], steps)
            assert float((a - bound).max()) <= TOL * (1 + float(bound.abs().max())), (name, eps, steps)
        gap = float((bound - a).max())
        assert gap <= 0.02 * max(float((bound - c).max()), 1e-3), (name, eps, gap)
        if eps < 0.4:  # the MILP at 0.4 costs half a minute on ode-euler2
            exact = milp.margins(x, y, eps)[0]
            assert float((bound - exact).max()) <= TOL * (1 + float(exact.abs().max())), (name, eps)
        attacked = min_margins(model, x, int(y), eps)
        assert float((bound - attacked).max()) <= 1e-4, (name, eps)
        gained |= bool((bound > c + 1e-3).any())
    assert gained, name  # the LPs tightened something


def test_lp_all_equals_a_hand_written_triangle_lp_on_one_hidden_layer():
    """One hidden layer on two inputs: the first layer's bounds are exact intervals, so LP-all is
    the triangle LP over (x, z) with those bounds, written out here and solved by linprog."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    net.input_shape, net.num_classes = (1, 1, 2), 3
    x = torch.tensor([[[[0.45, 0.55]]]])
    y = net(x).argmax(1)
    eps = 0.3
    W1, b1 = net[1].weight.double().detach().numpy(), net[1].bias.double().detach().numpy()
    W2, b2 = net[3].weight.double().detach().numpy(), net[3].bias.double().detach().numpy()
    lo_x = np.clip(x.double().numpy().ravel() - eps, 0, 1)
    hi_x = np.clip(x.double().numpy().ravel() + eps, 0, 1)
    mid, rad = W1 @ (lo_x + hi_x) / 2 + b1, np.abs(W1) @ (hi_x - lo_x) / 2
    l, u = mid - rad, mid + rad
    assert ((l < 0) & (u > 0)).sum() >= 2
    # variables v = (x1, x2, z1..z8); p = W1 x + b1
    A, b, eq_A, eq_b, bnds = [], [], [], [], [(lo_x[0], hi_x[0]), (lo_x[1], hi_x[1])]
    for j in range(8):
        e = np.zeros(10)
        if l[j] >= 0:  # z = p
            e[2 + j], e[:2] = 1.0, -W1[j]
            eq_A.append(e), eq_b.append(b1[j]), bnds.append((None, None))
        elif u[j] <= 0:
            bnds.append((0.0, 0.0))
        else:  # z >= p ; z <= u (p - l) / (u - l)
            e[2 + j], e[:2] = -1.0, W1[j]
            A.append(e), b.append(-b1[j])
            s = u[j] / (u[j] - l[j])
            f = np.zeros(10)
            f[2 + j], f[:2] = 1.0, -s * W1[j]
            A.append(f), b.append(s * (b1[j] - l[j]))
            bnds.append((0.0, None))
    lp = Certifier(net, "inf", "lp-all").margins(x, y, eps)[0]
    others = [k for k in range(3) if k != int(y)]
    for k, j in enumerate(others):
        c = np.zeros(10)
        c[2:] = W2[int(y)] - W2[j]
        res = linprog(c, A_ub=np.array(A), b_ub=np.array(b), A_eq=np.array(eq_A) if eq_A else None,
                      b_eq=np.array(eq_b) if eq_b else None, bounds=bnds, method="highs")
        assert res.status == 0
        want = res.fun + b2[int(y)] - b2[j]
        assert float(lp[k]) == pytest.approx(want, abs=TOL * (1 + abs(want)))


def test_lp_all_time_limit_keeps_crowns_bounds_and_bad_arguments():
    _, model, x = _nets()[1]
    with torch.no_grad():
        y = model(x).argmax(1)
    engine = LpAll(lower(model), "inf", time_limit=1e-9)  # the deadline passes before the first LP
    got = engine.margins(x, torch.tensor([0.08]), spec_matrix(y, 10))[0]
    assert not engine.complete and engine.programs == 0
    assert torch.allclose(got, engine.crown_margins.to(got.dtype))
    # a deadline in the middle: whatever was reached is tightened, the rest is CROWN's; sound either way
    full = LpAll(lower(model), "inf").margins(x, torch.tensor([0.4]), spec_matrix(y, 10))[0]
    part = LpAll(lower(model), "inf", time_limit=0.05)
    mid = part.margins(x, torch.tensor([0.4]), spec_matrix(y, 10))[0]
    assert bool((mid >= part.crown_margins.to(mid.dtype) - 1e-6).all())
    assert float((mid - full).max()) <= TOL * (1 + float(full.abs().max()))
    with pytest.raises(CertifyError, match="L∞"):
        Certifier(model, "2", "lp-all")
    with pytest.raises(CertifyError, match="time_limit"):
        LpAll(lower(model), "inf", time_limit=0)
    with pytest.raises(CertifyError, match="reference"):
        engine.margins(x, torch.tensor([0.08]), spec_matrix(y, 10), reference=object())
    lenet = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    lenet.input_shape, lenet.num_classes = (1, 6, 6), 3
    with pytest.raises(CertifyError, match="lp-all"):
        Certifier(lenet.eval(), "inf", "lp-all")


def test_lp_all_radius_search_between_alpha_crown_and_exact():
    _, model, x = _nets()[0]
    with torch.no_grad():
        y = model(x).argmax(1)
    r = {m: Certifier(model, "inf", m).radius(x, y, eps_max=1.0, rtol=1e-3).radius
         for m in ("crown", "alpha-crown", "lp-all", "milp")}
    assert r["crown"] <= r["lp-all"] * (1 + 2e-3)
    assert r["alpha-crown"] <= r["lp-all"] * (1 + 2e-3) <= r["milp"] * (1 + 4e-3)


def test_cli_lp_all_method_is_listed_and_all_leaves_it_out(tmp_path, capsys):
    assert main(["certify", "--model", "nope", "--method", "lp-all"]) == 2  # accepted method, unknown model
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lp-all" not in err and err.count("\n") == 1
    from verify._cmd_certify import EXPENSIVE, METHODS

    assert "lp-all" in METHODS and "lp-all" in EXPENSIVE
