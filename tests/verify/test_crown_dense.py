"""The dense CROWN engine (verify.crown) gives auto_LiRPA's CROWN bounds, on every model it accepts."""

import pytest
import torch
from torch import nn

from models import MLP, ODENet, SolverConfig
from models.lenet import LeNet5
from models.resnet import ResNet
from models.zoo import load
from verify.certify import Certifier, CertifyError, spec_matrix
from verify.crown import DenseGraph, GraphError
from verify.engines import Reference


def _seq_strided():
    # a strided first convolution that the space-to-depth layout turns into a stride-1 one
    return nn.Sequential(nn.Conv2d(1, 3, 4, 2, 1), nn.ReLU(), nn.Conv2d(3, 4, 4, 2, 1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 2 * 2, 10))


def _seq_plain():
    # stride 2 with a 3x3 kernel does not fit the layout: built without it
    return nn.Sequential(nn.Conv2d(1, 3, 3, 2, 1), nn.ReLU(), nn.Conv2d(3, 3, 3, 1, 1), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 10))


def _seq_normalized():
    # an input normalisation (1x1 one-channel convolution) merged into the next convolution
    return nn.Sequential(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 3, 3, 2), nn.ReLU(), nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 10))


MODELS = {
    "ode-rk4": lambda: ODENet(channels=2, solver=SolverConfig.fixed("rk4", 2), input_size=8),
    "ode-midpoint-time": lambda: ODENet(channels=2, solver=SolverConfig.fixed("midpoint", 3), input_size=8,
                                        time_channel=True),
    "resnet-untied": lambda: ResNet(channels=2, n_blocks=2, step=0.5, tied=False, input_size=8),
    "mlp": lambda: MLP(hidden=(12, 12), input_size=8),
    "seq-strided": _seq_strided,
    "seq-plain": _seq_plain,
    "seq-normalized": _seq_normalized,
}


def _model(name, seed=0):
    torch.manual_seed(seed)
    m = MODELS[name]()
    if isinstance(m, nn.Sequential):
        m.input_shape = (1, 8, 8)  # what Certifier and DenseGraph read (default: MNIST's)
    with torch.no_grad():  # larger weights: more unstable neurons, a harder test
        for p in m.parameters():
            p.mul_(1.5)
    return m.eval()


def _x(seed=1):
    torch.manual_seed(seed)
    return torch.rand(1, 1, 8, 8)


@pytest.mark.parametrize("name", list(MODELS))
def test_graph_computes_the_models_logits(name):
    m = _model(name)
    x = torch.rand(5, 1, 8, 8)
    g = DenseGraph.from_model(m)
    with torch.no_grad():
        assert torch.allclose(g.forward(x), m(x), atol=1e-5)


def test_normalisation_merged_into_a_convolution_keeps_its_transpose():
    g = DenseGraph.from_model(_model("seq-normalized"))
    first = g.nodes[1]
    assert first.kind == "affine" and first.src == (0,) and first.conv is not None
    A = torch.randn(7, first.dim)
    assert torch.allclose(first.back(A), A @ first.weight, atol=1e-5)


def test_space_to_depth_layout_used_only_where_it_fits():
    assert DenseGraph.from_model(_model("seq-strided")).block == 4
    assert DenseGraph.from_model(_model("seq-plain")).block == 1
    assert DenseGraph.from_model(load("ode")).block == 4


