"""Network bounds are upper bounds on every observed ratio; GroupNorm models get none."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipbound import empirical_lipschitz, network_bound, pair_ratio
from models.lenet import MLP, LeNet5
from models.odenet import ODENet
from models.resnet import ResNet
from models.solver import SolverConfig


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "ode-rk4": ODENet(channels=4, solver=SolverConfig.fixed("rk4", 2)),
        "ode-euler-time": ODENet(channels=4, solver=SolverConfig.fixed("euler", 3), time_channel=True,
                                 head_pool=7),
        "resnet": ResNet(channels=4, n_blocks=2),
        "lenet5": LeNet5(),
        "mlp": MLP(hidden=(32,)),
    }


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_bound_dominates_random_and_adversarial_ratios(name: str, norm: str) -> None:
    model = _models()[name].eval()
    bound = network_bound(model, norm)
    assert bound.total is not None and bound.guaranteed
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 28, 28, generator=g)
    for scale in (1e-3, 0.1, 1.0):
        y = (x + scale * torch.randn(x.shape, generator=g)).clamp(0, 1)
        assert float(pair_ratio(model, x, y, norm).max()) <= bound.total
    emp = empirical_lipschitz(model, x[:4], norm, steps=4, seed=0)
    assert 0 < emp.lower <= bound.total


def test_ode_bound_structure() -> None:
    model = _models()["ode-rk4"].eval()
    bound = network_bound(model, "2")
    rows = {r.name: r for r in bound.rows}
    k = rows["block.field.conv1"].upper * rows["block.field.conv2"].upper
    assert bound.field_lipschitz == pytest.approx(k)
    assert bound.growth is not None and bound.growth.method == "rk4-38"
    stem = rows["stem.0"].upper * rows["stem.2"].upper
    assert bound.total == pytest.approx(stem * bound.growth.value * rows["head.2"].upper)
    assert "block.field.conv1" not in bound.factors and "block" in bound.factors


def test_resnet_residual_factor() -> None:
    model = _models()["resnet"].eval()
    bound = network_bound(model, "2")
    rows = {r.name: r for r in bound.rows}
    kf = rows["fields.1.conv1"].upper * rows["fields.1.conv2"].upper
    assert rows["block1"].upper == pytest.approx(1 + model.step * kf)


def test_adaptive_ode_needs_steps_and_chen_is_not_available() -> None:
    torch.manual_seed(0)
    model = ODENet(channels=4, solver=SolverConfig.adaptive("dopri5", 1e-3)).eval()
    nb = network_bound(model, "2")
    assert nb.total is None and "step sequence" in nb.reason
    nb = network_bound(model, "2", x=torch.rand(1, 1, 28, 28))
    assert nb.total is not None and nb.growth is not None and nb.growth.n_steps >= 1
    chen = ODENet(channels=4, field="chen", solver=SolverConfig.adaptive("dopri5", 1e-3)).eval()
    nb = network_bound(chen, "2", x=torch.rand(1, 1, 28, 28))
    assert nb.total is None and "GroupNorm" in nb.reason and not nb.guaranteed
