"""The trajectory graph of a controlled adaptive solver: its rule is the solver's, and its bounds hold
for every point of the ball under every step sequence the deployed solver takes there."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from models.cas import error_ratio, rk_step, rule_for
from models.odenet import ODEBlock
from models.solver import SolverConfig
from tests.verify._margin_attack import min_margins
from verify import CertifyError, certify, lower
from verify._cas_rule import CASGraphRule
from verify._lower import CASFlow, field_value
from verify._trajectory import TrajectoryGraph, aggregate
from verify.certify import Certifier, make_engine
from verify._spec import spec_matrix

GAINS = (Path(__file__).resolve().parents[2] / ".." / "shared" / "peers" / "gains" / "models" / "pre-trained" / "MNIST"
         / "boxactivation_mini_method_dopri5_0.005_2a_epoch_100_seed_12345_target_0.11_gamma_0.01_omega_0.0_traj_0_"
           "run_1.0.pth.tar").resolve()


def _tiny(atol: float, h0: float = 0.5, seed: int = 0, scale: float = 0.7, hidden_head: bool = False) -> nn.Sequential:
    """A 16-pixel ODE-net on a CAS (dopri5): Linear stem, Linear–ReLU–Linear field, Linear head
    (``hidden_head``: Linear–ReLU–Linear)."""
    torch.manual_seed(seed)
    field = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 6))
    with torch.no_grad():
        field[2].weight.mul_(scale)
    head = [nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)] if hidden_head else [nn.Linear(6, 3)]
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), ODEBlock(field, SolverConfig.cas("dopri5", atol=atol, h0=h0)),
                      *head)
    m.input_shape, m.num_classes = (1, 4, 4), 3
    return m.eval()


def _root_ratio(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Error ratio of the first step the CAS tries (differentiable in x)."""
    parts = lower(m).parts
    k = next(i for i, p in enumerate(parts) if isinstance(p, CASFlow))
    flow, y0 = parts[k], x
    for part in parts[:k]:
        y0 = part(y0)

    def f(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return field_value(flow.field, float(t), h)

    y1, err, _ = rk_step(f, flow.tableau, 0.0, flow.h0, y0, f(torch.tensor(0.0), y0))
    return error_ratio(y0, y1, err, flow.rule.atol, flow.rule.rtol)


def _branching() -> tuple[nn.Sequential, torch.Tensor]:
    """A tiny CAS net whose clean input sits at the accept/reject threshold of its first step."""
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    probe = _tiny(atol=1.0)
    with torch.no_grad():
        atol = float(_root_ratio(probe, x)) * 1.0001  # ratio just below 1 on x: accepted, rejected nearby
    return _tiny(atol=atol), x


def step_attack(m: nn.Module, x: torch.Tensor, eps: float, steps: int = 15) -> torch.Tensor:
    """GAINS's step attack: inputs of the ball driving the first step's error ratio up and down."""
    out = []
    for sign in (1.0, -1.0):
        xa = x.clone()
        for _ in range(steps):
            xa.requires_grad_(True)
            (g,) = torch.autograd.grad(sign * _root_ratio(m, xa).sum(), xa)
            with torch.no_grad():
                xa = (x + (xa + 0.25 * eps * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
        out.append(xa.detach())
    return torch.cat(out)


def _sequences(m: nn.Sequential, xs: torch.Tensor) -> tuple[torch.Tensor, set]:
    with torch.no_grad():
        logits = m(xs)
    return logits, {tuple((s.t, s.h, s.decision) for s in seq) for seq in m[2].steps}


def test_graph_rule_replays_the_deployed_solver() -> None:
    """Every step sequence the solver takes is a path of the graph rule, decision by decision."""
    m = _tiny(atol=1e-5, h0=0.9, scale=3.0)
    xs = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    _sequences(m, xs)
    rule = CASGraphRule(rule_for(m[2].solver), 0.9)
    decisions = set()
    for seq in m[2].steps:
        node = rule.root()
        for s in seq:
            assert node is not None and (s.t, s.h) == rule.attempt(node)
            decisions.add(s.decision)
            node = rule.after(node, s.decision)
        assert node is None
    assert decisions == {0, 1, 2}


def test_branching_is_real_and_every_trajectory_is_bounded() -> None:
    m, x = _branching()
    eps = 0.01
    with torch.no_grad():
        y = m(x).argmax(1)
    cert = Certifier(m, "inf", "crown")
    assert isinstance(cert.bounds, TrajectoryGraph) and "controlled adaptive solver" in cert.covers
    lb = cert.margins(x, y, eps)[0]
    stats = cert.bounds.last_stats[0]
    assert stats.branch_nodes >= 1 and stats.paths >= 2 and not stats.gave_up
    g = torch.Generator().manual_seed(0)
    samples = (x + eps * (2 * torch.rand(400, 1, 4, 4, generator=g) - 1)).clamp(0, 1)
    corners = (x + eps * torch.sign(torch.randn(100, 1, 4, 4, generator=g))).clamp(0, 1)
    attacked = step_attack(m, x, eps)
    logits, seqs = _sequences(m, torch.cat([samples, corners, attacked]))
    assert len(seqs) >= 2, "the ball should hold inputs on different step sequences"
    C = spec_matrix(y, 3)[0]
    assert ((logits @ C.T).amin(0) >= lb - 1e-5).all()
    assert (min_margins(m, x, int(y), eps, steps=20, restarts=1) >= lb - 1e-5).all()


def test_relu_head_and_sampled_margins() -> None:
    """A head with a ReLU after the CAS block, at a radius where the graph branches."""
    m = _tiny(atol=0.01, hidden_head=True)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    eps = 0.03
    with torch.no_grad():
        y = m(x).argmax(1)
    cert = Certifier(m, "inf", "crown")
    lb = cert.margins(x, y, eps)[0]
    assert cert.bounds.last_stats[0].paths >= 2
    xs = (x + eps * (2 * torch.rand(300, 1, 4, 4, generator=torch.Generator().manual_seed(0)) - 1)).clamp(0, 1)
    logits, _ = _sequences(m, xs)
    assert ((logits @ spec_matrix(y, 3)[0].T).amin(0) >= lb - 1e-5).all()


def test_engines_of_a_changed_model_see_its_new_parameters() -> None:
    """Engines of one model share its stem's matrices only while its parameters are unchanged."""
    m, x = _branching()
    y, eps = torch.tensor([0]), 0.01
    before = Certifier(m, "inf", "crown").margins(x, y, eps)[0]
    with torch.no_grad():
        m[1].weight.mul_(0.5)  # stem
        m[3].bias.add_(1.0)  # head
    after = Certifier(m, "inf", "crown").margins(x, y, eps)[0]
    fresh = Certifier(copy.deepcopy(m), "inf", "crown").margins(x, y, eps)[0]
    assert torch.equal(after, fresh) and not torch.equal(before, after)


def test_aggregate_bounds_the_minimum() -> None:
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(5, generator=g) - 1
    hi = lo + torch.rand(5, generator=g)
    exprs = [(torch.randn(4, 5, generator=g), torch.randn(4, generator=g)) for _ in range(3)]
    A, c = aggregate(exprs, (lo, hi))
    ys = lo + (hi - lo) * torch.rand(2000, 5, generator=g)
    true_min = torch.stack([ys @ Ab.T + cb for Ab, cb in exprs]).amin(0)
    assert (ys @ A.T + c <= true_min + 1e-5).all()


def test_plain_adaptive_solver_is_refused_with_the_alternatives() -> None:
    m = _tiny(atol=0.01)
    m[2].solver = SolverConfig.adaptive("dopri5", 1e-3)
    with pytest.raises(CertifyError, match="cas-dopri5") as err:
        certify(m, torch.rand(1, 1, 4, 4), torch.tensor([0]), 0.01)
    assert "--fixed-steps" in str(err.value)


def test_cas_model_refuses_other_methods_and_norms() -> None:
    m = _tiny(atol=0.01)
    ir = lower(m)
    with pytest.raises(CertifyError, match="trajectory graph"):
        make_engine(ir, "inf", "ibp")
    with pytest.raises(CertifyError, match="L∞"):
        make_engine(ir, "2", "crown")


@pytest.mark.slow
@pytest.mark.skipif(not GAINS.exists() or not os.environ.get("ODE_ROBUSTNESS_DATA"), reason="GAINS or MNIST missing")
def test_gains_model_margins_contain_the_deployed_margins() -> None:
    from models.data import load_dataset
    from models.zoo import resolve

    m, _ = resolve(f"gains:{GAINS}")
    x, y = load_dataset("mnist-t10k", split="test", n=2)
    eps = 0.1
    res = certify(m, x[:1], y[:1], eps)
    lb = res.lower[0]
    g = torch.Generator().manual_seed(0)
    xs = (x[:1] + eps * torch.sign(torch.randn(40, 1, 28, 28, generator=g))).clamp(0, 1)
    xs = torch.cat([xs, step_attack(m, x[:1], eps, steps=10)])
    with torch.no_grad():
        logits = m(xs)
    C = spec_matrix(y[:1], 10)[0]
    assert ((logits @ C.T).amin(0) >= lb - 1e-4).all()
    assert (min_margins(m, x[:1], int(y[0]), eps, steps=20, restarts=0) >= lb - 1e-4).all()
