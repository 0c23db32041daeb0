"""models.activity.field_activity: the fraction of field ReLU units that fire, counted by hand."""

from __future__ import annotations

import pytest
import torch

from models import ODENet, SolverConfig
from models.activity import field_activity, field_usage


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
        self.field = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        with torch.no_grad():
            self.stem[0].weight.fill_(1.0)
            self.stem[0].bias.zero_()
            self.field[0].weight.zero_()
            self.field[0].bias.copy_(torch.tensor([-1.0, 1.0, -1.0, 0.0]))
            self.field[0].weight[2, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.field(self.stem(x))


def test_counts_units_alive_on_some_image() -> None:
    net = _Net()
    x = torch.tensor([[0.0, 0.0], [0.5, 0.0], [2.0, 0.0]])
    # units: always off, always on, on only where the stem output exceeds 1 (third image), exactly 0 (off)
    assert field_activity(net, x) == {"field.1": 0.5}
    assert field_activity(net, x, batch=1) == {"field.1": 0.5}
    assert field_activity(net, x[:2]) == {"field.1": 0.25}
    assert field_activity(net.stem, x) == {}


def test_every_solver_evaluation_counts() -> None:
    """A unit that fires only at a later stage of the solver is alive: compare with a by-hand
    union over the field's evaluations."""
    torch.manual_seed(0)
    net = ODENet(channels=4, solver=SolverConfig.fixed("rk4", 3)).eval()
    x = torch.rand(5, 1, 28, 28)
    calls: list[torch.Tensor] = []
    relu = dict(net.named_modules())["block.field.act"]
    handle = relu.register_forward_hook(lambda _m, _i, out: calls.append((out > 0).flatten(1).any(0)))
    with torch.no_grad():
        net(x)
    handle.remove()
    assert len(calls) > 1
    union = torch.stack(calls).any(0).float().mean().item()
    assert field_activity(net, x) == {"block.field.act": pytest.approx(union)}
    assert union >= max(c.float().mean().item() for c in calls)


def test_bad_batch() -> None:
    with pytest.raises(ValueError, match="batch must be positive"):
        field_activity(_Net(), torch.zeros(1, 2), batch=0)


def test_usage_counts_firing_frequency() -> None:
    net = _Net()
    x = torch.tensor([[0.0, 0.0], [0.5, 0.0], [2.0, 0.0]])
    # 3 images x 4 units: unit 1 fires on all three, unit 2 on the third image only: 4 of 12
    usage = field_usage(net, x, batch=2)
    assert usage == {"field.1": {"alive": 0.5, "mean_active": pytest.approx(4 / 12), "units": 4}}