@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("name", [n for n in MODELS if n != "ode-midpoint-time"])
def test_bounds_equal_auto_lirpa(name, norm):
    m = _model(name)
    x = _x()
    y = m(x).argmax(1)
    dense = Certifier(m, norm, "crown")
    lirpa = Certifier(m, norm, "crown", engine="auto_lirpa")
    assert dense.engine == "dense" and lirpa.engine == "auto_LiRPA"
    for eps in ([0.01, 0.05, 0.2] if norm == "inf" else [0.1, 0.5]):
        a, b = dense.margins(x, y, eps), lirpa.margins(x, y, eps)
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (eps, (a - b).abs().max())


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_time_channel_bounds_are_sound(norm):
    """auto_LiRPA 0.3 cannot bound the time plane's bias map; the dense engine can: its
    bounds hold at random points of the ball and tighten as ε shrinks."""
    m = _model("ode-midpoint-time")
    x = _x(4)
    y = m(x).argmax(1)
    cert = Certifier(m, norm, "crown")
    eps = 0.03 if norm == "inf" else 0.2
    lower = cert.margins(x, y, eps)[0]
    C = spec_matrix(y, 10)[0]
    torch.manual_seed(5)
    d = torch.randn(2000, 1, 8, 8)
    d = eps * (d.sign() if norm == "inf" else d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    pts = x + d if norm == "2" else (x + d).clamp(0, 1)
    with torch.no_grad():
        margins = m(pts) @ C.T
    assert (margins >= lower - 1e-5).all()
    assert (cert.margins(x, y, eps / 4)[0] >= lower - 1e-6).all()


def test_reference_bounds_path_equals_auto_lirpa():
    m = _model("ode-rk4")
    x = _x(2)
    y = m(x).argmax(1)
    dense = Certifier(m, "inf", "crown")
    lirpa = Certifier(m, "inf", "crown", engine="auto_lirpa")
    dense.margins(x, y, 0.1)
    lirpa.margins(x, y, 0.1)
    ref_d, ref_l = dense.reference(), lirpa.reference()
    for eps in (0.03, 0.06):
        a, b = dense.margins(x, y, eps, ref_d), lirpa.margins(x, y, eps, ref_l)
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
        # the reference only skips stable neurons: the bound is the one computed without it
        assert torch.allclose(a, dense.margins(x, y, eps), atol=1e-5, rtol=1e-5)


def test_adaptive_solver_surrogate_in_both_engines():
    torch.manual_seed(0)
    m = ODENet(channels=2, solver=SolverConfig.adaptive("dopri5", tol=1e-3), input_size=8).eval()
    x = _x(3)
    y = m(x).argmax(1)
    with pytest.raises(CertifyError, match="adaptive solver"):
        Certifier(m, "inf", "crown", x_clean=x)
    dense = Certifier(m, "inf", "crown", x_clean=x, fixed_steps=True)
    lirpa = Certifier(m, "inf", "crown", x_clean=x, engine="auto_lirpa", fixed_steps=True)
    assert dense.engine == "dense"
    assert dense.covers == lirpa.covers == "fixed-step surrogate, not the deployed solver"
    assert "fixed-step surrogate, not the deployed solver" in dense.description
    with torch.no_grad():
        assert (dense.bounds.graph.forward(x) - m(x)).abs().max() <= 1e-5
    assert torch.allclose(dense.margins(x, y, 0.02), lirpa.margins(x, y, 0.02), atol=1e-5, rtol=1e-5)


def test_zoo_ode_bounds_equal_auto_lirpa():
    m = load("ode")
    torch.manual_seed(0)
    x = torch.rand(1, 1, 28, 28) * 0.2
    x[0, 0, 6:22, 12:16] = 1.0  # a bar: a digit-like input
    y = m(x).argmax(1)
    a = Certifier(m, "inf", "crown").margins(x, y, 0.004)
    b = Certifier(m, "inf", "crown", engine="auto_lirpa").margins(x, y, 0.004)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-5), (a - b).abs().max()


def test_maxpool_models_fall_back_to_auto_lirpa():
    with pytest.raises(GraphError, match=r"features\.2 \(MaxPool2d\)"):
        DenseGraph.from_model(LeNet5())
    assert Certifier(LeNet5().eval(), "inf", "crown").engine == "auto_LiRPA"


def test_other_methods_and_bad_engine():
    m = _model("mlp")
    assert Certifier(m, "inf", "ibp").engine == "auto_LiRPA"
    assert Certifier(m, "inf", "lipschitz").engine == "lipbound"
    with pytest.raises(CertifyError, match="unknown engine"):
        Certifier(m, "inf", "crown", engine="fast")


def test_reference_needs_a_batch_of_one():
    m = _model("mlp")
    x = torch.rand(2, 1, 8, 8)
    y = m(x).argmax(1)
    cert = Certifier(m, "inf", "crown", batch_size=2)
    lower = cert.margins(x, y, 0.05)
    assert lower.shape == (2, 9)
    one = Certifier(m, "inf", "crown").margins(x[1:], y[1:], 0.05)
    assert torch.allclose(lower[1:], one)
    with pytest.raises(CertifyError, match="batch of one"):
        cert.margins(x, y, 0.01, Reference("dense", {0: (torch.zeros(1), torch.zeros(1))}))
    with pytest.raises(CertifyError, match="reference of the auto_LiRPA engine"):
        cert.margins(x[:1], y[:1], 0.01, Reference("auto_LiRPA", {}))
    assert spec_matrix(y, 10).shape == (2, 9, 10)
