"""Invariants every attack must keep: ε-ball, [0, 1], ε = 0 no-op, monotone accuracy, model untouched."""

from __future__ import annotations

import math

import pytest
import torch

from attacks import CW, DI2FGSM, FGM, FGSM, PGD, AttackError, BoundaryAttack, LpBall, UnknownNormError
from models import MLP


def _mlp(seed: int = 0) -> tuple[MLP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = MLP(hidden=(32,), input_size=8).eval()
    x = torch.rand(40, 1, 8, 8)
    x[:5] = 0.0
    x[5:10] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _attacks(model: MLP, eps: float) -> list:
    return [FGSM(model, eps), FGM(model, eps * 4), PGD(model, eps, steps=5), PGD(model, eps * 4, "2", steps=5),
            PGD(model, eps, steps=4, output="last"),
            PGD(model, eps, steps=3, restarts=2, output="last", loss="margin"),
            DI2FGSM(model, eps, steps=4, momentum=1.0), CW(model, eps * 4, steps=10, binary_search_steps=2),
            BoundaryAttack(model, eps * 4, max_queries=60)]


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3])
def test_ball_and_box_always_hold(eps: float) -> None:
    model, x, y = _mlp()
    for attack in _attacks(model, eps):
        r = attack(x, y)
        assert r.x_adv.shape == x.shape
        assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
        bound = eps * (1 if attack.norm == "inf" else 4)
        assert float(r.norms().max()) <= bound + 1e-6, type(attack).__name__
        if eps == 0.0:
            assert torch.equal(r.x_adv, x), type(attack).__name__


def test_per_example_eps() -> None:
    model, x, y = _mlp()
    eps = torch.linspace(0, 0.2, x.shape[0])
    r = PGD(model, eps, steps=3)(x, y)
    assert bool((r.linf <= eps + 1e-6).all())


def test_accuracy_non_increasing_in_eps() -> None:
    model, x, y = _mlp(1)
    accs = [float((~PGD(model, e, steps=10, seed=0)(x, y).success).float().mean())
            for e in (0.0, 0.02, 0.05, 0.1, 0.2)]
    assert all(b <= a for a, b in zip(accs, accs[1:])), accs
    assert accs[0] == 1.0 and accs[-1] < accs[1]


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_unbounded_pgd_reaches_100_percent(norm: str) -> None:
    model, x, y = _mlp(2)
    assert PGD(model, math.inf, norm, steps=30, loss="margin")(x, y).success_rate == 1.0


def test_model_mode_and_parameters_untouched() -> None:
    model, x, y = _mlp()
    model.train()
    model.net[1].eval()  # mixed per-module modes must survive
    model.net[1].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    for attack in _attacks(model, 0.1):
        attack(x, y)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_same_seed_same_result() -> None:
    model, x, y = _mlp()
    a = PGD(model, 0.1, steps=3, seed=7)(x, y).x_adv
    b = PGD(model, 0.1, steps=3, seed=7)(x, y).x_adv
    c = PGD(model, 0.1, steps=3, seed=8)(x, y).x_adv
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_arguments_raise_clear_errors() -> None:
    model, x, y = _mlp()
    with pytest.raises(AttackError, match="eps must be >= 0"):
        PGD(model, -0.1)
    with pytest.raises(UnknownNormError, match="unknown norm"):
        PGD(model, 0.1, norm="1.5")
    with pytest.raises(AttackError, match="supports norm"):
        CW(model, norm="inf")
    with pytest.raises(AttackError, match="steps must be an integer"):
        PGD(model, 0.1, steps=0)
    with pytest.raises(AttackError, match="unknown loss"):
        FGSM(model, 0.1, loss="hinge")
    attack = FGSM(model, 0.1)
    with pytest.raises(AttackError, match="shape"):
        attack(x[:, 0], y)
    with pytest.raises(AttackError, match="model expects"):
        attack(torch.rand(4, 1, 9, 9), y[:4])
    with pytest.raises(AttackError, match=r"\[0, 1\]"):
        attack(x * 2, y)
    with pytest.raises(AttackError, match="NaN"):
        attack(torch.full_like(x, math.nan), y)
    with pytest.raises(AttackError, match="y must have shape"):
        attack(x, y[:-1])
    with pytest.raises(AttackError, match="labels must lie"):
        attack(x, torch.full_like(y, 10))
    with pytest.raises(AttackError, match="per-example values"):
        PGD(model, torch.full((3,), 0.1))(x, y)
    with pytest.raises(ValueError):
        LpBall("inf", math.nan)
