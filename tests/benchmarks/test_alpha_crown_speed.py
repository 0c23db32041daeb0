"""The side-by-side engines of ``benchmarks.alpha_crown_speed``: with the intermediate bounds fixed at
CROWN's and exactly 20 margin steps, the dense engine and auto_LiRPA 0.3's α-CROWN solve the same
problem with the same optimiser (Adam, learning rate 0.5 decayed by 0.98 per step, best iterate
kept), so every margin agrees to 2e-5 (measured: at most 6e-6; the default engine's patience stop,
which ends the steps early, differs by up to 5e-5 on these nets and 0.001 on zoo `ode`); the
patience stop may end lower, never higher."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.alpha_crown_speed import _Exact, _Referenced
from models import ODENet, SolverConfig
from verify import Certifier, CertifyError, lower, spec_matrix
from verify._alpha import ITERATIONS, AlphaCrown
from verify._dense_graph import DenseGraph


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(2.0)
    net.input_shape = (1, 8, 8)
    return net.eval()


def _ode() -> ODENet:
    torch.manual_seed(1)
    return ODENet(channels=2, solver=SolverConfig.fixed("euler", 2), input_size=8).eval()


@pytest.mark.parametrize("make", [_mlp, _ode], ids=["mlp", "ode2"])
def test_fixed_intermediate_margins_equal_auto_lirpa(make):
    net = make()
    torch.manual_seed(5)
    x = torch.rand(1, 1, 8, 8)
    y = net(x).argmax(1)
    C = spec_matrix(y, 10)
    ir = lower(net)
    dense = _Exact(ir, 0)
    moved = False
    for eps in (0.03, 0.08):
        e = torch.tensor([eps])
        # dense slopes: auto_LiRPA's sparse ones fail to scatter where over 90 % of a layer is unstable
        lirpa = _Referenced(net, Certifier(net, "inf", "alpha-crown", engine="auto_lirpa").bounds, fixed=True)
        ours, theirs = dense.margins(x, e, C)[0], lirpa.margins(x, e, C)[0]
        crown = Certifier(net, "inf", "crown").margins(x, y, eps)[0]
        assert torch.allclose(ours, theirs, atol=2e-5, rtol=0), (eps, ours - theirs)
        moved |= bool((ours > crown + 1e-3).any())
        patient = AlphaCrown(DenseGraph.from_lowered(ir), "inf", ITERATIONS, 0, early_stop=False)
        assert bool((patient.margins(x[0], eps, C[0]) <= ours + 1e-6).all())
    assert moved  # the margins' slopes were optimised, not left at CROWN's


def test_fixed_intermediate_bounds_need_this_engines_reference():
    from verify.engines import Reference

    net = _mlp()
    x = torch.rand(1, 1, 8, 8)
    C = spec_matrix(net(x).argmax(1), 10)
    alpha = Certifier(net, "inf", "alpha-crown", engine="auto_lirpa").bounds
    with pytest.raises(CertifyError, match="fixed intermediate bounds"):
        alpha.margins(x, torch.tensor([0.03]), C, None, fixed_intermediate=True)
    wrong = Reference(alpha.name, {"/no-such-node": (torch.zeros(1), torch.zeros(1))})
    with pytest.raises(CertifyError, match="no-such-node"):
        alpha.margins(x, torch.tensor([0.03]), C, wrong, fixed_intermediate=True)
