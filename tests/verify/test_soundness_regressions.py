"""Regression tests of three wrong certificates an audit found (issue 12); each failed before the fix.

1. Convolutions with reflect / replicate / circular padding were back-substituted as
   zero-padded ones by the dense CROWN engine.
2. An L2 ball through a ReLU applied to the input was bounded as the point x.
3. Adaptive solvers were certified along one clean input's step sequence (the last step
   clipped instead of interpolated), which the deployed model does not follow inside the ball.
"""

from dataclasses import replace

import pytest
import torch
from torch import nn

from models import ODENet, SolverConfig
from models.data import load_dataset
from models.zoo import load
from verify.certify import Certifier, CertifyError, certify
from verify.cli import main
from verify.run import RunSpec, certify_run, read_records
from verify.unroll import COVERS_SURROGATE, UnsupportedLayerError

from tests.verify._margin_attack import min_margins

SLACK = 1e-5


@pytest.fixture(scope="module")
def held_out():
    return load_dataset("mnist-t10k", "test")


def _padded_net(mode: str, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 4, stride=2, padding=1, padding_mode=mode), nn.ReLU(),
                         nn.Conv2d(4, 4, 4, 2, 1, padding_mode=mode), nn.ReLU(),
                         nn.Flatten(), nn.Linear(196, 10)).eval()


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular", "zeros"])
def test_padding_modes_are_bounded_soundly(mode, held_out):
    x, _ = held_out
    worst = float("inf")
    for seed in range(4):
        net = _padded_net(mode, seed)
        for i in range(2):
            xi = x[i:i + 1]
            with torch.no_grad():
                yi = net(xi).argmax(1)
            res = certify(net, xi, yi, 0.02, "inf", "crown")
            attacked = min_margins(net, xi, int(yi), 0.02, "inf")
            worst = min(worst, float((attacked - res.lower[0]).min()))
    # before the fix: 16-22 of 72 margins below the bound, by up to 0.0098 (reflect)
    assert worst >= -SLACK, worst


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_auto_lirpa_refuses_other_padding_modes_naming_the_layer(mode, held_out):
    x, _ = held_out
    net = _padded_net(mode, 0)
    y = net(x[:1]).argmax(1)
    with pytest.raises(UnsupportedLayerError, match=rf"model\.0 \(Conv2d, padding_mode='{mode}'\)"):
        certify(net, x[:1], y, 0.02, "inf", "crown", engine="auto_lirpa")
    with pytest.raises(UnsupportedLayerError, match="padding_mode"):
        certify(net, x[:1], y, 0.02, "inf", "ibp")


def _relu_first_net(x0: torch.Tensor) -> tuple[nn.Sequential, torch.Tensor]:
    """ReLU on the input, then a hidden unit that only moves inside the ball: class 0 unless
    w·(x − x0) grows, class 1 once it exceeds 1/9 (w ≥ 0 on background pixels, ‖w‖ = 1)."""
    net = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(784, 2), nn.ReLU(), nn.Linear(2, 10)).eval()
    w = (x0.flatten() == 0).float() * torch.rand(784, generator=torch.Generator().manual_seed(0))
    w = w / w.norm()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net[2].weight[0] = w
        net[2].bias[0] = -(w @ x0.flatten())
        net[4].bias[0] = 1.0
        net[4].weight[1, 0] = 9.0
    return net, w


def test_l2_ball_through_a_relu_on_the_input(held_out):
    x, _ = held_out
    xi = x[:1]
    net, w = _relu_first_net(xi)
    y = torch.tensor([0])
    x_adv = (xi + 0.5 * w.view(1, 1, 28, 28)).clamp(0, 1)
    assert float((x_adv - xi).norm()) <= 0.5 + 1e-6
    with torch.no_grad():
        adv_margin = float(net(x_adv)[0, 0] - net(x_adv)[0, 1])
    assert adv_margin == pytest.approx(-3.5, abs=1e-4)  # the point breaks class 0 inside the ball
    for method in ("crown", "alpha-crown"):  # the dense engines: the input's box, not the point x
        res = certify(net, xi, y, 0.5, "2", method)
        assert not bool(res.certified[0])
        assert float(res.lower[0, 0]) <= adv_margin + SLACK
    # auto_LiRPA 0.3 bounds this ball as the point x: its L2 path refuses the model
    for method, engine in (("crown", "auto_lirpa"), ("ibp", "auto"), ("forward", "auto"),
                           ("alpha-crown", "auto_lirpa")):
        with pytest.raises(CertifyError, match="as a point through Relu"):
            certify(net, xi, y, 0.5, "2", method, engine=engine)


