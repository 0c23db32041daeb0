"""Certified training of a controlled-adaptive-solver ODE-net: the training bound follows every
step sequence of the ball, is differentiable, trains, and what it trains certifies soundly.

Facts a wrong implementation would violate: on a tiny CAS net whose clean input sits at the
accept/reject threshold, the training bound lies below the deployed model's margins at sampled
points, corners and GAINS-style step-attack points (which take different step sequences); where
the ball takes one step sequence, the bound equals IBP of that sequence's fixed steps; it is no
tighter than the trajectory graph's certified bound; its gradient is the finite-difference
gradient (float64); a few batches lower the loss; a CAS-cert-trained net's trajectory-graph
certificates survive per-margin PGD and the step attack through the deployed solver. The same for
CROWN-IBP through the graph: sound on every step sequence, equal to CROWN-IBP of the fixed steps
for one sequence, differentiable, and it trains.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from torch import nn

from models.odenet import ODEBlock
from models.solver import SolverConfig
from tests.verify._margin_attack import min_margins
from tests.verify.test_trajectory import _root_ratio, step_attack
from verify import lower
from verify._cas_crown_ibp import cas_crown_ibp_margins
from verify._cas_ibp import cas_ibp_bounds
from verify._crown_ibp import crown_ibp_margins
from verify._ibp import ibp_margins
from verify._lower import Flow, Step
from verify._spec import spec_matrix
from verify.certified_training import CertConfig, CertifiedLoss, crown_ibp_loss, worst_case_ce
from verify.certify import Certifier


def _net(atol: float, h0: float = 0.5, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """A 16-pixel ODE-net on a CAS (dopri5): Linear stem, Linear–ReLU–Linear field, ReLU head."""
    torch.manual_seed(seed)
    field = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 6))
    with torch.no_grad():
        field[2].weight.mul_(0.7)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), ODEBlock(field, SolverConfig.cas("dopri5", atol=atol, h0=h0)),
                      nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)
    m.input_shape, m.num_classes = (1, 4, 4), 3
    return m.eval()


def _branching(dtype: torch.dtype = torch.float32) -> tuple[nn.Sequential, torch.Tensor]:
    """A tiny CAS net (h0 = T) whose clean input's first error ratio is just below 1 (accepted; rejected nearby)."""
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        atol = float(_root_ratio(_net(atol=1.0, h0=1.0, dtype=dtype), x)) * 1.0001
    return _net(atol=atol, h0=1.0, dtype=dtype), x


def _margins(m: nn.Module, xs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, set]:
    with torch.no_grad():
        logits = m(xs)
    seqs = {tuple((s.t, s.h, s.decision) for s in seq) for seq in m[2].steps}
    return logits @ spec_matrix(y, 3, logits.dtype)[0].T, seqs


def test_training_bound_holds_on_every_step_sequence_of_the_ball() -> None:
    m, x = _branching()
    eps = 1e-4  # IBP of the error estimate is loose: at 1e-4 the graph has ~30 nodes
    y = m(x).argmax(1)
    b = cas_ibp_bounds(lower(m), x, y, eps)
    assert b.stats.branch_nodes >= 1 and b.stats.nodes >= 3 and b.stats.gave_up == 0
    g = torch.Generator().manual_seed(0)
    samples = (x + eps * (2 * torch.rand(300, 1, 4, 4, generator=g) - 1)).clamp(0, 1)
    corners = (x + eps * torch.sign(torch.randn(100, 1, 4, 4, generator=g))).clamp(0, 1)
    margins, seqs = _margins(m, torch.cat([samples, corners, step_attack(m, x, eps)]), y)
    assert len(seqs) >= 2, "the ball should hold inputs on different step sequences"
    assert (margins.amin(0) >= b.margins[0] - 1e-5).all()
    assert (min_margins(m, x, int(y), eps, steps=20, restarts=1) >= b.margins[0] - 1e-5).all()


