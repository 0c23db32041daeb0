"""``--model FILE.py:FUNCTION --weights W.pt`` and state dict + JSON sidecar: the user's own model on the CLI.

Also the exit-status contract of :func:`models.cli_support.run_main`: bad input is one line and
status 2; a bug (a KeyError or TypeError nobody raised on purpose) keeps its traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from models import MLP
from models.cli_support import USER_ERRORS, run_main
from models.train import CheckpointError
from models.zoo import DEFAULT_INPUT_SHAPE, ModelFactoryError, resolve
from verify.cli import main

ROOT = Path(__file__).resolve().parents[2]

FACTORY = '''
from torch import nn


def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))


def not_a_module():
    return {"weights": 1}


def buggy():
    return nn.Sequential(nn.Linear(3, 4))(None)  # a real TypeError inside the user's code


NOT_CALLABLE = 3
'''


@pytest.fixture(name="factory")
def _factory(tmp_path: Path) -> tuple[Path, Path]:
    """(factory file, matching weights)."""
    file = tmp_path / "my_net.py"
    file.write_text(FACTORY)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    weights = tmp_path / "w.pt"
    torch.save(net.state_dict(), weights)
    return file, weights


def _have_data() -> bool:
    root = os.environ.get("ODE_ROBUSTNESS_DATA")
    return bool(root) and Path(root, "mnist").exists()


def test_factory_loads_weights_strictly_with_mnist_defaults(factory: tuple[Path, Path]) -> None:
    file, weights = factory
    model, meta = resolve(f"{file}:make", weights=weights)
    assert not model.training
    assert torch.equal(model.state_dict()["1.weight"], torch.load(weights, weights_only=True)["1.weight"])
    assert tuple(model.input_shape) == DEFAULT_INPUT_SHAPE and model.num_classes == 10
    assert meta["arch"] == "Sequential" and meta["factory"] == f"{file}:make" and meta["weights"] == str(weights)


def test_factory_without_weights_is_used_as_returned(factory: tuple[Path, Path]) -> None:
    model, meta = resolve(f"{factory[0]}:make")
    assert isinstance(model, nn.Sequential) and meta["weights"] is None


@pytest.mark.skipif(not _have_data(), reason="needs ODE_ROBUSTNESS_DATA")
def test_attack_cli_runs_a_factory_model(factory: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    file, weights = factory
    out = tmp_path / "r.json"
    code = main(["attack", "--model", f"{file}:make", "--weights", str(weights), "--attack", "fgsm", "--eps", "0.1",
                 "--n", "2", "--no-checks", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rep = json.loads(out.read_text())
    assert rep["n"] == 2 and rep["model"] == f"{file}:make"


def _bad_weights(tmp_path: Path, kind: str) -> Path:
    state = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)).state_dict()
    if kind == "missing":
        del state["3.bias"]
    elif kind == "unexpected":
        state["4.weight"] = torch.zeros(1)
    elif kind == "shape":
        state["3.bias"] = torch.zeros(11)
    elif kind == "nested":
        state = {"state_dict": state, "epoch": torch.tensor(3)}
    path = tmp_path / f"{kind}.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("model, weights, needle", [
    ("{dir}/nowhere.py:make", None, "model factory file not found"),
    ("{dir}/my_net.py:nope", None, "defines no function 'nope'"),
    ("{dir}/my_net.py:NOT_CALLABLE", None, "defines no function 'NOT_CALLABLE'"),
    ("{dir}/my_net.py:not_a_module", None, "not a torch.nn.Module"),
    ("{dir}/my_net.py", None, "name the factory function"),
    ("lenet5", "{dir}/w.pt", "needs --model FILE.py:FUNCTION"),
    ("{dir}/my_net.py:make", "{dir}/absent.pt", "weights file not found"),
    ("{dir}/my_net.py:make", "missing", "missing key '3.bias'"),
    ("{dir}/my_net.py:make", "unexpected", "unexpected key '4.weight'"),
    ("{dir}/my_net.py:make", "shape", "'3.bias' has shape (11,)"),
    ("{dir}/my_net.py:make", "nested", "save its 'state_dict' entry"),
])
def test_bad_factory_exits_2_with_one_line(factory: tuple[Path, Path], tmp_path: Path, model: str,
                                           weights: str | None, needle: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["attack", "--model", model.format(dir=tmp_path), "--attack", "fgsm", "--eps", "0.1", "--n", "2"]
    if weights is not None:
        w = weights.format(dir=tmp_path) if "{" in weights else str(_bad_weights(tmp_path, weights))
        argv += ["--weights", w]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err, err


def test_bad_factory_raises_project_errors(factory: tuple[Path, Path], tmp_path: Path) -> None:
    file, _ = factory
    with pytest.raises(ModelFactoryError):
        resolve(f"{file}:not_a_module")
    with pytest.raises(CheckpointError, match="missing key"):
        resolve(f"{file}:make", weights=_bad_weights(tmp_path, "missing"))


def test_a_bug_in_the_factory_keeps_its_traceback_and_exit_status(factory: tuple[Path, Path]) -> None:
    file, weights = factory
    with pytest.raises(TypeError):
        main(["bounds", "--model", f"{file}:buggy", "--n", "1"])
    proc = subprocess.run([sys.executable, "-m", "verify", "bounds", "--model", f"{file}:buggy", "--n", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode not in (0, 2)
    assert "Traceback" in proc.stderr and "TypeError" in proc.stderr


def test_sidecar_checkpoint_written_by_research_code_loads(tmp_path: Path) -> None:
    # What the README shows: a models.MODELS architecture, its state dict, and the JSON sidecar.
    torch.manual_seed(0)
    model = MLP(hidden=(32,))
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    (tmp_path / "mine.json").write_text(json.dumps({"arch": "mlp", "config": model.config(),
                                                    "dataset": "mnist-t10k"}))
    loaded, meta = resolve(str(tmp_path / "mine.pt"))
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x)) and meta["arch"] == "mlp"


def test_sidecar_config_that_does_not_fit_the_architecture_is_a_checkpoint_error(tmp_path: Path) -> None:
    model = MLP(hidden=(8,))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(json.dumps({"arch": "mlp", "config": {**model.config(), "widht": 3}}))
    with pytest.raises(CheckpointError, match="does not fit arch 'mlp'.*widht"):
        resolve(str(tmp_path / "m.pt"))
    (tmp_path / "m.json").write_text(json.dumps({"arch": "mlp", "config": [1, 2]}))
    with pytest.raises(CheckpointError, match="'config' must be an object"):
        resolve(str(tmp_path / "m.pt"))


def test_key_and_type_errors_are_bugs_not_user_errors() -> None:
    assert not any(issubclass(KeyError, e) or issubclass(TypeError, e) for e in USER_ERRORS)
    import argparse

    def build(exc: BaseException) -> argparse.ArgumentParser:
        def func(args: argparse.Namespace) -> int:
            raise exc

        p = argparse.ArgumentParser()
        p.set_defaults(func=func)
        return p

    for exc in (KeyError("arch"), TypeError("unsupported operand")):
        with pytest.raises(type(exc)):
            run_main(lambda exc=exc: build(exc), [])
    assert run_main(lambda: build(ModelFactoryError("bad factory")), []) == 2
    assert run_main(lambda: build(FileNotFoundError("no such file")), []) == 2
