"""Certified training: the training bounds are the evaluation bounds, differentiable, and they train.

Facts a wrong implementation would violate: the IBP margins used in the loss equal
``verify.certify(..., method="ibp")`` (ODE-net with RK4 and a time channel, ResNet, CNN); the
gradient of the loss is the finite-difference gradient (float64); CROWN-IBP is sound and
at least as tight as IBP; a few batches lower the certified loss; a certified-trained
model's certificates survive per-margin PGD; a resumed run equals an uninterrupted one and a
resume under another certified recipe is refused; bad CLI input is one line and status 2.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from models import MLP, ODENet, ResNet, SolverConfig
from models.train import CheckpointError, Recipe, train
from tests.verify._margin_attack import min_margins
from verify import certify, lower
from verify._crown_ibp import crown_ibp_margins
from verify._ibp import ibp_margins
from verify.certified_training import CertConfig, CertifiedLoss, certified_loss, eps_at, ibp_init, worst_case_ce
from verify.cli import main


def _ode(size: int = 28, channels: int = 4, steps: int = 2, method: str = "rk4", classes: int = 10) -> ODENet:
    return ODENet(channels=channels, time_channel=True, solver=SolverConfig.fixed(method, steps),
                  input_size=size, num_classes=classes)


def _cnn() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 8, 3),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 10))
    net.input_shape, net.num_classes = (1, 28, 28), 10
    return net


def _blobs(n: int, size: int = 28, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is which of ``classes`` horizontal bands is bright, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.1 * torch.rand(n, 1, size, size, generator=g)
    band = size // classes
    for i in range(n):
        x[i, :, int(y[i]) * band:(int(y[i]) + 1) * band] += 0.8
    return x.clamp(0, 1), y


@pytest.mark.parametrize("make", [_ode, lambda: ResNet(channels=4, n_blocks=2, step=0.5, time_channel=True), _cnn],
                         ids=["ode-rk4-2-time", "resnet", "cnn"])
def test_training_ibp_bound_equals_evaluation_ibp(make) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([1, 4, 7])
    want = certify(model, x, y, 0.004, "inf", "ibp").lower
    got = ibp_margins(lower(model), x, y, 0.004)
    torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("loss", ["ibp", "crown-ibp"])
def test_certified_loss_gradient_matches_finite_differences(loss: str) -> None:
    torch.manual_seed(1)
    model = _ode(size=8, channels=2, steps=2, classes=3).double()
    x, y = torch.rand(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 2])
    names = ["block.field.conv1.conv.weight", "head.2.weight", "stem.0.bias"]
    params = dict(model.named_parameters())
    assert all(n in params for n in names)

    ws = tuple(params[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(lambda *w: _loss_with(model, dict(zip(names, w)), x, y, loss), ws,
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


def _loss_with(model: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               loss: str) -> torch.Tensor:
    """The certified loss with some parameters replaced (the IR's ops are the live modules)."""

    class _Loss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, xx: torch.Tensor) -> torch.Tensor:
            return certified_loss(self.model, xx, y, 0.02, loss)

    wrapper = _Loss()
    return torch.func.functional_call(wrapper, {f"model.{k}": v for k, v in weights.items()}, (x,), strict=False)


@pytest.mark.parametrize("make", [_ode, _cnn], ids=["ode-rk4-2-time", "cnn-maxpool"])
def test_crown_ibp_is_sound_and_tighter_than_ibp(make) -> None:
    torch.manual_seed(2)
    model = make().eval()
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 5])
    ir = lower(model)
    with torch.no_grad():
        ibp = ibp_margins(ir, x, y, 0.003)
        crown = crown_ibp_margins(ir, x, y, 0.003)
    assert (crown >= ibp - 1e-5).all()
    for i in range(2):
        attained = min_margins(model, x[i:i + 1], int(y[i]), 0.003, steps=20, restarts=1)
        assert (crown[i] <= attained + 1e-5).all()
    # at ε = 0 every relaxation is exact: the bound is the clean margin
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(crown_ibp_margins(ir, x, y, 0.0), ibp_margins(ir, x, y, 0.0), atol=1e-5, rtol=0)
        clean = torch.stack([logits[i, int(y[i])] - logits[i, [j for j in range(10) if j != int(y[i])]]
                             for i in range(2)])
    torch.testing.assert_close(ibp_margins(ir, x, y, 0.0).detach(), clean, atol=1e-4, rtol=0)