def test_one_step_sequence_equals_ibp_of_its_fixed_steps() -> None:
    """A loose tolerance: every point of the ball accepts both steps of 0.5, and the bound is the
    IBP of two fixed dopri5 steps (stages recomputed by :mod:`verify._ibp` on the same boxes)."""
    m = _net(atol=10.0)
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0])
    b = cas_ibp_bounds(lower(m), x, y, 0.02)
    assert b.stats.nodes == 2  # two steps of 0.5 (the last one's accept and accept-double both end at T)
    ir = lower(m)
    cas = ir.parts[1]
    flow = Flow("dopri5", cas.tableau, tuple(Step(t, 0.5, 1.0, cas.field) for t in (0.0, 0.5)), cas.where)
    fixed = dataclasses.replace(ir, parts=(ir.parts[0], flow, ir.parts[2]))
    torch.testing.assert_close(b.margins, ibp_margins(fixed, x, y, 0.02), rtol=1e-6, atol=1e-6)


def test_no_tighter_than_the_trajectory_graph_certificate() -> None:
    m, x = _branching()
    y = m(x).argmax(1)
    for eps in (1e-5, 1e-4):
        train_lb = cas_ibp_bounds(lower(m), x, y, eps).margins[0]
        cert = Certifier(m, "inf", "crown")
        assert (train_lb <= cert.margins(x, y, eps)[0] + 1e-5).all()


def test_gradient_matches_finite_differences() -> None:
    m, x = _branching(torch.float64)
    y = torch.tensor([1])
    ir = lower(m)
    w = m[2].field[0].weight

    def loss(weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            w.copy_(weight.detach())
        out = worst_case_ce(cas_ibp_bounds(ir, x, y, 1e-5).margins, y)
        (g,) = torch.autograd.grad(out, w)
        return out.detach(), g

    base = w.detach().clone()
    value, grad = loss(base)
    assert cas_ibp_bounds(ir, x, y, 1e-5).stats.branch_nodes >= 1
    for idx in [(0, 0), (3, 5), (11, 2)]:
        d = torch.zeros_like(base)
        d[idx] = 1e-6
        fd = (loss(base + d)[0] - loss(base - d)[0]) / 2e-6
        assert abs(float(fd) - float(grad[idx])) <= 1e-5 * (1 + abs(float(fd)))
    loss(base)


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :8].mean(1) > x.flatten(1)[:, 8:].mean(1)).long() + (x.flatten(1).mean(1) > 0.55).long()
    return x, y


def _train(m: nn.Module, steps: int, eps: float, loss: str = "ibp") -> list[float]:
    x, y = _data()
    hook = CertifiedLoss(CertConfig(loss=loss, eps=eps, warmup_epochs=0, ramp_epochs=0, kappa_start=0.5,
                                    kappa_end=0.5, beta_start=1.0, beta_end=1.0))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss, stats = hook(m, x, y, step, 1)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_a_few_batches_lower_the_loss() -> None:
    m = _net(atol=0.5, seed=3)  # a branching graph of ~8 nodes
    assert cas_ibp_bounds(lower(m), *_data(), 0.02).stats.branch_nodes >= 1
    losses = _train(m, 25, 0.02)
    assert losses[-1] < 0.8 * losses[0]


def test_trained_certificates_survive_pgd_and_the_step_attack() -> None:
    m = _net(atol=0.5, seed=3)  # a branching graph of ~8 nodes
    _train(m, 60, 0.03)
    m.eval()
    x, y = _data(12)
    eps = 0.03
    cert = Certifier(m, "inf", "crown")
    lb = cert.margins(x, y, eps)
    assert (lb > 0).all(1).sum() >= 3, "training should certify some points"
    for i in range(x.shape[0]):
        xi, yi = x[i:i + 1], int(y[i])
        assert (min_margins(m, xi, yi, eps, steps=15, restarts=0) >= lb[i] - 1e-5).all()
        margins, _ = _margins(m, step_attack(m, xi, eps, steps=8), y[i:i + 1])
        assert (margins >= lb[i] - 1e-5).all()


def test_crown_ibp_through_the_graph_holds_on_every_step_sequence() -> None:
    """On the branching net, at radii where nodes merge several edges (the walk back stops there)
    and where it does not, CROWN-IBP lies below every sampled, corner, step-attack and PGD margin."""
    m, x = _branching()
    y = m(x).argmax(1)
    g = torch.Generator().manual_seed(0)
    merged = 0
    for eps in (1e-5, 1e-4):
        crown, b = cas_crown_ibp_margins(lower(m), x, y, eps)
        merged += sum(len(src) > 1 for _, src in b.graph.nodes.values())
        samples = (x + eps * (2 * torch.rand(300, 1, 4, 4, generator=g) - 1)).clamp(0, 1)
        corners = (x + eps * torch.sign(torch.randn(100, 1, 4, 4, generator=g))).clamp(0, 1)
        margins, seqs = _margins(m, torch.cat([samples, corners, step_attack(m, x, eps)]), y)
        assert len(seqs) >= 2
        assert (margins.amin(0) >= crown[0] - 1e-5).all(), eps
        assert (min_margins(m, x, int(y), eps, steps=20, restarts=1) >= crown[0] - 1e-5).all()
        assert (crown[0] > b.margins[0]).all()  # tighter than the interval bound here
    assert merged >= 5, "the test should exercise nodes reached by several edges"


