"""FAB and FAB-T: exact projections against LP / exhaustive QP, analytic minimal distances, AutoAttack with FAB-T."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from attacks import APGD, APGDT, ATTACKS, FAB, FABT, AutoAttack, Square, minimal_eps, with_solver
from attacks._fab_projection import project_onto_hyperplane_box
from attacks.base import AttackError, margin
from models import MLP, ODENet, SolverConfig
from verify.cli import main


def _planes(seed: int, m: int, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points in the box and hyperplanes through random box points (the box often binds: large |w| spread)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(m, d, generator=g, dtype=torch.float64)
    w = torch.randn(m, d, generator=g, dtype=torch.float64) * torch.rand(m, d, generator=g, dtype=torch.float64) ** 3
    b = (w * torch.rand(m, d, generator=g, dtype=torch.float64)).sum(1)
    return z, w, b


def _linf_lp(z: np.ndarray, w: np.ndarray, b: float) -> float | None:
    """min t s.t. |δ_i| <= t, <w, δ> = b − <w, z>, 0 <= z + δ <= 1, by HiGHS (None: infeasible)."""
    d = z.size
    eye = np.eye(d)
    a_ub = np.block([[eye, -np.ones((d, 1))], [-eye, -np.ones((d, 1))]])
    res = linprog(np.r_[np.zeros(d), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0.0][None],
                  b_eq=[b - w @ z], bounds=[(-zi, 1 - zi) for zi in z] + [(0, None)], method="highs")
    return float(res.fun) if res.status == 0 else None


def _l2_exhaustive(z: np.ndarray, w: np.ndarray, b: float) -> np.ndarray | None:
    """The minimal-‖δ‖₂ feasible point over every active set (each coordinate at its lower bound, upper
    bound or free; free coordinates δ_F = μ w_F solve the equality), or None when infeasible."""
    c = b - w @ z
    best, best_norm = None, np.inf
    for state in itertools.product((-1, 0, 1), repeat=z.size):
        s = np.array(state)
        delta = np.where(s < 0, -z, np.where(s > 0, 1 - z, 0.0))
        free = s == 0
        rest = c - w[~free] @ delta[~free]
        wf = w[free]
        if wf @ wf > 1e-14:
            delta[free] = rest / (wf @ wf) * wf
        elif abs(rest) > 1e-12:
            continue
        if np.all(z + delta >= -1e-12) and np.all(z + delta <= 1 + 1e-12) and abs(w @ delta - c) < 1e-9:
            if np.linalg.norm(delta) < best_norm:
                best, best_norm = delta, np.linalg.norm(delta)
    return best


def test_linf_projection_matches_the_lp_optimum() -> None:
    z, w, b = _planes(0, 60, 7)
    delta = project_onto_hyperplane_box(z, w, b, "inf")
    feasible = 0
    for i in range(z.shape[0]):
        t = _linf_lp(z[i].numpy(), w[i].numpy(), float(b[i]))
        if t is None:
            continue
        feasible += 1
        assert abs(float(delta[i].abs().max()) - t) <= 1e-9, i
        assert abs(float((w[i] * (z[i] + delta[i])).sum() - b[i])) <= 1e-9
    assert feasible >= 40
    assert float((z + delta).min()) >= 0 and float((z + delta).max()) <= 1


def test_l2_projection_equals_the_exhaustive_qp_solution() -> None:
    z, w, b = _planes(1, 60, 4)
    delta = project_onto_hyperplane_box(z, w, b, "2")
    bound_active = 0
    for i in range(z.shape[0]):
        truth = _l2_exhaustive(z[i].numpy(), w[i].numpy(), float(b[i]))
        if truth is None:
            continue
        assert np.allclose(delta[i].numpy(), truth, atol=1e-9), (i, delta[i], truth)
        unclipped = (float(b[i] - w[i] @ z[i]) / float(w[i] @ w[i])) * w[i]
        bound_active += int(not torch.allclose(delta[i], unclipped))
    assert bound_active >= 10  # the box really binds in many of the cases


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_unreachable_hyperplane_gives_the_nearest_box_corner(norm: str) -> None:
    z = torch.tensor([[0.2, 0.7, 0.5]])
    w = torch.tensor([[1.0, -2.0, 0.0]])
    delta = project_onto_hyperplane_box(z, w, torch.tensor([50.0]), norm)
    assert torch.allclose(delta, torch.tensor([[0.8, -0.7, 0.0]]))


@pytest.mark.parametrize("cls", [FAB, FABT])
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_fab_finds_the_analytic_minimal_distance_of_a_linear_classifier(linear, cls: type, norm: str) -> None:
    model, x, y, r_inf, r_2 = linear(seed=4, n=24, classes=10)
    r = r_inf if norm == "inf" else r_2
    res = cls(model, norm=norm, steps=20, seed=0)(x, y)
    assert bool(res.success.all())
    ratio = res.norms() / r
    assert float(ratio.max()) <= 1.01 and float(ratio.min()) >= 1 - 1e-4, ratio
    # at a fixed ε: broken exactly where ε exceeds the analytic radius (by 1 %)
    assert bool(cls(model, r * 1.01, norm, steps=20)(x, y).success.all())
    assert not bool(cls(model, r * 0.99, norm, steps=20)(x, y).success.any())


def _mlp(seed: int = 0, n: int = 24) -> tuple[MLP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = MLP(hidden=(32,), input_size=12).eval()
    x = torch.rand(n, 1, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("norm, eps", [("inf", 0.08), ("2", 0.75)])
def test_fab_adversarials_misclassify_and_respect_the_box_and_the_ball(norm: str, eps: float) -> None:
    model, x, y = _mlp(seed=2)
    for attack in (FAB(model, norm=norm, steps=30, restarts=2), FABT(model, eps, norm, steps=30, targets=4)):
        res = attack(x, y)
        with torch.no_grad():
            assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
        assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
        assert bool((res.norms() <= attack.ball.eps * (1 + 1e-6)).all()) if attack.ball.bounded else True
        assert res.success_rate >= 0.5, res.summary()
        assert int(res.queries.min()) > 0 and res.iterations > 0


def test_fab_restarts_never_lengthen_the_perturbation() -> None:
    model, x, y = _mlp(seed=5)
    one = FAB(model, norm="inf", steps=20, restarts=1, seed=0)(x, y)
    three = FAB(model, norm="inf", steps=20, restarts=3, seed=0)(x, y)
    found = one.success & three.success
    assert bool(found.any()) and bool((three.linf[found] <= one.linf[found] + 1e-7).all())


def test_final_search_shortens_and_keeps_a_strict_margin() -> None:
    model, x, y = _mlp(seed=5)
    plain = FAB(model, norm="2", steps=20, final_search=0)(x, y)
    searched = FAB(model, norm="2", steps=20, final_search=3)(x, y)
    assert torch.equal(plain.success, searched.success) and bool(plain.success.all())
    assert bool((searched.l2 <= plain.l2 + 1e-6).all()) and float((plain.l2 - searched.l2).max()) > 0
    with torch.no_grad():
        assert bool((margin(model(searched.x_adv), y) > 0).all())


def test_fab_scores_with_the_eval_solver() -> None:
    torch.manual_seed(0)
    model = ODENet(channels=4, solver=SolverConfig.adaptive("dopri5", 1e-3)).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    surrogate, scorer = SolverConfig.fixed("euler", 2), SolverConfig.fixed("rk4", 3)
    res = FABT(model, 0.3, steps=3, targets=2, attack_solver=surrogate, eval_solver=scorer)(x, y)
    with torch.no_grad(), with_solver(model, scorer):
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    assert model.solver == SolverConfig.adaptive("dopri5", 1e-3) and res.nfe > 0


def test_bad_fab_arguments_are_refused() -> None:
    model, _, _ = _mlp()
    for kwargs, needle in (({"alpha_max": 1.5}, "alpha_max"), ({"beta": 0.0}, "beta"), ({"eta": 0.5}, "eta"),
                           ({"steps": 0}, "steps"), ({"final_search": -1}, "final_search")):
        with pytest.raises(AttackError, match=needle):
            FAB(model, **kwargs)
    with pytest.raises(AttackError, match="targets >= 1"):
        FABT(model, targets=0)


def test_autoattack_with_fab_t_is_never_less_successful_than_any_member_alone() -> None:
    model, x, y = _mlp(seed=3)
    eps = 0.04
    aa = AutoAttack(model, eps, steps=15, queries=200, targets=3, seed=0)
    robust_aa = float((~aa(x, y).success).float().mean())
    members = [APGD(model, eps, steps=15, seed=0), APGDT(model, eps, steps=15, targets=3, seed=0),
               FABT(model, eps, steps=15, targets=3, seed=0), Square(model, eps, queries=200, seed=0)]
    robust = [float((~m(x, y).success).float().mean()) for m in members]
    assert 0 < min(robust) < 1, robust
    assert robust_aa <= min(robust), (robust_aa, robust)
    assert [r.name for r in aa.members_last][:2] == ["apgd-ce", "apgd-t"]
    assert "fab-t" in [m for m, _ in aa.members()][2]


def test_minimal_eps_with_fab_t_finds_the_analytic_radius(linear) -> None:
    model, x, y, r_inf, _ = linear(seed=5, n=12, classes=10)
    res = minimal_eps(model, x, y, "inf", "fab-t", eps_max=0.5, tol=1e-3, steps=10)
    assert bool(((res.eps - r_inf).abs() <= 1e-3 + 0.01 * r_inf).all()) and bool((res.eps >= r_inf * (1 - 1e-4)).all())


def test_cli_names() -> None:
    assert ATTACKS["fab"] is FAB and ATTACKS["fab-t"] is FABT


def _have_zoo() -> bool:
    from models.zoo import available

    root = os.environ.get("ODE_ROBUSTNESS_DATA")
    return bool(root) and Path(root, "mnist").exists() and "lenet5" in available()


@pytest.mark.skipif(not _have_zoo(), reason="needs ODE_ROBUSTNESS_DATA and the lenet5 zoo checkpoint")
def test_cli_attack_fab(capsys: pytest.CaptureFixture) -> None:
    code = main(["attack", "--model", "lenet5", "--attack", "fab", "--eps", "0.3", "--n", "8", "--steps", "5",
                 "--no-checks"])
    assert code == 0
    assert "fab Linf eps=0.3" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["attack", "--model", "lenet5", "--attack", "fab", "--eps", "0.1", "--step-size", "0.1"], "does not apply"),
    (["attack", "--model", "lenet5", "--attack", "fab-t", "--eps", "0.1", "--eot", "3"], "gradient attack"),
    (["attack", "--model", "lenet5", "--attack", "fab", "--norm", "1"], "invalid choice"),
])
def test_cli_bad_fab_options_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
