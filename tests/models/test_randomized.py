"""The tolerance-randomization wrapper: draws, votes, rejection, seeding, zoo accuracy, bad arguments."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from models import (REJECT, LeNet5, ModelInputError, ODENet, RandomizationError, SolverConfig,
                    ToleranceRandomized, load_dataset, zoo)


class ThresholdModel(nn.Module):
    """A stand-in ODE net whose class depends only on the solver tolerance: 0 below 1e-3, else 1."""

    num_classes = 3
    input_shape = (1, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        self.solver = SolverConfig.adaptive("dopri5", 1e-3)
        self.nfe = 0
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.nfe = 7
        z = torch.zeros(x.shape[0], 3)
        z[:, 0 if self.solver.rtol < 1e-3 else 1] = 1.0
        return z + self.bias + 0 * x.sum()


def _tiny_ode() -> ODENet:
    torch.manual_seed(0)
    return ODENet(channels=4, solver=SolverConfig.adaptive("dopri5", 1e-3)).eval()


def test_votes_follow_the_drawn_tolerances_and_reject_split_votes() -> None:
    model = ThresholdModel()
    x = torch.rand(5, 1, 4, 4)
    strict = ToleranceRandomized(model, 1e-5, 1e-1, votes=9, v_min=8)
    r = strict.predict(x, seed=11)
    below = int((r.tolerances < 1e-3).sum())
    expected = torch.tensor([below, 9 - below, 0])
    assert r.votes.shape == (5, 3) and r.votes.dtype == torch.int64
    assert bool((r.votes == expected).all()) and bool((r.votes.sum(dim=1) == 9).all())
    assert 0 < below < 9, "seed 11 should split the draws around 1e-3"
    assert bool((r.label == REJECT).all()) and not bool(r.accepted.any())
    assert r.nfe == 9 * 7
    # The same votes under a lax threshold are accepted with the plurality class.
    lax = ToleranceRandomized(model, 1e-5, 1e-1, votes=9, v_min=0).predict(x, seed=11)
    assert bool((lax.votes == r.votes).all())
    assert bool((lax.label == (0 if below > 9 - below else 1)).all())
    assert bool((r.accepts(max(below, 9 - below) - 1)).all()) and not bool(r.accepts(max(below, 9 - below)).any())
    # Unanimous votes are accepted even when v_min = V - 1.
    r_low = ToleranceRandomized(model, 1e-5, 1e-4, votes=4, v_min=3).predict(x, seed=0)
    assert bool((r_low.label == 0).all()) and bool((r_low.agreement == 4).all())


def test_same_seed_same_votes_and_forward_is_one_draw() -> None:
    model = _tiny_ode()
    x = torch.rand(4, 1, 28, 28)
    w = ToleranceRandomized(model, 1e-3, 1.0, votes=4)
    a, b = w.predict(x, seed=3), w.predict(x, seed=3)
    assert torch.equal(a.tolerances, b.tolerances) and torch.equal(a.votes, b.votes)
    assert torch.equal(a.label, b.label)
    assert not torch.equal(w.predict(x, seed=4).tolerances, a.tolerances)
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(w.predict(x, seed=gen).tolerances, a.tolerances)
    # Two wrappers with the same seed draw the same forward tolerances; successive draws differ.
    w1, w2 = ToleranceRandomized(model, 1e-3, 1.0, seed=9), ToleranceRandomized(model, 1e-3, 1.0, seed=9)
    with torch.no_grad():
        z1, z2 = w1(x), w2(x)
    assert torch.equal(z1, z2) and w1.last_tol == w2.last_tol
    first = w1.last_tol
    with torch.no_grad():
        w1(x)
    assert w1.last_tol != first
    # forward = the logits of the one tolerance it drew, and it is differentiable.
    xr = x.clone().requires_grad_(True)
    z = w1(xr)
    assert 1e-3 <= w1.last_tol <= 1.0
    assert torch.allclose(z, w1.logits_at(x, w1.last_tol), atol=1e-6)
    (g,) = torch.autograd.grad(z[:, 0].sum(), xr)
    assert float(g.abs().sum()) > 0
    assert model.solver == SolverConfig.adaptive("dopri5", 1e-3)


def test_tolerances_are_log_uniform_within_bounds() -> None:
    w = ToleranceRandomized(ThresholdModel(), 1e-5, 1e-1)
    tau = w.sample_tolerances(4000, seed=0)
    assert tau.dtype == torch.float64 and float(tau.min()) >= 1e-5 and float(tau.max()) <= 1e-1
    logs = tau.log10()
    assert abs(float(logs.mean()) + 3.0) < 0.06  # log10 τ ~ U[-5, -1]
    assert abs(float((tau < 1e-3).double().mean()) - 0.5) < 0.03
    assert abs(float((tau < 1e-4).double().mean()) - 0.25) < 0.03


def test_solver_restored_after_a_failed_pass() -> None:
    model = _tiny_ode()
    w = ToleranceRandomized(model, 1e-4, 1e-1)
    with pytest.raises(ModelInputError):
        w(torch.rand(2, 3, 28, 28))
    with pytest.raises(ModelInputError):
        w.predict(torch.rand(2, 1, 20, 20))
    assert model.solver == SolverConfig.adaptive("dopri5", 1e-3)


def test_attacks_do_not_import_models() -> None:
    # the architecture's dependency direction: models may use attacks, never the reverse
    code = "import sys, attacks; print(any(m == 'models' or m.startswith('models.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_zoo_ode_chen_accuracy_is_kept_under_randomization() -> None:
    model = zoo.load("ode-chen")
    x, y = load_dataset("mnist-t10k", split="test")
    x, y = x[:50], y[:50]
    with torch.no_grad():
        plain = float((model(x).argmax(1) == y).double().mean())
    r = ToleranceRandomized(model, votes=5).predict(x, seed=0)
    voted = float((r.top_class == y).double().mean())
    accepted = float(r.accepted.double().mean())
    assert plain >= 0.94
    assert abs(voted - plain) <= 0.04, (plain, voted)
    assert accepted >= 0.94
    # Accepted labels are the plurality class; rejected ones are -1.
    assert torch.equal(r.label[r.accepted], r.top_class[r.accepted])
    assert bool((r.label[~r.accepted] == REJECT).all())
    assert float(r.tolerances.min()) >= 1e-5 and float(r.tolerances.max()) <= 1e-1


@pytest.mark.parametrize("kwargs, match", [
    ({"low": 1e-1, "high": 1e-1}, "low < high"),
    ({"low": 1e-1, "high": 1e-3}, "low < high"),
    ({"low": 0.0, "high": 1e-3}, "low < high"),
    ({"low": math.nan}, "low < high"),
    ({"low": "a"}, "numbers"),
    ({"votes": 0}, "votes"),
    ({"votes": True}, "votes"),
    ({"votes": 5, "v_min": 5}, "v_min"),
    ({"votes": 5, "v_min": -1}, "v_min"),
    ({"votes": 5, "v_min": 2.5}, "v_min"),
    ({"method": "rk4"}, "adaptive"),
    ({"seed": "x"}, "seed"),
])
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(RandomizationError, match=match):
        ToleranceRandomized(_tiny_ode(), **kwargs)


def test_wrong_models_raise_and_fixed_step_models_need_an_adaptive_method() -> None:
    with pytest.raises(RandomizationError, match="ODE net"):
        ToleranceRandomized(LeNet5())
    with pytest.raises(RandomizationError, match="ODE net"):
        ToleranceRandomized(lambda x: x)  # type: ignore[arg-type]
    fixed = ODENet(channels=4, solver=SolverConfig.fixed("rk4", 4))
    with pytest.raises(RandomizationError, match="adaptive"):
        ToleranceRandomized(fixed)
    w = ToleranceRandomized(fixed, method="dopri5")
    with torch.no_grad():
        w(torch.rand(2, 1, 28, 28))
    assert w.nfe > 0 and fixed.solver == SolverConfig.fixed("rk4", 4)
    with pytest.raises(RandomizationError, match="count"):
        w.sample_tolerances(0)
    assert issubclass(RandomizationError, ValueError)