def test_crown_ibp_of_one_step_sequence_equals_crown_ibp_of_its_fixed_steps() -> None:
    m = _net(atol=10.0)
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0])
    ir = lower(m)
    crown, b = cas_crown_ibp_margins(ir, x, y, 0.02)
    assert b.stats.nodes == 2
    cas = ir.parts[1]
    flow = Flow("dopri5", cas.tableau, tuple(Step(t, 0.5, 1.0, cas.field) for t in (0.0, 0.5)), cas.where)
    fixed = dataclasses.replace(ir, parts=(ir.parts[0], flow, ir.parts[2]))
    torch.testing.assert_close(crown, crown_ibp_margins(fixed, x, y, 0.02), rtol=1e-6, atol=1e-6)


def test_crown_ibp_loss_mixes_the_two_bounds_and_its_gradient_matches_finite_differences() -> None:
    m, x = _branching(torch.float64)
    y = torch.tensor([1])
    ir = lower(m)
    eps = 1e-4
    crown, b = cas_crown_ibp_margins(ir, x, y, eps)
    assert sum(len(src) > 1 for _, src in b.graph.nodes.values()) >= 1
    torch.testing.assert_close(crown_ibp_loss(ir, x, y, eps, 0.25)[1], 0.25 * crown + 0.75 * b.margins)
    torch.testing.assert_close(crown_ibp_loss(ir, x, y, eps, 0.0)[1], b.margins)
    w = m[2].field[0].weight

    def loss(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            w.copy_(weight.detach())
        out = crown_ibp_loss(ir, x, y, eps, 1.0)[0]
        (g,) = torch.autograd.grad(out, w)
        return out.detach(), g

    base = w.detach().clone()
    _, grad = loss(base)
    assert grad.abs().sum() > 0
    for idx in [(0, 0), (3, 5), (11, 2)]:
        d = torch.zeros_like(base)
        d[idx] = 1e-7
        fd = (loss(base + d)[0] - loss(base - d)[0]) / 2e-7
        assert abs(float(fd) - float(grad[idx])) <= 1e-4 * (1 + abs(float(fd)))
    loss(base)


def test_a_few_crown_ibp_batches_lower_the_loss() -> None:
    m = _net(atol=0.5, seed=3)
    assert cas_ibp_bounds(lower(m), *_data(), 0.02).stats.branch_nodes >= 1
    losses = _train(m, 25, 0.02, loss="crown-ibp")
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.skipif(not os.environ.get("ODE_ROBUSTNESS_DATA"), reason="MNIST missing")
def test_zoo_model_is_certified_for_its_deployed_solver_and_unbeaten() -> None:
    from models.data import load_dataset
    from models.zoo import load_with_metadata

    model, meta = load_with_metadata("ode-cas-cert-0.1")
    assert meta["certified_accuracy"]["method"] == "crown" and meta["init_from"] == "ode-cert-0.1"
    x, y = load_dataset("mnist-t10k", "test", n=2)
    cert = Certifier(model, "inf", "crown")
    assert "controlled adaptive solver" in cert.covers
    lb = cert.margins(x, y, 0.1)
    assert (lb > 0).all(1).any()
    for i in range(2):
        assert (min_margins(model, x[i:i + 1], int(y[i]), 0.1, steps=15, restarts=0) >= lb[i] - 1e-4).all()


@pytest.mark.skipif(not os.environ.get("ODE_ROBUSTNESS_DATA"), reason="MNIST missing")
def test_cli_init_from_an_unknown_model_is_one_line_and_status_2(tmp_path, capsys) -> None:
    from verify.cli import main

    argv = ["train", "--preset", "ode-cert-0.1", "--init-from", "nope", "--epochs", "1", "--n-train", "8",
            "--n-eval", "4", "--out", str(tmp_path / "x"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and len(err.splitlines()) == 1
