"""``python -m verify bounds`` on a checkpoint path and on the zoo model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models.lenet import MLP
from models.odenet import ODENet
from models.solver import SolverConfig
from models.train import save_checkpoint
from verify.cli import main

DATA = os.environ.get("ODE_ROBUSTNESS_DATA", "/work/shared/data")
needs_data = pytest.mark.skipif(not (Path(DATA) / "mnist" / "t10k-images-idx3-ubyte.gz").exists(),
                                reason="MNIST t10k files not available")


@needs_data
def test_bounds_on_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "tiny", ODENet(channels=2, solver=SolverConfig.fixed("euler", 3)), {})
    assert main(["bounds", "--model", str(path), "--n", "2", "--steps", "1", "--data-dir", DATA]) == 0
    out = capsys.readouterr().out
    assert "network bound:" in out and "upper / lower:" in out
    assert "tableau euler" in out and "K*h + 1" in out and "G = " in out


@needs_data
def test_bounds_inf_norm_mlp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_checkpoint(tmp_path / "mlp", MLP(hidden=(8,)), {})
    assert main(["bounds", "--model", str(path), "--norm", "inf", "--n", "2", "--steps", "1",
                 "--data-dir", DATA]) == 0
    assert "norm inf" in capsys.readouterr().out


def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bounds", "--model", "no-such-model"]) == 2
    assert main(["bounds", "--model", "ode", "--norm", "1"]) == 2
    assert main(["bounds", "--model", "ode", "--n", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("error") >= 1