def test_l2_through_an_affine_input_layer_still_uses_auto_lirpa(held_out):
    # Flatten -> Linear reads the input directly: auto_LiRPA's center ± ‖row‖·ε is sound there
    x, _ = held_out
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 20), nn.ReLU(), nn.Linear(20, 10)).eval()
    y = net(x[:1]).argmax(1)
    for method in ("ibp", "crown"):
        res = certify(net, x[:1], y, 0.3, "2", method, engine="auto_lirpa")
        attacked = min_margins(net, x[:1], int(y), 0.3, "2")
        assert float((attacked - res.lower[0]).min()) >= -SLACK


@pytest.fixture(scope="module")
def adaptive_ode():
    model = load("ode")
    model.solver = SolverConfig.adaptive("dopri5", tol=1e-1)
    return model


def test_adaptive_solver_is_refused_by_default(adaptive_ode, held_out):
    x, y = held_out
    xi, yi = x[62:63], y[62:63]  # official test index 8062
    with pytest.raises(CertifyError, match="adaptive solver.*--fixed-steps"):
        certify(adaptive_ode, xi, yi, 0.005)
    with pytest.raises(CertifyError, match="adaptive solver"):
        Certifier(adaptive_ode, "inf", "crown", x_clean=xi)


@pytest.mark.parametrize("engine", ["auto", "auto_lirpa"])
def test_fixed_step_surrogate_replays_the_solver_and_says_so(adaptive_ode, held_out, engine):
    x, y = held_out
    xi, yi = x[62:63], y[62:63]
    cert = Certifier(adaptive_ode, "inf", "crown", x_clean=xi, engine=engine, fixed_steps=True)
    with torch.no_grad():
        # before: the clipped last step put the unrolled graph 0.50 away in the logits
        assert float((cert.covered_model()(xi) - adaptive_ode(xi)).abs().max()) <= 1e-5
    assert cert.covers == COVERS_SURROGATE and COVERS_SURROGATE in cert.description
    res = certify(adaptive_ode, xi, yi, 0.002, "inf", "crown", engine=engine, fixed_steps=True)
    assert res.covers == COVERS_SURROGATE and COVERS_SURROGATE in res.description
    if engine == "auto":
        r = cert.radius(xi, yi, eps_max=0.5)
        assert r.covers == COVERS_SURROGATE and r.radius > 0


