"""The unrolled static graph equals torchdiffeq's solve; unsupported layers are named."""

import pytest
import torch

from models import MLP, LeNet5, ODENet, ResNet, SolverConfig
from verify.unroll import AdaptiveSolverError, UnsupportedLayerError, unroll


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun3", "rk4"])
@pytest.mark.parametrize("time_channel", [False, True])
def test_fixed_grid_unroll_equals_solver(method, time_channel):
    torch.manual_seed(1)
    net = ODENet(channels=3, solver=SolverConfig.fixed(method, 3, T=1.5), time_channel=time_channel).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert (unroll(net).module(x) - net(x)).abs().max() <= 1e-5


def test_resnet_lenet_mlp_unroll():
    torch.manual_seed(2)
    x = torch.rand(2, 1, 28, 28)
    for net in (ResNet(channels=3, n_blocks=2, step=0.7, time_channel=True), LeNet5(), MLP(hidden=(8,))):
        net.eval()
        with torch.no_grad():
            assert (unroll(net).module(x) - net(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_adaptive_unroll_is_refused_and_its_surrogate_replays_the_solver(method):
    torch.manual_seed(3)
    net = ODENet(channels=3, solver=SolverConfig.adaptive(method, 1e-3)).eval()
    x = torch.rand(1, 1, 28, 28)
    with pytest.raises(AdaptiveSolverError, match="--fixed-steps"):
        unroll(net, x)
    u = unroll(net, x, fixed_steps=True)
    assert u.adaptive and u.covers == "fixed-step surrogate, not the deployed solver"
    assert u.description.startswith("fixed-step surrogate, not the deployed solver")
    # torchdiffeq's last step overshoots T and is read from its interpolant at θ = (T - t0)/dt
    t0, dt, theta = u.steps[-1]
    assert t0 + dt >= 1.0 and t0 + theta * dt == pytest.approx(1.0, abs=1e-12)
    assert all(th == 1.0 for _, _, th in u.steps[:-1])
    with torch.no_grad():
        measured = float((u.module(x) - net(x)).abs().max())
    assert u.adaptive_distance == pytest.approx(measured, abs=1e-7)
    assert u.adaptive_distance <= 1e-5
    with pytest.raises(ValueError, match="one clean input"):
        unroll(net, fixed_steps=True)


def test_unsupported_layers_are_named():
    with pytest.raises(UnsupportedLayerError, match="GroupNorm"):
        unroll(ODENet(channels=4, field="chen"))
    with pytest.raises(UnsupportedLayerError, match=r"model\.1 \(Tanh\)"):
        unroll(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Tanh()))
    with pytest.raises(UnsupportedLayerError, match="Bilinear"):
        unroll(torch.nn.Bilinear(2, 2, 2))
