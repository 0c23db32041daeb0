"""Zoo checkpoints, training, checkpoints and the ``python -m models`` CLI."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from models import MLP, ODENet, SolverConfig
from models.cli import main
from models.train import CheckpointError, Recipe, adv_eps_at, load_checkpoint, save_checkpoint, train
from models.zoo import PRESETS, ZOO_DIR, UnknownModelError, available, load_with_metadata, resolve


def _have_data() -> bool:
    root = os.environ.get("ODE_ROBUSTNESS_DATA")
    return bool(root) and (Path(root) / "mnist").exists()


needs_data = pytest.mark.skipif(not _have_data(), reason="MNIST not found (set ODE_ROBUSTNESS_DATA)")


@pytest.mark.parametrize("name", ["ode", "ode-chen", "resnet", "lenet5", "ode-adv", "lenet5-adv"])
def test_zoo_checkpoint_is_small_and_loads_weights_only(name: str) -> None:
    pt = ZOO_DIR / f"{name}.pt"
    if not pt.exists():
        pytest.skip(f"zoo model {name} not trained in this checkout")
    assert pt.stat().st_size < 2 * 1024 * 1024
    state = torch.load(pt, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model, meta = load_with_metadata(name)
    assert not model.training
    assert meta["dataset"] == "mnist-t10k" and meta["preset"] == name


@needs_data
@pytest.mark.parametrize("name", ["ode", "ode-chen", "resnet", "lenet5", "ode-adv", "lenet5-adv"])
def test_zoo_model_reaches_stated_accuracy_on_500_held_out(name: str) -> None:
    from models.data import load_dataset
    from models.train import accuracy

    if name not in available():
        pytest.skip(f"zoo model {name} not trained in this checkout")
    model, meta = load_with_metadata(name)
    x, y = load_dataset("mnist-t10k", "test", n=500)
    acc, nfe = accuracy(model, x, y)
    # Same images, same weights: only float non-determinism (at most one flipped image).
    assert abs(acc - meta["held_out_accuracy_500"]) <= 1 / 500 + 1e-9
    if name in ("ode", "resnet", "lenet5"):
        assert meta["held_out_accuracy"] >= 0.98
    if isinstance(model, ODENet):
        assert nfe > 0


def test_required_zoo_models_are_present() -> None:
    assert {"ode", "ode-chen", "resnet", "lenet5"} <= set(available())


def test_unknown_model_names() -> None:
    with pytest.raises(UnknownModelError, match="unknown zoo model"):
        load_with_metadata("nope")
    with pytest.raises(UnknownModelError, match="not a zoo name"):
        resolve("nope")
    with pytest.raises(UnknownModelError, match="no checkpoint"):
        resolve("/nonexistent/model.pt")


def _toy_data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    # Class-dependent bright square: learnable in a few epochs.
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.3
    for k in range(10):
        r, c = divmod(k, 4)
        x[y == k, :, 2 + 6 * r:6 + 6 * r, 2 + 6 * c:6 + 6 * c] += 0.7
    return x.clamp(0, 1), y


def test_short_training_run_lowers_the_loss() -> None:
    x, y = _toy_data()
    torch.manual_seed(0)
    model = MLP(hidden=(32,))
    result = train(model, x, y, Recipe(epochs=4, batch_size=64, lr=1e-2, shift=0, schedule="constant"),
                   progress=False)
    assert result.epoch_loss[-1] < 0.5 * result.epoch_loss[0]
    assert not model.training


class _Interrupt(Exception):
    pass


def test_resumed_training_equals_uninterrupted(tmp_path: Path) -> None:
    x, y = _toy_data(256)
    recipe = Recipe(epochs=3, batch_size=64, lr=3e-3, shift=1, seed=3)

    def identity(model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor, eps: float) -> torch.Tensor:
        return xb

    torch.manual_seed(1)
    full = MLP(hidden=(16,))
    train(full, x, y, recipe, adversary=identity, progress=False)

    calls = {"n": 0}

    def dies_in_epoch_two(model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor, eps: float) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 6:  # 4 batches per epoch: dies in the middle of epoch 2
            raise _Interrupt
        return xb

    resume = tmp_path / "m.resume.pt"
    torch.manual_seed(1)
    interrupted = MLP(hidden=(16,))
    with pytest.raises(_Interrupt):
        train(interrupted, x, y, recipe, adversary=dies_in_epoch_two, resume_path=resume, progress=False)
    assert resume.exists()
    torch.manual_seed(99)  # a fresh process would not share the RNG state
    resumed = MLP(hidden=(16,))
    with pytest.raises(CheckpointError, match="written by another recipe"):  # a stale state is never resumed
        train(MLP(hidden=(16,)), x, y, dataclasses.replace(recipe, lr=1e-3), adversary=identity, resume_path=resume,
              progress=False)
    res = train(resumed, x, y, recipe, adversary=identity, resume_path=resume, progress=False)
    assert len(res.epoch_loss) == 3
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_checkpoint_round_trip_and_corruption(tmp_path: Path) -> None:
    model = ODENet(channels=4, solver=SolverConfig.fixed("euler", 2))
    path = save_checkpoint(tmp_path / "m", model, {"note": "x"})
    loaded, meta = load_checkpoint(path)
    assert meta["note"] == "x" and meta["arch"] == "ode"
    assert loaded.solver == model.solver
    xb = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(xb), model.eval()(xb))

    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt checkpoint weights"):
        load_checkpoint(path)
    save_checkpoint(tmp_path / "m", model, {})
    (tmp_path / "m.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="corrupt checkpoint metadata"):
        load_checkpoint(path)
    meta_ok = json.loads(json.dumps({"arch": "ode", "config": {**model.config(), "channels": 8}}))
    (tmp_path / "m.json").write_text(json.dumps(meta_ok))
    with pytest.raises(CheckpointError, match="does not match its metadata"):
        load_checkpoint(path)


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert match in err


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_exit_2(["train", "--arch", "transformer", "--out", str(tmp_path / "x")], capsys, "invalid choice")
    _one_line_exit_2(["train", "--preset", "nope"], capsys, "unknown preset")
    _one_line_exit_2(["train", "--preset", "ode-adv", "--adv-ramp", "-1", "--out", str(tmp_path / "x")], capsys,
                     "adv_ramp must be >= 0")
    _one_line_exit_2(["eval", "ode", "--solver", "rk45"], capsys, "unknown solver 'rk45'")
    _one_line_exit_2(["eval", "ode", "--solver", "rk4:0"], capsys, "'0' is not a positive number of steps")
    _one_line_exit_2(["eval", "ode", "--solver", "dopri5:abc"], capsys, "'abc' is not a positive tolerance")
    _one_line_exit_2(["eval", "ode", "--solver", "rk4:8", "--steps", "4"], capsys, "disagree")
    _one_line_exit_2(["eval", "nope"], capsys, "unknown model")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    (tmp_path / "bad.json").write_text(json.dumps({"arch": "mlp", "config": {}}))
    _one_line_exit_2(["eval", str(bad)], capsys, "corrupt checkpoint weights")
    _one_line_exit_2(["frobnicate"], capsys, "invalid choice")


def test_presets_are_consistent() -> None:
    for name, p in PRESETS.items():
        assert p.name == name
        if p.arch == "ode":
            SolverConfig.from_dict(p.config["solver"])


@needs_data
def test_eval_train_missing_trains_then_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import models.zoo as zoo

    tiny = zoo.Preset("tiny", "mlp", {"hidden": [16]}, Recipe(epochs=1, batch_size=256, shift=0), "test MLP")
    monkeypatch.setattr(zoo, "PRESETS", {**zoo.PRESETS, "tiny": tiny})
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    assert main(["eval", "tiny"]) == 2  # missing and not asked to train
    assert "has no checkpoint yet" in capsys.readouterr().err
    assert main(["eval", "tiny", "--train-missing", "--n", "100"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "tiny.pt").exists() and "saved" in out and "held-out accuracy" in out
    meta = json.loads((tmp_path / "tiny.json").read_text())
    assert meta["preset"] == "tiny" and meta["held_out_n"] == 2000 and meta["held_out_accuracy"] > 0.5
    mtime = (tmp_path / "tiny.pt").stat().st_mtime_ns
    assert main(["eval", "tiny", "--train-missing", "--n", "100"]) == 0  # now it only loads
    assert (tmp_path / "tiny.pt").stat().st_mtime_ns == mtime


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_every_cli_rejects_cuda_without_a_device(capsys: pytest.CaptureFixture[str]) -> None:
    from verify.cli import main as verify_main

    for run, argv in ((main, ["eval", "ode", "--device", "cuda"]),
                      (verify_main, ["attack", "--model", "ode", "--attack", "fgsm", "--eps", "0.1", "--device", "cuda"]),
                      (verify_main, ["certify", "--model", "ode", "--device", "cuda"])):
        assert run(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == ["error: --device cuda requested but CUDA is not available on this machine"]


def test_adversarial_budget_warms_up_then_ramps_step_by_step() -> None:
    x, y = _toy_data(256)  # 4 batches of 64 per epoch
    recipe = Recipe(epochs=4, batch_size=64, shift=0, adv="pgd", adv_eps=0.4, adv_warmup=1, adv_ramp=2)
    seen: list[float] = []

    def record(model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor, eps: float) -> torch.Tensor:
        seen.append(eps)
        return xb

    torch.manual_seed(0)
    train(MLP(hidden=(8,)), x, y, recipe, adversary=record, progress=False)
    # epoch 1 is clean; epochs 2-3 ramp over 8 steps; epoch 4 is at the full budget
    assert seen == pytest.approx([0.4 * k / 8 for k in range(1, 9)] + [0.4] * 4)
    assert adv_eps_at(dataclasses.replace(recipe, adv_ramp=0), 4, 4) == 0.4
    with pytest.raises(ValueError, match="adv_warmup and adv_ramp must be >= 0"):
        Recipe(adv_ramp=-1)


def test_lr_steps_multiply_the_rate_at_their_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _toy_data(256)  # 4 batches of 64 per epoch
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def record(self: torch.optim.Optimizer, *a: object, **k: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    recipe = Recipe(epochs=5, batch_size=64, lr=1e-2, shift=0, schedule="constant", lr_steps=(2, 4),
                    lr_step_factor=0.1)
    train(MLP(hidden=(8,)), x, y, recipe, progress=False)
    assert seen == pytest.approx([1e-2] * 8 + [1e-3] * 8 + [1e-4] * 4)
    assert "lr_steps" not in Recipe().key()  # resume states written before the field stay valid
    for bad in [dict(lr_steps=(3, 2)), dict(lr_steps=(0,)), dict(epochs=4, lr_steps=(4,)),
                dict(lr_step_factor=0.0), dict(lr_step_factor=1.5)]:
        with pytest.raises(ValueError, match="lr_step"):
            Recipe(**{"epochs": 10, **bad})


def test_models_train_passes_lr_steps_to_the_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import models.cli as cli

    seen: list[Recipe] = []
    monkeypatch.setattr(cli, "_train_and_save", lambda arch, config, recipe, *a, **k: seen.append(recipe))
    argv = ["train", "--arch", "mlp", "--epochs", "6", "--out", str(tmp_path / "m")]
    assert main(argv + ["--lr-steps", "2", "5", "--lr-step-factor", "0.5"]) == 0
    assert seen[0].lr_steps == (2, 5) and seen[0].lr_step_factor == 0.5
    assert main(argv + ["--lr-steps", "6"]) == 2  # the last epoch is 5: no step can start at 6
    err = capsys.readouterr().err
    assert err.startswith("error: lr_steps must be increasing epochs in 1..5") and err.count("\n") == 1


@needs_data
def test_train_creates_the_output_directory(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir" / "m"
    assert main(["train", "--arch", "mlp", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert out.with_suffix(".pt").exists() and not out.with_suffix(".resume.pt").exists()


def test_solver_spec_is_one_syntax_for_every_cli() -> None:
    import argparse

    from models.cli import _solver_override
    from models.cli_support import solver_spec
    from verify._cmd_attack import _solver_spec

    base = SolverConfig.fixed("rk4", 4, T=2.0)

    def override(**kw: object) -> SolverConfig:
        args = argparse.Namespace(**{"solver": None, "steps": None, "tol": None, "T": None, **kw})
        return _solver_override(base, args)

    assert override(solver=solver_spec("rk4:8")) == override(solver=("rk4", None), steps=8) == \
        SolverConfig.fixed("rk4", 8, T=2.0)
    assert override(solver=solver_spec("dopri5:1e-2")) == override(solver=("dopri5", None), tol=1e-2) == \
        SolverConfig.adaptive("dopri5", 1e-2, T=2.0)
    assert override(solver=solver_spec("euler")) == SolverConfig.fixed("euler", 4, T=2.0)  # keeps the steps
    assert _solver_spec("rk4:8") == SolverConfig.fixed("rk4", 8)
    assert _solver_spec("dopri5:1e-3") == SolverConfig.adaptive("dopri5", 1e-3)
    with pytest.raises(argparse.ArgumentTypeError, match="needs its steps or tolerance"):
        _solver_spec("rk4")
