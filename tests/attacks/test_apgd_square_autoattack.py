"""APGD, Square and AutoAttack: analytic optima, ε-ball and box, the ensemble's monotonicity, gradient masking."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from attacks import APGD, APGDT, AutoAttack, Square, evaluate, minimal_eps
from attacks.apgd import checkpoints, dlr_loss
from attacks.base import AttackError
from attacks.square import p_schedule
from models import MLP
from verify.cli import main


def test_apgd_checkpoints_follow_the_paper() -> None:
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_loss_is_shift_and_scale_invariant_and_positive_when_misclassified() -> None:
    z = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.0, 0.5]])
    y = torch.tensor([0, 0])
    base = dlr_loss(z, y)
    assert torch.allclose(dlr_loss(5 * z + 7, y), base)
    assert float(base[0]) < 0 < float(base[1])
    assert torch.allclose(base, torch.tensor([-(3 - 1) / (3 - 0.5), (2 - 0) / (2 - 0.5)]))
    with pytest.raises(AttackError, match="at least 3 classes"):
        dlr_loss(z[:, :2], y)


def test_apgd_reaches_the_analytic_optimum_on_a_linear_classifier(linear) -> None:
    model, x, y, r_inf, r_2 = linear(seed=1)
    for norm, r in (("inf", r_inf), ("2", r_2)):
        above = APGD(model, r * 1.001, norm, steps=20, seed=2)(x, y)
        assert bool(above.success.all()), norm
        assert not bool(APGD(model, r * 0.999, norm, steps=20, seed=2)(x, y).success.any()), norm
        assert bool((above.norms() <= r * 1.001 + 1e-6).all())


def test_apgd_t_reaches_the_optimum_over_ten_classes(linear) -> None:
    # With 10 classes the nearest wrong class is not the one the untargeted loss climbs towards;
    # the targeted runs at the top classes find it.
    model, x, y, r_inf, r_2 = linear(seed=4, n=24, classes=10)
    for norm, r in (("inf", r_inf), ("2", r_2)):
        assert bool(APGDT(model, r * 1.001, norm, steps=20)(x, y).success.all()), norm
        assert not bool(APGDT(model, r * 0.999, norm, steps=20)(x, y).success.any()), norm


def test_minimal_eps_with_apgd_t_finds_the_analytic_radius(linear) -> None:
    model, x, y, r_inf, _ = linear(seed=5, n=12, classes=10)
    res = minimal_eps(model, x, y, "inf", "apgd-t", eps_max=0.5, tol=1e-3, steps=10)
    assert bool(((res.eps - r_inf).abs() <= 1e-3).all()) and bool((res.eps >= r_inf * (1 - 1e-4)).all())


def test_square_schedule_halves_p_at_the_rescaled_query_counts() -> None:
    assert p_schedule(0.8, 0, 10000) == 0.8 and p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 9000, 10000) == 0.8 / 512
    assert p_schedule(0.8, 11, 1000) == p_schedule(0.8, 110, 10000) == 0.2


def _mlp(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = MLP(hidden=(32,), input_size=12).eval()
    x = torch.rand(24, 1, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("norm, eps", [("inf", 0.15), ("2", 2.5)])
def test_square_succeeds_on_an_undefended_model_and_stays_in_the_ball(norm: str, eps: float) -> None:
    model, x, y = _mlp()
    attack = Square(model, eps, norm, queries=400, seed=1)
    # the algorithm's own output, before the template projects it: already in the ball and the box
    attack._queries = torch.zeros(x.shape[0], dtype=torch.long)  # the template's per-call counter
    raw = attack._perturb(x, y)
    dist = (raw - x).flatten(1).abs().amax(1) if norm == "inf" else (raw - x).flatten(1).norm(dim=1)
    assert float(dist.max()) <= eps * (1 + 1e-5) and float(raw.min()) >= 0 and float(raw.max()) <= 1
    res = attack(x, y)
    assert res.success_rate >= 0.95, res.summary()
    assert float(res.norms().max()) <= eps * (1 + 1e-6)
    assert int(res.queries.max()) <= 400


def test_autoattack_is_never_less_successful_than_any_member_alone() -> None:
    model, x, y = _mlp(seed=3)
    eps = 0.04
    aa = AutoAttack(model, eps, steps=15, queries=200, targets=3, seed=0)
    robust_aa = float((~aa(x, y).success).float().mean())
    members = [APGD(model, eps, steps=15, seed=0), APGDT(model, eps, steps=15, targets=3, seed=0),
               Square(model, eps, queries=200, seed=0)]
    robust = [float((~m(x, y).success).float().mean()) for m in members]
    assert 0 < min(robust) < 1, robust  # a budget where the members do not all agree trivially
    assert robust_aa <= min(robust), (robust_aa, robust)
    runs = aa.members_last
    assert [r.name for r in runs][0] == "apgd-ce" and runs[0].attacked == x.shape[0]
    assert all(b.attacked == a.attacked - a.broken for a, b in zip(runs, runs[1:]))


class _StepLinear(nn.Module):
    """A step function in front of a linear layer: zero input gradient everywhere (gradient masking)."""

    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 0 * x keeps the graph: the input gradient exists and is exactly zero
        return self.linear((x.flatten(1) > 0.5).float() + 0 * x.flatten(1))


def test_gradient_masked_model_is_broken_by_square_and_flagged() -> None:
    model = _StepLinear().eval()
    torch.manual_seed(1)
    x = 0.5 + 0.1 * (2 * torch.rand(32, 1, 8, 8) - 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.12  # every pixel can cross the step
    square = Square(model, eps, queries=300, seed=0)(x, y)
    white = APGD(model, eps, steps=20, seed=0, loss="ce")
    assert square.success_rate >= 0.9, square.summary()
    report = evaluate(model, x, y, white, check_n=16)
    assert report.robust_accuracy > 1 - square.success_rate  # the white-box attack is fooled by the zero gradients
    failed = report.failed_checks
    assert "gradient_health" in failed and "white_vs_black_box" in failed, report.summary()


def _have_zoo() -> bool:
    from models.zoo import available

    root = os.environ.get("ODE_ROBUSTNESS_DATA")
    return bool(root) and Path(root, "mnist").exists() and "lenet5" in available()


@pytest.mark.skipif(not _have_zoo(), reason="needs ODE_ROBUSTNESS_DATA and the lenet5 zoo checkpoint")
def test_cli_autoattack_reports_members_and_queries(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "aa.json"
    code = main(["attack", "--model", "lenet5", "--attack", "autoattack", "--eps", "0.3", "--n", "12",
                 "--steps", "5", "--no-checks", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "autoattack Linf eps=0.3" in text and "member apgd-ce" in text and "queries/example" in text
    rep = json.loads(out.read_text())
    assert rep["attack"] == "autoattack" and rep["robust_accuracy"] <= rep["clean_accuracy"]
    assert rep["mean_queries"] > 0 and not math.isnan(rep["robust_accuracy"])


@pytest.mark.parametrize("argv, needle", [
    (["attack", "--model", "lenet5", "--attack", "apgd", "--eps", "0.1", "--version", "rand"], "autoattack only"),
    (["attack", "--model", "lenet5", "--attack", "autoattack", "--eps", "0.1", "--eot", "5"], "needs --version rand"),
    (["attack", "--model", "lenet5", "--attack", "square", "--eps", "0.1", "--restarts", "2"], "does not apply"),
])
def test_cli_bad_options_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
