"""Certification bounds: analytic on a linear model, sound on small nets, radii consistent."""

import math

import pytest
import torch

from models import MLP, ODENet, SolverConfig
from models.data import load_dataset
from models.zoo import load
from verify.certify import Certifier, CertifyError, certify


def _linear():
    torch.manual_seed(0)
    return MLP(hidden=(), input_size=6).eval()


@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("method", ["ibp", "crown", "forward", "alpha-crown"])
def test_linear_model_dual_norm_bound(norm, method):
    """Interior points (ε-ball inside [0, 1]): lower = margin − ε‖w_y − w_j‖_dual."""
    m = _linear()
    x = 0.3 + 0.4 * torch.rand(2, 1, 6, 6)
    y = torch.tensor([1, 7])
    eps = 0.02
    r = certify(m, x, y, eps, norm, method)
    W = m.net[-1].weight.detach()
    logits = m(x).detach()
    for n in range(2):
        others = [j for j in range(10) if j != y[n]]
        d = W[y[n]] - W[others]
        dual = d.abs().sum(1) if norm == "inf" else d.norm(dim=1)
        expected = logits[n, y[n]] - logits[n, others] - eps * dual
        assert torch.allclose(r.lower[n], expected, atol=1e-5)


def test_linf_ball_is_clipped_to_the_image_box():
    """At a pixel on the box edge the bound is the exact box minimum, tighter than margin − ε‖·‖₁."""
    m = _linear()
    x = torch.zeros(1, 1, 6, 6)
    y = torch.tensor([3])
    eps = 0.1
    r = certify(m, x, y, eps, "inf", "crown")
    W = m.net[-1].weight.detach()
    logits = m(x).detach()[0]
    others = [j for j in range(10) if j != 3]
    d = W[3] - W[others]
    exact = logits[3] - logits[others] + eps * d.clamp(max=0).sum(1)
    assert torch.allclose(r.lower[0], exact, atol=1e-5)


def _small_net(seed=0):
    torch.manual_seed(seed)
    return ODENet(channels=2, solver=SolverConfig.fixed("rk4", 2), input_size=8).eval()


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_sampled_and_pgd_points_within_bounds(norm):
    net = _small_net()
    x = torch.rand(1, 1, 8, 8)
    y = net(x).argmax(1)
    eps = 0.05 if norm == "inf" else 0.3
    for method in ("ibp", "crown"):
        lower = certify(net, x, y, eps, norm, method).lower[0]
        others = [j for j in range(10) if j != int(y)]

        def margins(z):
            out = net(z)
            return out[:, int(y)].unsqueeze(1) - out[:, others]

        with torch.no_grad():
            d = torch.randn(256, *x.shape[1:])
            d = eps * (d.sign() if norm == "inf" else d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
            z = (x + d).clamp(0, 1) if norm == "inf" else x + d
            assert (margins(z) >= lower - 1e-5).all()
        # PGD minimising each margin.
        for k in range(len(others)):
            delta = torch.zeros_like(x, requires_grad=True)
            for _ in range(20):
                z = (x + delta).clamp(0, 1) if norm == "inf" else x + delta
                loss = margins(z)[0, k]
                (g,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    if norm == "inf":
                        delta -= eps / 10 * g.sign()
                        delta.clamp_(-eps, eps)
                    else:
                        delta -= eps / 5 * g / (g.norm() + 1e-12)
                        delta *= min(1.0, eps / float(delta.norm() + 1e-12))
            with torch.no_grad():
                z = (x + delta).clamp(0, 1) if norm == "inf" else x + delta
                assert margins(z)[0, k] >= lower[k] - 1e-5


def test_crown_radius_at_least_ibp_and_pgd_never_flips_inside():
    net = _small_net(1)
    x = torch.rand(1, 1, 8, 8)
    y = net(x).argmax(1)
    r_ibp = Certifier(net, "inf", "ibp").radius(x, y, 0.5)
    r_crown = Certifier(net, "inf", "crown").radius(x, y, 0.5)
    assert r_crown.radius >= r_ibp.radius
    assert r_crown.radius > 0 and r_crown.upper - r_crown.radius <= 1e-4 + 0.02 * r_crown.radius
    eps = r_crown.radius
    torch.manual_seed(5)
    for _ in range(5):  # PGD restarts on the cross-entropy loss
        delta = (2 * torch.rand_like(x) - 1) * eps
        delta.requires_grad_(True)
        for _ in range(25):
            loss = torch.nn.functional.cross_entropy(net((x + delta).clamp(0, 1)), y)
            (g,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta += eps / 8 * g.sign()
                delta.clamp_(-eps, eps)
        with torch.no_grad():
            assert net((x + delta).clamp(0, 1)).argmax(1) == y


def test_search_brackets_the_radius():
    net = _small_net(2)
    x = torch.rand(1, 1, 8, 8)
    y = net(x).argmax(1)
    cert = Certifier(net, "2", "crown")
    res = cert.radius(x, y, 5.0)
    assert float(cert.margins(x, y, res.radius).min()) > 0
    assert math.isinf(res.upper) or float(cert.margins(x, y, res.upper).min()) <= 0


def test_bad_arguments():
    net = _linear()
    x = torch.rand(1, 1, 6, 6)
    y = torch.tensor([0])
    with pytest.raises(CertifyError, match="unknown norm"):
        certify(net, x, y, 0.1, "1")
    with pytest.raises(CertifyError, match="unknown certification method"):
        certify(net, x, y, 0.1, "inf", "deepz")
    with pytest.raises(CertifyError, match="eps"):
        certify(net, x, y, -0.1)
    with pytest.raises(CertifyError, match="y must have shape"):
        certify(net, x, torch.tensor([0, 1]), 0.1)



def test_crown_at_least_ibp_through_maxpool():
    """auto_LiRPA's CROWN on the zoo LeNet-5: the radius search must not hand it the failed
    bound's intervals (they loosen its MaxPool relaxation below IBP, down to no radius at all)."""
    net = load("lenet5")
    x, y = load_dataset("mnist-t10k", "test", n=2)
    for i in range(2):
        ibp = Certifier(net, "inf", "ibp").radius(x[i:i + 1], y[i:i + 1], 0.5)
        crown = Certifier(net, "inf", "crown").radius(x[i:i + 1], y[i:i + 1], 0.5)
        assert crown.radius >= ibp.radius > 0


def test_alpha_crown_certifier_is_reused_across_calls():
    """One traced α-CROWN module serves calls whose unstable sets differ (other ε, other example)
    and gives each call the bound a fresh module gives it."""
    net = _small_net(3)
    torch.manual_seed(4)
    x = torch.rand(2, 1, 8, 8)
    y = net(x).argmax(1)
    shared = Certifier(net, "inf", "alpha-crown")
    for i, eps in ((0, 0.05), (0, 0.01), (1, 0.03), (0, 0.05)):
        a = shared.margins(x[i:i + 1], y[i:i + 1], eps)
        b = Certifier(net, "inf", "alpha-crown").margins(x[i:i + 1], y[i:i + 1], eps)
        assert torch.allclose(a, b, atol=1e-5)