def test_eps_schedule_warms_up_then_ramps_smoothly_to_eps() -> None:
    cfg = CertConfig(eps=0.3, warmup_epochs=1, ramp_epochs=4)
    values = [eps_at(cfg, s, 10) for s in range(70)]
    assert values[:10] == [0.0] * 10 and values[10] > 0  # one clean epoch of 10 batches
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[49] == pytest.approx(0.3) and values[-1] == pytest.approx(0.3)
    slopes = [b - a for a, b in zip(values[10:49], values[11:50])]
    assert max(abs(b - a) for a, b in zip(slopes, slopes[1:])) < 0.3 / 40 * 0.5  # no kink at the mid point


def test_ibp_init_keeps_the_expected_interval_width_through_a_relu_layer() -> None:
    # Shi et al.: E[|W|·r] = fan_in·σ·√(2/π)·r = 2r, halved by a ReLU that is active half the time
    lin = nn.Linear(400, 400)
    ibp_init(lin, torch.Generator().manual_seed(0))
    assert float(lin.weight.abs().sum(1).mean()) == pytest.approx(2.0, rel=0.05) and float(lin.bias.abs().max()) == 0


def test_worst_case_ce_is_the_cross_entropy_of_the_worst_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    margins = logits[:, :1] - logits[:, 1:]
    torch.testing.assert_close(worst_case_ce(margins, torch.tensor([0])),
                               torch.nn.functional.cross_entropy(logits, torch.tensor([0])))


@pytest.mark.parametrize("loss", ["ibp", "crown-ibp", "mtl-ibp"])
def test_a_few_batches_lower_the_certified_loss(loss: str) -> None:
    torch.manual_seed(3)
    model = _ode(size=28, channels=4, steps=2, method="euler", classes=3)
    x, y = _blobs(64, classes=3)
    with torch.no_grad():
        before = float(certified_loss(model.eval(), x, y, 0.05))
    cfg = CertConfig(loss=loss, eps=0.05, warmup_epochs=0, ramp_epochs=0, kappa_start=0.0, kappa_end=0.0,
                     pgd_steps=2)
    train(model, x, y, Recipe(epochs=6, batch_size=32, lr=1e-2, schedule="constant", shift=0, grad_clip=10.0),
          loss_fn=CertifiedLoss(cfg), progress=False)
    with torch.no_grad():
        after = float(certified_loss(model.eval(), x, y, 0.05))
    assert after < 0.5 * before, (before, after)


def test_certified_trained_model_certificates_survive_per_margin_pgd() -> None:
    torch.manual_seed(4)
    model = MLP(hidden=(32,), num_classes=3, input_size=12)
    x, y = _blobs(96, size=12, classes=3, seed=1)
    cfg = CertConfig(loss="ibp", eps=0.1, warmup_epochs=1, ramp_epochs=3, kappa_end=0.0)
    train(model, x, y, Recipe(epochs=8, batch_size=32, lr=5e-3, schedule="constant", shift=0, grad_clip=10.0),
          loss_fn=CertifiedLoss(cfg), progress=False)
    xt, yt = _blobs(12, size=12, classes=3, seed=2)
    res = certify(model.eval(), xt, yt, 0.08, "inf", "ibp")
    assert res.certified.float().mean() >= 0.5  # training for the bound makes it non-vacuous
    for i in torch.nonzero(res.certified).flatten().tolist()[:6]:
        attained = min_margins(model, xt[i:i + 1], int(yt[i]), 0.08, steps=30, restarts=2)
        assert (attained >= res.lower[i] - 1e-5).all() and (attained > 0).all()