def test_certify_cli_refuses_adaptive_and_runs_the_surrogate_when_asked(tmp_path, capsys):
    code = main(["certify", "--model", "ode", "--solver", "dopri5:1e-1", "--n", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "adaptive solver" in err[0] and "--fixed-steps" in err[0]
    assert not (tmp_path / "r").exists()


def test_surrogate_run_records_and_summary_say_what_they_cover(tmp_path, held_out):
    x, y = held_out
    torch.manual_seed(0)
    net = ODENet(channels=2, solver=SolverConfig.adaptive("dopri5", tol=1e-2), input_size=28).eval()
    with torch.no_grad():
        y = net(x[:2]).argmax(1)  # correct by construction: the attack checks every certificate
    spec = RunSpec(model="tiny", norm="inf", methods=("crown",), n=2, eps=(0.01,))
    with pytest.raises(CertifyError, match="adaptive solver"):
        certify_run(spec, tmp_path / "refused", net, x[:2], y, progress=False)
    assert not (tmp_path / "refused").exists()
    summary = certify_run(replace(spec, fixed_steps=True), tmp_path / "run", net, x[:2], y, progress=False)
    recs = read_records(tmp_path / "run" / "results.jsonl")
    assert all(r["certificate_covers"] == COVERS_SURROGATE for r in recs)
    assert all(r["adaptive_distance"] <= 1e-5 for r in recs)
    assert all(COVERS_SURROGATE in r["lowering"] for r in recs)
    assert summary["certificate_covers"] == COVERS_SURROGATE
    assert COVERS_SURROGATE in summary["table"]
    assert summary["unsound_examples"] == 0


def _pooled_net(pool: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), pool, nn.Flatten(), nn.LazyLinear(10)).eval()


@pytest.mark.parametrize("pool", [nn.AvgPool2d(3, 2, padding=1), nn.AvgPool2d(3, 2, padding=1, count_include_pad=False),
                                  nn.AvgPool2d(2, ceil_mode=True)], ids=["padded", "exclude-pad", "ceil"])
def test_padded_average_pooling(pool, held_out):
    # found by the soundness campaign (benchmarks/soundness.py): auto_LiRPA 0.3 assumes an
    # unpadded pool, and its IBP / CROWN bounds of a padded one were beaten by PGD
    x, _ = held_out
    x = x[:1, :, ::2, ::2].contiguous()  # 14x14
    net = _pooled_net(pool)
    net(x)  # materialise the lazy layer
    net.input_shape = (1, 14, 14)
    y = net(x).argmax(1)
    for method, engine in (("ibp", "auto"), ("crown", "auto_lirpa")):
        with pytest.raises(UnsupportedLayerError, match="AvgPool2d"):
            certify(net, x, y, 0.05, "inf", method, engine=engine)
    res = certify(net, x, y, 0.05, "inf", "crown")  # the dense engine bounds the exact pooling matrix
    assert float((min_margins(net, x, int(y), 0.05, "inf") - res.lower[0]).min()) >= -SLACK


def test_l2_crown_through_a_strided_conv_that_skips_its_last_column():
    # found by the soundness campaign (trial 8906): auto_LiRPA 0.3's L2 concretisation of a
    # convolutional ("patches") bound dropped the output padding of a stride-2 convolution whose
    # transposed convolution does not reach the last input column, and its CROWN bound rose 3.3e-4
    # above an attacked point. The pre-activation bounds of a ReLU after two convolutions hold for
    # a linear map over the L2 ball, a·x + b ± ε‖a‖ per neuron at the tightest, and "patches" must
    # give what the dense "matrix" mode gives.
    torch.manual_seed(0)
    convs = nn.Sequential(nn.Conv2d(1, 3, 2, stride=2), nn.Conv2d(3, 1, 3, stride=2, padding=2))
    net = nn.Sequential(*convs, nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).eval()
    net.input_shape, net.num_classes = (1, 11, 13), 3
    x = torch.rand(1, 1, 11, 13)
    y = torch.tensor([int(net(x).argmax())])
    eps = 0.07
    jac = torch.autograd.functional.jacobian(lambda z: convs(z).flatten(), x).reshape(16, -1)
    with torch.no_grad():
        mid = convs(x).flatten()
    tightest = (mid - eps * jac.norm(dim=1), mid + eps * jac.norm(dim=1))
    got = {}
    for mode in ("patches", "matrix"):
        cert = Certifier(net, "2", "crown", 1, x, {"conv_mode": mode}, "auto_lirpa")
        margins = cert.margins(x, y, eps)[0]
        (lo, hi), = cert.reference().bounds.values()
        assert bool((lo.flatten() <= tightest[0] + 1e-6).all()), (mode, (lo.flatten() - tightest[0]).max())
        assert bool((hi.flatten() >= tightest[1] - 1e-6).all()), mode
        got[mode] = torch.cat([margins, lo.flatten(), hi.flatten()])
    assert torch.allclose(got["patches"], got["matrix"], atol=1e-6)


@pytest.mark.parametrize("time_channel", [False, True])
def test_dense_crown_on_a_field_whose_hidden_width_differs_from_its_channels(time_channel, held_out):
    # found by the soundness campaign: the dense engine built the second field convolution's matrix
    # on the state's shape instead of the hidden one and crashed ("expected input to have 3 channels")
    from models.fields import VerifiableField

    torch.manual_seed(0)
    net = ODENet(channels=2, solver=SolverConfig.fixed("rk4", 2), input_size=14, time_channel=time_channel).eval()
    net.block.field = VerifiableField(2, 5, time_channel)
    x = held_out[0][:1, :, ::2, ::2].contiguous()
    y = net(x).argmax(1)
    cert = Certifier(net, "inf", "crown", 1, x)
    assert cert.engine == "dense"
    lower = cert.margins(x, y, 0.02)[0]
    assert float((min_margins(net, x, int(y), 0.02, "inf") - lower).min()) >= -SLACK
    if not time_channel:  # auto_LiRPA gives the same CROWN bound
        ref = certify(net, x, y, 0.02, "inf", "crown", engine="auto_lirpa").lower[0]
        assert torch.allclose(lower, ref, atol=1e-5)


@pytest.mark.parametrize("method", ["ibp", "forward"])
def test_bias_free_last_linear_layer_through_auto_lirpa(method):
    # found by the soundness campaign: a bias-free nn.Linear exports as MatMul, whose auto_LiRPA 0.3
    # node took no specification ("interval_propagate() got an unexpected keyword argument 'C'").
    # On a linear net, IBP and the forward mode with the specification merged into the last
    # weight give the exact margin bound over the box: c·x − ε‖c‖₁ away from [0, 1]'s faces.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 4, bias=False)).eval()
    net.input_shape, net.num_classes = (1, 6, 6), 4
    x = 0.25 + 0.5 * torch.rand(1, 1, 6, 6)
    y = int(net(x).argmax())
    w = net[1].weight.detach()
    c = torch.stack([w[y] - w[j] for j in range(4) if j != y])
    eps = 0.1
    want = c @ x.flatten() - eps * c.abs().sum(1)
    got = certify(net, x, torch.tensor([y]), eps, "inf", method).lower[0]
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    deep = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 4, bias=False)).eval()
    deep.input_shape, deep.num_classes = (1, 6, 6), 4
    yd = int(deep(x).argmax())
    lower = certify(deep, x, torch.tensor([yd]), eps, "inf", method).lower[0]
    assert float((min_margins(deep, x, yd, eps, "inf") - lower).min()) >= -SLACK


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_time_channel_resnet_through_auto_lirpa(norm, held_out):
    # found by the soundness campaign: the time plane's per-position bias map (a parameter, then a
    # graph root) crashed auto_LiRPA 0.3 ("The expanded size of the tensor (14) must match the
    # existing size (3)", an assertion in its broadcast); it is now a buffer, bounded in "matrix"
    # mode, and gives the dense engine's CROWN bound
    from models import ResNet

    torch.manual_seed(3)
    net = ResNet(channels=3, n_blocks=2, time_channel=True, input_size=14).eval()
    x = held_out[0][:1, :, ::2, ::2].contiguous()
    y = net(x).argmax(1)
    eps = 0.01 if norm == "inf" else 0.05
    auto = certify(net, x, y, eps, norm, "crown", engine="auto_lirpa").lower[0]
    dense = certify(net, x, y, eps, norm, "crown").lower[0]
    assert torch.allclose(auto, dense, atol=1e-4), (auto - dense).abs().max()
    assert float((min_margins(net, x, int(y), eps, norm) - auto).min()) >= -SLACK


def test_auto_lirpa_failing_inside_its_code_is_one_clear_error():
    # found by the soundness campaign: a 2x2 max pooling that drops the last row of an 11x8 input
    # made auto_LiRPA 0.3 fail deep in a TorchScript kernel (the dense engine has no max pooling);
    # the user gets one EngineError naming it, and no bound
    from verify.certify import EngineError

    torch.manual_seed(0)
    net = nn.Sequential(nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(20, 3)).eval()
    net.input_shape, net.num_classes = (1, 11, 8), 3
    x = torch.rand(1, 1, 11, 8)
    y = net(x).argmax(1)
    for engine in ("auto", "auto_lirpa"):
        with pytest.raises(EngineError, match=r"auto_LiRPA 0\.3 could not bound this model \(RuntimeError"):
            certify(net, x, y, 0.02, "inf", "crown", engine=engine)
