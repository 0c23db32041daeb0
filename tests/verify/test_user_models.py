"""Certifying a model the user wrote: chains of layers and ODE blocks with any chain field."""

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

from models import ConcatConv2d, ODEBlock, SolverConfig
from verify import Certifier, UnsupportedLayerError, certify, lower

from tests.verify._margin_attack import min_margins

SLACK = 1e-5


def _gains_like(solver: SolverConfig) -> nn.Sequential:
    """GAINS's shape: stem, ODEBlock(ConcatConv–ReLU–ConcatConv–ReLU), head; written as research code would."""
    torch.manual_seed(0)
    field = nn.Sequential(ConcatConv2d(4, 4), nn.ReLU(), ConcatConv2d(4, 4, kernel_size=3, padding=1), nn.ReLU())
    net = nn.Sequential(nn.Conv2d(1, 4, 4, stride=2, padding=1), nn.ReLU(), ODEBlock(field, solver),
                        nn.Flatten(), nn.Linear(4 * 5 * 5, 10)).eval()
    return net


class MyODE(nn.Module):
    """A user's own module: its children in registration order are the chain."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU())
        self.ode = ODEBlock(nn.Sequential(ConcatConv2d(3, 6), nn.ReLU(), ConcatConv2d(6, 3, time_channel=False)),
                            SolverConfig.fixed("midpoint", 3))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 4))
        self.input_shape, self.num_classes = (1, 10, 10), 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ode(self.stem(x)))


class DirectODE(nn.Module):
    """A forward that calls odeint itself: the solver is hidden from the verifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(100, 3))
        self.input_shape, self.num_classes = (1, 10, 10), 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = lambda t, h: torch.relu(self.conv(h))  # noqa: E731
        h = odeint(f, x, torch.tensor([0.0, 1.0]), method="euler", options={"step_size": 0.5})[-1]
        return self.head(h)


@pytest.mark.parametrize("norm,eps", [("inf", 0.01), ("2", 0.1)])
def test_gains_like_sequential_ode_net_is_certified_soundly_by_every_engine(norm, eps):
    net = _gains_like(SolverConfig.fixed("rk4", 2))
    net.input_shape, net.num_classes = (1, 10, 10), 10
    x = torch.rand(1, 1, 10, 10)
    y = net(x).argmax(1)
    ir = lower(net)
    assert [type(p).__name__ for p in ir.parts] == ["Layers", "Flow", "Layers"]
    assert float((ir.forward(x) - net(x)).abs().max()) <= 1e-5
    dense = Certifier(net, norm, "crown", 1, x)
    assert dense.engine == "dense"
    lower_dense = dense.margins(x, y, eps)[0]
    attacked = min_margins(net, x, int(y), eps, norm)
    assert float((attacked - lower_dense).min()) >= -SLACK
    if norm == "inf":  # auto_LiRPA's L2 path refuses a ReLU-first field reached by the ball only via convs
        lirpa = certify(net, x, y, eps, norm, "crown", engine="auto_lirpa").lower[0]
        assert torch.allclose(lirpa, lower_dense, atol=1e-4)
        ibp = certify(net, x, y, eps, norm, "ibp").lower[0]
        assert float((attacked - ibp).min()) >= -SLACK
        assert bool((ibp <= lower_dense + 1e-4).all())
    lip = certify(net, x, y, eps, norm, "lipschitz").lower[0]
    assert float((attacked - lip).min()) >= -SLACK


def test_users_own_module_lowers_from_its_children_and_reports_nfe():
    net = MyODE().eval()
    x = torch.rand(2, 1, 10, 10)
    net(x)
    assert net.ode.nfe == 6  # midpoint: 2 evaluations per step, 3 steps
    res = certify(net, x, net(x).argmax(1), 0.01, "inf", "crown")
    assert res.description == "midpoint 3 steps, T=1"
    for i in range(2):
        attacked = min_margins(net, x[i:i + 1], int(net(x[i:i + 1]).argmax()), 0.01, "inf")
        assert float((attacked - res.lower[i]).min()) >= -SLACK


def test_a_forward_calling_odeint_gets_the_one_line_fix():
    with pytest.raises(UnsupportedLayerError, match=r"wrap its field in models\.ODEBlock|wrapped in models\.ODEBlock"):
        certify(DirectODE().eval(), torch.rand(1, 1, 10, 10), torch.tensor([0]), 0.01)


def test_a_field_that_is_not_the_chain_of_its_layers_is_refused():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.act = nn.ReLU()

        def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(h)) - h  # not conv then relu

    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), ODEBlock(Residual(), SolverConfig.fixed("euler", 2)),
                        nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    net.input_shape, net.num_classes = (1, 6, 6), 3
    with pytest.raises(UnsupportedLayerError, match="not the chain of its layers"):
        lower(net)


def test_an_adaptive_user_block_is_refused_and_its_surrogate_replays_the_solver():
    net = _gains_like(SolverConfig.adaptive("dopri5", 1e-2))
    net.input_shape, net.num_classes = (1, 10, 10), 10
    x = torch.rand(1, 1, 10, 10)
    y = net(x).argmax(1)
    with pytest.raises(Exception, match="adaptive solver"):
        certify(net, x, y, 0.01)
    res = certify(net, x, y, 0.01, fixed_steps=True)
    assert res.covers == "fixed-step surrogate, not the deployed solver"
    assert lower(net, x, fixed_steps=True).adaptive_distance <= 1e-5


FACTORY = '''
import torch
from torch import nn
from models import ConcatConv2d, ODEBlock, SolverConfig


def make():
    field = nn.Sequential(ConcatConv2d(2, 2), nn.ReLU(), ConcatConv2d(2, 2))
    return nn.Sequential(nn.Conv2d(1, 2, 4, stride=4), nn.ReLU(), ODEBlock(field, SolverConfig.fixed("euler", 2)),
                         nn.Flatten(), nn.Linear(2 * 7 * 7, 10))
'''


def test_certify_cli_takes_a_python_factory_and_its_weights(tmp_path, capsys):
    from verify.cli import main
    from verify.run import read_records

    src = tmp_path / "net.py"
    src.write_text(FACTORY)
    ns: dict = {}
    exec(FACTORY, ns)
    torch.manual_seed(0)
    torch.save(ns["make"]().state_dict(), tmp_path / "w.pt")
    out = tmp_path / "run"
    rc = main(["certify", "--model", f"{src}:make", "--weights", str(tmp_path / "w.pt"), "--n", "2",
               "--no-attack", "--out", str(out)])
    assert rc == 0
    recs = read_records(out / "results.jsonl")
    assert len(recs) == 2 and recs[0]["certificate_covers"] == "the deployed model" and "crown" in recs[0]["methods"]
    capsys.readouterr()
    assert main(["certify", "--model", f"{src}:nothing", "--n", "1", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "defines no function 'nothing'" in err[0]