class _Stop(Exception):
    pass


class _Interrupt:
    """A loss hook that raises at the first batch of ``epoch`` (an interrupted run)."""

    def __init__(self, inner: CertifiedLoss, epoch: int) -> None:
        self.inner, self.epoch, self.recipe = inner, epoch, inner.recipe

    def __call__(self, model, x, y, step, steps_per_epoch):
        if step == self.epoch * steps_per_epoch:
            raise _Stop
        return self.inner(model, x, y, step, steps_per_epoch)


def test_resume_equals_uninterrupted_and_refuses_another_certified_recipe(tmp_path: Path) -> None:
    x, y = _blobs(48, size=12, classes=3, seed=5)
    recipe = Recipe(epochs=2, batch_size=16, lr=3e-3, shift=0, grad_clip=5.0, seed=7)
    cfg = CertConfig(loss="ibp", eps=0.05, warmup_epochs=0, ramp_epochs=2)

    def fresh() -> MLP:
        torch.manual_seed(0)
        return MLP(hidden=(16,), num_classes=3, input_size=12)

    full = fresh()
    train(full, x, y, recipe, loss_fn=CertifiedLoss(cfg), progress=False)
    part, state = fresh(), tmp_path / "run.resume.pt"
    with pytest.raises(_Stop):
        train(part, x, y, recipe, loss_fn=_Interrupt(CertifiedLoss(cfg), 1), resume_path=state, progress=False)
    resumed = fresh()
    res = train(resumed, x, y, recipe, loss_fn=CertifiedLoss(cfg), resume_path=state, progress=False)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=k)
    assert len(res.epoch_loss) == 2 and set(res.epoch_stats[0]) >= {"clean", "verified"}
    other = CertifiedLoss(dataclasses.replace(cfg, loss="crown-ibp"))
    with pytest.raises(CheckpointError, match="another recipe"):
        train(fresh(), x, y, recipe, loss_fn=other, resume_path=state, progress=False)


@pytest.mark.parametrize("argv, needle", [
    (["train", "--preset", "ode-cert-0.1", "--cert", "sabr"], "--cert"),
    (["train", "--preset", "ode-cert-0.1", "--cert-eps", "-0.1"], "--cert-eps"),
    (["train", "--preset", "no-such-preset"], "unknown preset"),
    (["train", "--preset", "ode-cert-0.1", "--n-train", "0"], "--n-train"),
    (["train", "--preset", "ode-cert-0.1", "--config", "chanels=8"], "chanels"),
    (["train", "--preset", "ode-cert-0.1", "--config", "channels"], "KEY=VALUE"),
    (["train", "--preset", "ode-cert-0.1", "--kappa-end", "1.5"], "kappa_end"),
    (["train", "--preset", "ode-cert-0.1", "--pgd-steps", "0"], "pgd_steps"),
    (["train", "--preset", "ode-cert-0.1", "--lr-steps", "100"], "lr_steps must be increasing epochs in 1..79"),
    (["train", "--preset", "ode-cert-0.1", "--lr-steps", "10", "--lr-step-factor", "2"], "lr_step_factor"),
])
def test_cli_bad_input_is_one_line_and_status_2(argv: list[str], needle: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_models_cli_refuses_a_certified_preset_naming_the_verify_command(capsys) -> None:
    from models.cli import main as models_main

    assert models_main(["train", "--preset", "ode-cert-0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "python -m verify train --preset ode-cert-0.1" in err


@pytest.mark.skipif(not (Path(os.environ.get("ODE_ROBUSTNESS_DATA", "/nonexistent")) / "mnist").exists(),
                    reason="MNIST not found (set ODE_ROBUSTNESS_DATA)")
def test_cli_trains_measures_and_saves(tmp_path: Path, capsys) -> None:
    import json

    out = tmp_path / "tiny-0.1"  # a dotted stem keeps its name
    argv = ["train", "--preset", "lenet5-cert-0.1", "--epochs", "1", "--n-train", "64", "--n-eval", "20",
            "--warmup-epochs", "0", "--ramp-epochs", "1", "--batch-size", "32", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "tiny-0.1.json").read_text())
    assert meta["cert_recipe"]["loss"] == "ibp" and meta["certified_accuracy"]["method"] == "ibp"
    assert 0 <= meta["certified_accuracy"]["accuracy"] <= meta["held_out_accuracy"] <= 1
    assert (tmp_path / "tiny-0.1.pt").exists() and not (tmp_path / "tiny-0.1.resume.pt").exists()
    assert "IBP-certified accuracy" in capsys.readouterr().out


@pytest.mark.skipif(not (Path(os.environ.get("ODE_ROBUSTNESS_DATA", "/nonexistent")) / "mnist").exists(),
                    reason="MNIST not found (set ODE_ROBUSTNESS_DATA)")
def test_cli_research_flags_reach_the_model_recipe_and_schedule(tmp_path: Path) -> None:
    import json

    argv = ["train", "--preset", "ode-cert-0.1", "--epochs", "1", "--n-train", "32", "--n-eval", "8",
            "--warmup-epochs", "0", "--ramp-epochs", "1", "--batch-size", "32", "--schedule", "cosine",
            "--ramp-exponent", "2", "--kappa-end", "0.25", "--shift", "1", "--config", "channels=4",
            "--config", "head_hidden=0", "--out", str(tmp_path / "flags"), "--no-progress"]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "flags.json").read_text())
    assert meta["config"]["channels"] == 4 and meta["config"].get("head_hidden", 0) == 0
    assert meta["recipe"]["schedule"] == "cosine" and meta["recipe"]["shift"] == 1
    assert meta["cert_recipe"]["exponent"] == 2 and meta["cert_recipe"]["kappa_end"] == 0.25
    assert "degree 2" in meta["eps_schedule"]


