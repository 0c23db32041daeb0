"""Input validation of every classifier, the architecture table and config round-trips."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from models import (
    MLP, MODELS, Classifier, LeNet5, ModelInputError, ODENet, ResNet, SolverConfig,
    UnknownArchitectureError, build_model,
)


FACTORIES: dict[str, Callable[[], Classifier]] = {
    "ODENet": lambda: ODENet(channels=4, solver=SolverConfig.fixed("euler", 2)),
    "ResNet": lambda: ResNet(channels=4, n_blocks=2),
    "LeNet5": LeNet5,
    "MLP": lambda: MLP(hidden=(8,)),
}


@pytest.fixture(params=sorted(FACTORIES))
def model(request: pytest.FixtureRequest) -> Classifier:
    torch.manual_seed(0)
    return FACTORIES[request.param]().eval()


def _bad_inputs() -> list[tuple[str, torch.Tensor, str]]:
    nan = torch.rand(2, 1, 28, 28)
    nan[1, 0, 3, 4] = float("nan")
    inf = torch.rand(2, 1, 28, 28)
    inf[0, 0, 0, 0] = float("inf")
    return [
        ("rank 3", torch.rand(1, 28, 28), r"expects a batch of shape \(N, 1, 28, 28\), got shape \(1, 28, 28\)"),
        ("rank 5", torch.rand(1, 1, 1, 28, 28),
         r"expects a batch of shape \(N, 1, 28, 28\), got shape \(1, 1, 1, 28, 28\)"),
        ("channels", torch.rand(2, 3, 28, 28), r"expects 1 input channel\(s\), got 3"),
        ("spatial", torch.rand(2, 1, 32, 32), r"expects 28x28 images, got 32x32"),
        ("non-square", torch.rand(2, 1, 28, 27), r"expects 28x28 images, got 28x27"),
        ("nan", nan, "got NaN or infinite input values"),
        ("inf", inf, "got NaN or infinite input values"),
        ("integer", torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "expects floating-point input"),
    ]


@pytest.mark.parametrize("case", [c[0] for c in _bad_inputs()])
def test_bad_input_raises_model_input_error(model: Classifier, case: str) -> None:
    _, x, match = next(c for c in _bad_inputs() if c[0] == case)
    with pytest.raises(ModelInputError, match=f"^{type(model).__name__} {match}"):
        model(x)


def test_model_input_error_is_a_value_error(model: Classifier) -> None:
    assert issubclass(ModelInputError, ValueError)
    with pytest.raises(ModelInputError, match="expects a torch.Tensor, got list"):
        model([[0.0]])  # type: ignore[arg-type]
    out = model(torch.rand(3, 1, 28, 28))  # a good batch passes
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_unknown_architecture() -> None:
    expected = "unknown architecture 'nope'; choose one of ode, resnet, lenet5, mlp"
    with pytest.raises(UnknownArchitectureError, match=expected):
        build_model("nope")
    assert issubclass(UnknownArchitectureError, ValueError)


ROUND_TRIP = {
    "ode-verifiable": lambda: ODENet(channels=4, solver=SolverConfig.adaptive("bosh3", 1e-4, T=2.0),
                                     time_channel=True, head_pool=7),
    "ode-chen": lambda: ODENet(channels=8, field="chen", solver=SolverConfig.fixed("midpoint", 3, T=0.5)),
    "resnet-untied": lambda: ResNet(channels=4, n_blocks=3, step=0.5, tied=False, time_channel=True),
    "resnet-tied": lambda: ResNet(channels=4, n_blocks=3, step=0.25, tied=True, head_pool=7),
    "lenet5": LeNet5,
    "mlp": lambda: MLP(hidden=(16, 8)),
    "linear": lambda: MLP(hidden=()),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_config_round_trip(name: str) -> None:
    torch.manual_seed(3)
    m = ROUND_TRIP[name]().eval()
    assert MODELS[m.arch] is type(m)
    config = json.loads(json.dumps(m.config()))  # checkpoints store the config as JSON
    torch.manual_seed(4)  # a different init, so only the loaded weights can make them agree
    m2 = build_model(m.arch, **config).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        before = m2(x)
        m2.load_state_dict(m.state_dict(), strict=True)
        assert torch.equal(m2(x), m(x))
        assert not torch.equal(before, m(x))
    assert m2.config() == config
    if isinstance(m, ODENet):
        assert m2.solver == m.solver
