"""Boundary Attack, EOT on randomized models, solver swapping and the evaluation checks."""

from __future__ import annotations

import torch
from torch import nn

from attacks import EOT, PGD, BoundaryAttack, evaluate, with_solver
from models import MLP, ODENet, SolverConfig, ToleranceRandomized


def test_boundary_succeeds_and_norm_shrinks_with_queries(linear) -> None:
    model, x, y, _, r_2 = linear(seed=5, n=16)
    few = BoundaryAttack(model, max_queries=40, seed=0)(x, y)
    many = BoundaryAttack(model, max_queries=1500, seed=0)(x, y)
    assert bool(few.success.all()) and bool(many.success.all())
    assert int(many.queries.max()) <= 1500 and int(few.queries.max()) <= 40
    assert float(many.l2.median()) < 0.8 * float(few.l2.median())
    assert bool((many.l2 >= r_2 * (1 - 1e-4)).all())  # never below the true minimum


class NoisyGradient(nn.Module):
    """Deterministic logits, but every backward pass sees a large random gradient term."""

    def __init__(self, base: nn.Module, scale: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        self.num_classes = base.num_classes
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base(x)
        noise = torch.randn(z.shape[1], x[0].numel(), generator=self.gen) * self.scale
        return z + (x - x.detach()).flatten(1) @ noise.T


def test_eot_beats_plain_pgd_on_randomized_model(linear) -> None:
    base, x, y, r_inf, _ = linear(seed=6, n=32)
    model = NoisyGradient(base, scale=float(base.net[1].weight.detach().abs().max()) * 5)
    eps = r_inf * 1.5
    plain = PGD(model, eps, steps=10, seed=0)(x, y).success_rate
    eot = EOT(PGD(model, eps, steps=10, seed=0), samples=100)(x, y).success_rate
    assert eot >= plain + 0.3, (plain, eot)
    assert eot == 1.0


def _tiny_ode() -> tuple[ODENet, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = ODENet(channels=4, solver=SolverConfig.adaptive("dopri5", 1e-3)).eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_with_solver_swaps_and_restores_and_nfe_is_reported() -> None:
    model, x, y = _tiny_ode()
    original = model.solver
    surrogate = SolverConfig.fixed("euler", 2)
    with with_solver(model, surrogate):
        assert model.solver == surrogate
    assert model.solver == original
    r = PGD(model, 0.1, steps=2, attack_solver=surrogate, eval_solver=SolverConfig.fixed("rk4", 3))(x, y)
    # 2 gradient steps at 2 NFE each (Euler, 2 steps), then 12 NFE (rk4: 4 stages x 3 steps) to score.
    assert r.nfe == 2 * 2 + 12
    assert model.solver == original


def test_randomized_model_without_eot_is_flagged() -> None:
    model, x, y = _tiny_ode()
    noisy = ToleranceRandomized(model, 1e-2, 1.0, seed=0)
    with torch.no_grad():
        assert not torch.allclose(noisy(x), noisy(x), atol=1e-6)
    report = evaluate(noisy, x, y, PGD(noisy, 0.05, steps=2), check_n=4)
    checks = {c.name: c for c in report.checks}
    assert checks["randomized_without_eot"].status == "fail"
    assert model.solver == SolverConfig.adaptive("dopri5", 1e-3)


def test_evaluate_report_and_checks_pass_on_a_sound_evaluation() -> None:
    torch.manual_seed(0)
    model = MLP(hidden=(32,), input_size=8).eval()
    x = torch.rand(40, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10
    report = evaluate(model, x, y, PGD(model, 0.1, steps=20), check_n=16)
    assert abs(report.clean_accuracy - 0.9) < 1e-6
    assert report.robust_accuracy <= report.clean_accuracy
    statuses = {c.name: c.status for c in report.checks}
    assert set(statuses) == {"iterative_vs_single_step", "unbounded_reaches_100", "eps_sweep_monotone",
                             "double_steps", "gradient_health", "randomized_without_eot", "white_vs_black_box"}
    assert all(s == "pass" for s in statuses.values()), report.summary()
    assert "mean L2 / accuracy" in report.summary()
    d = report.to_dict()
    assert d["flagged"] is False and d["n"] == 40


def test_gradient_masking_is_flagged() -> None:
    class Flat(nn.Module):
        num_classes = 10

        def __init__(self) -> None:
            super().__init__()
            self.net = MLP(hidden=(16,), input_size=8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Rounding the input: zero gradient almost everywhere (shattered gradients).
            return self.net(torch.round(x * 4) / 4)

    torch.manual_seed(0)
    model = Flat().eval()
    x = torch.rand(20, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    report = evaluate(model, x, y, PGD(model, 0.05, steps=5), check_n=8)
    checks = {c.name: c.status for c in report.checks}
    assert checks["gradient_health"] == "fail"