@pytest.mark.skipif(not (Path(os.environ.get("ODE_ROBUSTNESS_DATA", "/nonexistent")) / "mnist").exists(),
                    reason="MNIST not found (set ODE_ROBUSTNESS_DATA)")
def test_cli_pgd_steps_sets_the_attack_of_mtl_ibp_and_init_from_takes_a_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import json

    import verify.certified_training as ct

    seen: list[int] = []
    real = ct.pgd_point

    def spy(model, x, y, eps, steps, seed):
        seen.append(steps)
        return real(model, x, y, eps, steps, seed)

    monkeypatch.setattr(ct, "pgd_point", spy)
    argv = ["train", "--preset", "ode-cert-0.1", "--cert", "mtl-ibp", "--alpha", "0.9", "--pgd-steps", "3",
            "--epochs", "1", "--n-train", "32", "--n-eval", "8", "--warmup-epochs", "0", "--ramp-epochs", "1",
            "--batch-size", "16", "--config", "channels=4", "--config", "head_hidden=0",
            "--out", str(tmp_path / "mtl"), "--no-progress"]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "mtl.json").read_text())
    assert meta["cert_recipe"]["loss"] == "mtl-ibp" and meta["cert_recipe"]["alpha"] == 0.9
    assert meta["cert_recipe"]["pgd_steps"] == 3 and seen == [3, 3]

    from models.zoo import resolve

    argv_ft = ["train", "--preset", "ode-cert-0.1", "--init-from", str(tmp_path / "mtl"), "--lr", "1e-12", "--epochs", "1",
               "--n-train", "16", "--n-eval", "8", "--warmup-epochs", "0", "--ramp-epochs", "1", "--batch-size", "16",
               "--config", "channels=4", "--config", "head_hidden=0", "--out", str(tmp_path / "ft"), "--no-progress"]
    assert main(argv_ft) == 0  # a vanishing rate: the fine-tune keeps the checkpoint's weights
    start, tuned = resolve(str(tmp_path / "mtl"))[0].state_dict(), resolve(str(tmp_path / "ft"))[0].state_dict()
    for k, v in start.items():
        torch.testing.assert_close(tuned[k], v, atol=1e-8, rtol=0, msg=k)
