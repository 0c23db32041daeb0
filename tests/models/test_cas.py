"""The controlled adaptive solver (models/cas.py), its SolverConfig kind and GAINS's models.

Facts checked: steps on the grid h0·2^k up to the clip; the error of a linear ODE (exact by
expm) within the tolerance's order; each branch of the rule and both fallbacks; a batch equal to
its examples one at a time; gradients; our forward equal to GAINS's own (a fixture of its logits,
and, slow, its code run as a subprocess).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from models import ODEBlock, ODENet, SolverConfig, SolverConfigError
from models.cas import (ACCEPT, ACCEPT_DOUBLE, REJECT, CASError, CASRule, decide, error_ratio, initial_step,
                        integrate, next_step, running_mean)

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gains_logits.json"
GAINS_MNIST = ROOT.parent / "shared" / "peers" / "gains" / "models" / "pre-trained" / "MNIST"

A = torch.tensor([[-1.0, 2.0, 0.0], [-2.0, -1.0, 0.5], [0.0, -0.5, -0.3]], dtype=torch.float64)


def linear(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y @ A.T


def exact(y0: torch.Tensor, T: float) -> torch.Tensor:
    return y0 @ torch.linalg.matrix_exp(T * A).T


Y0 = torch.tensor([[1.0, 0.0, 2.0], [3.0, 1.0, -1.0], [10.0, -4.0, 0.5]], dtype=torch.float64)


def _on_grid(h: float, h0: float) -> bool:
    k = math.log2(h / h0)
    return abs(k - round(k)) < 1e-12


@pytest.mark.parametrize("h0,atol,T", [(0.25, 1e-4, 2.0), (0.1845, 5e-3, 1.0), (0.7, 1e-6, 1.3)])
def test_steps_on_grid_until_clip(h0: float, atol: float, T: float) -> None:
    rule = CASRule("dopri5", atol=atol, h0=h0, T=T, min_step=1e-4)
    _, steps, _ = integrate(linear, Y0, rule)
    for seq in steps:
        off = [i for i, s in enumerate(seq) if not _on_grid(s.h, h0)]
        times = [s.t for s in seq]
        assert all(b >= a for a, b in zip(times, times[1:]))
        if off:  # the first off-grid step is the clip to T; later ones are its halvings
            first = seq[off[0]]
            assert first.t + first.h == pytest.approx(T, abs=1e-12)
            assert all(_on_grid(s.h, first.h) and s.h <= first.h for s in seq[off[0]:])
        taken = sum(s.h for s in seq if s.decision != REJECT)
        assert taken == pytest.approx(T, abs=1e-12)


def test_linear_ode_error_within_tolerance_order() -> None:
    errors = []
    for atol in (1e-3, 1e-5, 1e-7):
        rule = CASRule("dopri5", atol=atol, h0=0.5, T=2.0, min_step=1e-6)
        y, steps, _ = integrate(linear, Y0, rule)
        err = (y - exact(Y0, 2.0)).abs().sum(1)
        n_acc = torch.tensor([sum(s.decision != REJECT for s in seq) for seq in steps], dtype=torch.float64)
        # every accepted step's estimated local error is <= atol (L1); the global error is at
        # most their sum, amplified by the flow's growth e^{||A||_1 T}
        assert (err <= atol * n_acc * math.exp(float(A.abs().sum(0).max()) * 2.0)).all()
        errors.append(float(err.max()))
    assert errors[0] > errors[1] > errors[2] > 0


def test_decide_thresholds() -> None:
    r = torch.tensor([0.0, 2.0 ** -5, 2.0 ** -5 * 1.0001, 1.0, 1.0001, float("nan"), float("inf")])
    assert decide(r, 5).tolist() == [ACCEPT_DOUBLE, ACCEPT_DOUBLE, ACCEPT, ACCEPT, REJECT, REJECT, REJECT]
    assert decide(torch.tensor([0.1, 0.2]), 3).tolist() == [ACCEPT_DOUBLE, ACCEPT]


def test_error_ratio_is_gains_l1_norm_and_relative() -> None:
    err = torch.tensor([[0.1, -0.2], [0.0, 0.3]])
    y = torch.tensor([[1.0, -4.0], [2.0, 0.0]])
    assert error_ratio(y, y, err, 0.1, 0.0).tolist() == pytest.approx([3.0, 3.0])
    # rtol scales each entry by atol + rtol * max(|y|, |y_new|)
    assert error_ratio(y, 2 * y, err, 0.1, 0.5).tolist() == pytest.approx([0.1 / 1.1 + 0.2 / 4.1, 0.3 / 0.1])


def test_three_branches_in_one_solve() -> None:
    rule = CASRule("dopri5", atol=1e-4, h0=1.0, T=3.0)
    _, steps, _ = integrate(linear, Y0[:1], rule)
    seq = steps[0]
    assert {s.decision for s in seq} == {REJECT, ACCEPT, ACCEPT_DOUBLE}
    for s, nxt in zip(seq, seq[1:]):
        if s.decision == REJECT:
            assert (nxt.t, nxt.h) == (s.t, s.h / 2)
        else:
            assert nxt.t == pytest.approx(s.t + s.h)
            want = s.h * (2 if s.decision == ACCEPT_DOUBLE else 1)
            assert nxt.h == pytest.approx(min(want, 3.0 - nxt.t))


def test_min_step_fallback_accepts_everything_after() -> None:
    rule = CASRule("dopri5", atol=1e-12, h0=0.03, T=0.1)
    _, steps, nfe = integrate(linear, Y0[:1], rule)
    seq = steps[0]
    assert seq[0].decision == REJECT and (seq[1].t, seq[1].h) == (0.0, 0.03)  # 0.015 < min_step: give up
    assert all(s.decision == ACCEPT for s in seq[1:])
    assert [round(s.h, 12) for s in seq[1:]] == [0.03, 0.03, 0.03, 0.01]
    assert nfe == [1 + 6 * len(seq)]  # dopri5 is first-same-as-last: 6 new stages per step


def test_next_step_clip_and_rejections_after_clip() -> None:
    rule = CASRule("dopri5", h0=0.25, T=1.0, clip_rejects=1)
    assert next_step(rule, 0.5, 0.25, ACCEPT_DOUBLE, 0) == (0.75, 0.25, 1, False)  # 0.5 clipped to T - 0.75
    # after the clip a rejection halves below min_step; the second one gives up
    assert next_step(rule, 0.9, 0.1, REJECT, 1) == (0.9, 0.05, 2, False)
    assert next_step(rule, 0.9, 0.05, REJECT, 2) == (0.9, 0.05, 3, True)
    assert next_step(rule, 0.0, 0.03, REJECT, 0) == (0.0, 0.03, 0, True)
    assert next_step(rule, 0.0, 0.05, REJECT, 0) == (0.0, 0.025, 0, False)
    assert next_step(rule, 0.5, 0.25, REJECT, 0, forced=True) == (0.75, 0.25, 0, True)  # fallback: accepted
    assert next_step(rule, 0.875, 0.125, ACCEPT, 0, forced=True) == (1.0, 0.0, 0, True)


def test_batch_equals_examples_one_at_a_time() -> None:
    rule = CASRule("bosh3", atol=1e-3, h0=0.4, T=1.5)
    y0 = torch.cat([Y0, 0.01 * Y0, 30 * Y0])
    y, steps, nfe = integrate(linear, y0, rule)
    assert len({tuple(s) for s in steps}) > 1  # the batch does not share one sequence
    for i in range(y0.shape[0]):
        yi, si, ni = integrate(linear, y0[i:i + 1], rule)
        assert torch.allclose(y[i], yi[0], rtol=0, atol=1e-12)
        assert si[0] == steps[i] and ni[0] == nfe[i]


def test_gradient_through_the_solve() -> None:
    lin = nn.Linear(3, 3).double()
    rule = CASRule("dopri5", atol=1e-3, h0=0.25, T=1.0)
    y0 = Y0[:2].clone().requires_grad_(True)
    _, steps, _ = integrate(lambda t, y: torch.tanh(lin(y)), y0, rule)
    assert torch.autograd.gradcheck(lambda v: integrate(lambda t, y: torch.tanh(lin(y)), v, rule)[0], (y0,))
    assert len(steps[0]) >= 2


def test_initial_step_and_running_mean() -> None:
    rule = CASRule("dopri5", atol=5e-3, T=1.0)
    h = initial_step(linear, Y0, rule)
    assert 0 < h <= 1.0
    assert running_mean(0.2, h) == pytest.approx(min(1.0, 0.18 + 0.1 * h))
    assert running_mean(0.99, 5.0) == 1.0
    with pytest.raises(CASError, match="h0"):
        integrate(linear, Y0, rule)  # a learned h0 needs one


def test_rule_validation() -> None:
    with pytest.raises(CASError, match="embedded pair"):
        CASRule("rk4")
    with pytest.raises(CASError, match="unknown tableau"):
        CASRule("nope")
    with pytest.raises(CASError):
        CASRule("dopri5", atol=0.0)
    assert CASRule("bosh3").order == 3 and CASRule("dopri5").order == 5


# ---- SolverConfig kind and ODE block -------------------------------------------------------------
def test_solver_config_cas_kind() -> None:
    s = SolverConfig.cas("dopri5", atol=0.005)
    assert s.is_cas and not s.is_fixed and s.rtol == 0 and s.step_size is None
    assert SolverConfig.adaptive("cas-dopri5", 0.005) == s
    assert SolverConfig.from_dict(s.to_dict()) == s
    assert s.describe() == "cas-dopri5 atol=0.005 rtol=0 h0=learned T=1"
    with pytest.raises(SolverConfigError):
        SolverConfig.cas("rk4")
    with pytest.raises(SolverConfigError):
        SolverConfig.cas("dopri5", h0=-0.1)
    with pytest.raises(SolverConfigError):
        SolverConfig(method="cas-dopri5", atol=0.005, rtol=0.0, adjoint=True)
    from models.cli_support import solver_spec

    assert solver_spec("cas-bosh3:0.01") == ("cas-bosh3", 0.01)


def test_odeblock_swaps_to_cas_and_records() -> None:
    torch.manual_seed(0)
    net = ODENet(channels=4, solver=SolverConfig.fixed("rk4", 4)).eval()
    x = torch.rand(3, 1, 28, 28)
    ref = net(x)
    net.solver = SolverConfig.cas("dopri5", atol=1e-6, h0=0.25)
    with net.block.recording():
        out = net(x)
    assert torch.allclose(out, ref, atol=1e-4)
    assert len(net.block.steps) == 3 and net.block.nfe >= max(net.block.nfe_per_example) > 1
    assert net.block.accepted_steps == [(s.t, s.h) for s in net.block.steps[0] if s.decision != REJECT]


def test_cli_swaps_a_zoo_model_to_cas(capsys: pytest.CaptureFixture[str]) -> None:
    from models.cli import main
    from models.zoo import available

    if "ode" not in available():
        pytest.skip("zoo model ode not trained")
    assert main(["eval", "ode", "--solver", "cas-dopri5:0.001", "--steps", "4", "--n", "20", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["solver"] == "cas-dopri5 atol=0.001 rtol=0 h0=0.25 T=1" and row["accuracy"] > 0.8
    assert main(["eval", "ode", "--solver", "cas-dopri5:0.001", "--n", "20"]) == 2  # no learned h0
    assert "has not learned its first step h0" in capsys.readouterr().err


def test_learned_h0_running_mean_in_training_and_eval() -> None:
    torch.manual_seed(0)
    block = ODEBlock(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh()), SolverConfig.cas("dopri5", atol=1e-2))
    h = torch.randn(4, 2, 5, 5)
    with pytest.raises(CASError, match="h0"):
        block.eval()(h)  # untrained: the running mean is 0
    block.train()
    block(h)
    first = float(block.running_mean_step)
    assert first > 0 and block.steps[0][0].h == pytest.approx(10 * first, rel=1e-6)  # 0.9·0 + 0.1·h
    block.eval()(h)
    assert block.steps[0][0].h == pytest.approx(first, rel=1e-6)


def test_learned_h0_survives_a_checkpoint(tmp_path: Path) -> None:
    from models.train import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    net = ODENet(channels=4, solver=SolverConfig.cas("bosh3", atol=1e-2))
    x = torch.rand(2, 1, 28, 28)
    net.train()(x)
    net.eval()
    back, _ = load_checkpoint(save_checkpoint(tmp_path / "cas", net, {}))
    assert float(back.block.running_mean_step) == float(net.block.running_mean_step) > 0
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


def test_cas_training_standard_and_pgd() -> None:
    from models.cli import make_adversary
    from models.train import Recipe, train

    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    net = ODENet(channels=4, solver=SolverConfig.cas("dopri5", atol=1e-2))
    recipe = Recipe(epochs=2, batch_size=8, seed=0, adv="pgd", adv_eps=0.1, adv_steps=2, adv_warmup=1)
    before = [p.detach().clone() for p in net.parameters()]
    res = train(net, x, y, recipe, adversary=make_adversary(recipe, 0), progress=False)
    assert all(math.isfinite(v) for v in res.epoch_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert float(net.block.running_mean_step) > 0


# ---- GAINS's models ------------------------------------------------------------------------------
def _gains_ckpt(target: str) -> Path:
    paths = sorted(GAINS_MNIST.glob(f"boxactivation_*target_{target}_*.pth.tar"))
    if not paths:
        pytest.skip(f"GAINS's released model (target {target}) is not in {GAINS_MNIST}")
    return paths[0]


def _gains_codes(steps: list) -> list[int]:
    from benchmarks.gains_reference import gains_codes

    return gains_codes(steps)


@pytest.mark.parametrize("key", ["box_0.11", "box_0.22"])
def test_forward_equals_gains_fixture(key: str) -> None:
    from models.zoo import resolve

    fixture = json.loads(FIXTURE.read_text())
    entry = fixture["models"][key]
    model, meta = resolve(f"gains:{_gains_ckpt(key.split('_')[1])}")
    assert meta["solver"] == "cas-dopri5 atol=0.005 rtol=0 h0=learned T=1"
    for row in entry["rows"]:
        dt = torch.float64 if row["dtype"] == "float64" else torch.float32
        m = model.to(dt)
        x = (torch.tensor(fixture["images"][str(row["index"])], dtype=dt) / 255.0).view(1, 1, 28, 28)
        with torch.no_grad():
            logits = m(x)[0]
        assert (logits - torch.tensor(row["logits"], dtype=dt)).abs().max() <= 1e-5
        steps = m.block.steps[0]
        assert [(s.t, s.h) for s in steps] == [pytest.approx((t, h), abs=1e-6) for t, h in row["states"]]
        assert _gains_codes(steps) == row["trajectory"]


def test_gains_model_saves_as_our_checkpoint(tmp_path: Path) -> None:
    from models.train import load_checkpoint, save_checkpoint
    from models.zoo import load

    model = load(f"gains:{_gains_ckpt('0.22')}")
    back, meta = load_checkpoint(save_checkpoint(tmp_path / "g", model, {}))
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert meta["arch"] == "gains" and torch.equal(back(x), model(x))


def test_gains_model_is_a_lowerable_chain() -> None:
    from verify._lower import lower

    from models.zoo import load

    model = load(f"gains:{_gains_ckpt('0.11')}")
    assert model.num_parameters() == 45_866
    model.solver = SolverConfig.fixed("rk4", 2)  # swappable: the chain lowers with a fixed grid
    ir = lower(model)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(ir.forward(x), model(x), atol=1e-4)


def test_gains_loader_errors(tmp_path: Path) -> None:
    from models.train import CheckpointError, NotACheckpointError
    from models.zoo import resolve

    with pytest.raises(CheckpointError, match="no GAINS checkpoint"):
        resolve(f"gains:{tmp_path / 'missing.pth.tar'}")
    plain = tmp_path / "plain.pth.tar"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(NotACheckpointError, match="not a GAINS checkpoint"):
        resolve(f"gains:{plain}")
    other = tmp_path / "other.pth.tar"
    torch.save({"state_dict": {"net.1.weight": torch.zeros(32, 1, 5, 5)}}, other)
    with pytest.raises(CheckpointError, match="net.1.bias"):
        resolve(f"gains:{other}")
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(NotACheckpointError):
        resolve(f"gains:{junk}")
    from models.cli import main

    assert main(["eval", f"gains:{tmp_path / 'missing.pth.tar'}", "--n", "2"]) == 2


@pytest.mark.slow
def test_forward_equals_gains_subprocess() -> None:
    from benchmarks.gains_reference import compare, gains_forward, mnist_pixels

    ckpt = _gains_ckpt("0.11")
    indices = [8010, 8011, 8012, 8013]
    rows = gains_forward(ckpt, indices)
    res = compare(rows, ckpt, dict(zip(indices, mnist_pixels(indices))))
    for name in ("float32", "float64"):
        assert res[name]["n"] == len(indices) and res[name]["same_step_sequence"] == len(indices)
        assert res[name]["max_abs_logit_diff"] <= 1e-5
