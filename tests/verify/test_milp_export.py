"""Exact radii by MILP (verify._milp) and the VNN-COMP export (verify.export).

The MILP is the ground truth: its radius equals a brute-force grid search on a 2-input
network, lies between CROWN's certified radius and PGD's empirical one on random small
nets, its counterexamples misclassify, and its exact margins lie between CROWN's bounds
and what per-margin PGD reaches. The export's ONNX graph computes the model's logits under
onnxruntime and its VNN-LIB files parse back to the same box and specification.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from attacks.minimal_eps import minimal_eps
from models import MLP, ODENet, SolverConfig
from verify import Certifier, CertifyError, lower
from verify._milp import Milp, exact_radius
from verify._spec import spec_matrix
from verify._vnnlib import VnnlibError, read_vnnlib, robustness_property, write_vnnlib
from verify.cli import main
from verify.export import export_benchmark, export_onnx

from ._margin_attack import min_margins


def _toy(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    m.input_shape, m.num_classes = (1, 1, 2), 4
    return m.eval()


@pytest.mark.parametrize("seed,point", [(0, (0.4, 0.6)), (2, (0.5, 0.5)), (4, (0.1, 0.9))])
def test_radius_equals_grid_search_on_two_inputs(seed, point):
    model = _toy(seed)
    x = torch.tensor([[[point]]])
    y = int(model(x).argmax())
    res = exact_radius(model, x, y, eps_max=1.0, time_limit=30)
    n = 1001  # grid spacing 1e-3 over [0, 1]^2
    g = torch.linspace(0, 1, n)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 1, 2)
    with torch.no_grad():
        wrong = model(grid).argmax(1) != y
    dist = (grid - x).abs().flatten(1).max(1).values
    assert wrong.any()
    brute = float(dist[wrong].min())
    assert res.status == "optimal" and res.exact
    # a grid point is a counterexample: the minimum is at most its distance; the grid is 1e-3 fine
    assert res.radius <= brute + 1e-6
    assert brute - res.radius <= 1.5e-3
    assert res.lower == pytest.approx(res.radius, rel=2e-4, abs=1e-7)
    with torch.no_grad():
        out = model(res.counterexample)[0]
    assert float((res.counterexample - x).abs().max()) <= res.radius + 1e-7
    assert float(out[y] - out[res.target]) <= 1e-5  # misclassified, or a tie within float rounding


def test_robust_everywhere_is_reported_robust():
    model = _toy(1)  # the grid finds no other class anywhere in [0, 1]^2 for this net
    x = torch.tensor([[[[0.4, 0.6]]]])
    res = exact_radius(model, x, int(model(x).argmax()), eps_max=1.0)
    assert res.status == "robust" and math.isinf(res.radius) and res.lower == 1.0 and res.counterexample is None


def _small_nets() -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    mlp = MLP(hidden=(12, 12), input_size=6).eval()
    ode = ODENet(channels=2, solver=SolverConfig.fixed("euler", 2), input_size=8, head_pool=2).eval()
    rk = ODENet(channels=1, solver=SolverConfig.fixed("rk4", 1), input_size=8, time_channel=True).eval()
    return [("mlp", mlp, torch.rand(3, 1, 6, 6)), ("ode-euler2", ode, torch.rand(2, 1, 8, 8)),
            ("ode-rk4", rk, torch.rand(2, 1, 8, 8))]


@pytest.mark.parametrize("case", range(3))
def test_certified_le_exact_le_attack_on_random_nets(case):
    name, model, x = _small_nets()[case]
    with torch.no_grad():
        y = model(x).argmax(1)  # every example correctly classified by construction
    pgd = minimal_eps(model, x, y, "inf", "pgd", eps_max=1.0, tol=1e-4, seed=0)
    crown = Certifier(model, "inf", "crown")
    for i in range(x.shape[0]):
        xi, yi = x[i:i + 1], int(y[i])
        res = exact_radius(model, xi, yi, eps_max=1.0, time_limit=30, x_adv=pgd.x_adv[i:i + 1])
        assert res.exact, (name, i, res.status)
        certified = crown.radius(xi, y[i:i + 1], eps_max=1.0).radius
        assert certified <= res.lower + 1e-5, (name, i, certified, res.lower)
        assert res.radius <= float(pgd.eps[i]) + 1e-6, (name, i, res.radius, float(pgd.eps[i]))
        if math.isfinite(res.radius):
            with torch.no_grad():
                out = model(res.counterexample)[0]
            assert float(out[yi] - out[res.target]) <= 1e-4, (name, i)
            assert float((res.counterexample - xi).abs().max()) <= res.radius + 1e-7
            assert res.counterexample.min() >= 0 and res.counterexample.max() <= 1


def test_exact_margins_between_crown_and_per_margin_pgd():
    _, model, x = _small_nets()[1]
    ir = lower(model)
    engine, crown = Milp(ir, "inf", time_limit=30), Certifier(model, "inf", "crown", ir=ir)
    with torch.no_grad():
        y = model(x[:1]).argmax(1)
    eps = 0.05
    exact = engine.margins(x[:1], torch.tensor([eps]), spec_matrix(y, 10))[0]
    assert all(s.status == "Optimal" for s in engine.last_solutions)
    bound = crown.margins(x[:1], y, eps)[0]
    reached = min_margins(model, x[:1], int(y), eps, steps=100, restarts=5)
    assert (exact >= bound - 1e-5).all()
    assert (exact <= reached + 1e-5).all()
    # the radius is the ε at which the exact worst margin reaches 0
    _, model, x = _small_nets()[0]
    engine = Milp(lower(model), "inf", time_limit=30)
    with torch.no_grad():
        y = model(x[:1]).argmax(1)
    res = exact_radius(model, x[:1], int(y), eps_max=1.0, time_limit=30)
    assert math.isfinite(res.radius)
    below = engine.margins(x[:1], torch.tensor([0.98 * res.radius]), spec_matrix(y, 10))
    above = engine.margins(x[:1], torch.tensor([1.02 * res.radius]), spec_matrix(y, 10))
    assert float(below.min()) > 0 >= float(above.min())


def test_milp_method_and_bad_arguments():
    _, model, x = _small_nets()[0]
    cert = Certifier(model, "inf", "milp")
    assert cert.engine == "milp"
    with torch.no_grad():
        y = model(x[:1]).argmax(1)
    assert cert.margins(x[:1], y, 0.0).min() > 0
    with pytest.raises(CertifyError, match="L∞"):
        Certifier(model, "2", "milp")
    with pytest.raises(CertifyError, match="eps_max"):
        exact_radius(model, x[:1], int(y), eps_max=-1.0)
    with pytest.raises(CertifyError, match="one example"):
        exact_radius(model, x, int(y))
    lenet = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    lenet.input_shape, lenet.num_classes = (1, 6, 6), 3
    with pytest.raises(CertifyError, match="milp"):
        Certifier(lenet.eval(), "inf", "milp")


# ---- export ----------------------------------------------------------------------------------
def _onnx_logits(path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(x.shape[0])])


def test_onnx_logits_equal_the_models(tmp_path):
    from models.zoo import load

    torch.manual_seed(1)
    x = torch.rand(3, 1, 28, 28)
    for name, model in (("ode", load("ode")), ("small", _small_nets()[2][1])):
        xi = x if name == "ode" else x[:, :, :8, :8].contiguous()
        path = export_onnx(model, tmp_path / f"{name}.onnx")
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
        # plain operators every VNN-COMP verifier reads (the solver steps are unrolled into them)
        assert {n.op_type for n in graph.graph.node} <= {"Add", "Conv", "Flatten", "Gemm", "Identity", "Relu",
                                                        "AveragePool", "MatMul", "Mul", "Reshape"}
        with torch.no_grad():
            want = model(xi).numpy()
        # 1e-5 of the logits' scale: float32 rounding of a reassociated graph (zoo ode: 1.1e-5 on logits of
        # magnitude 30; the float32 model itself is 2.8e-6 away from its float64 self)
        np.testing.assert_allclose(_onnx_logits(path, xi), want, atol=1e-5 * max(1.0, float(np.abs(want).max())),
                                   rtol=0)


def test_vnnlib_round_trip_and_benchmark_layout(tmp_path):
    _, model, x = _small_nets()[1]
    with torch.no_grad():
        y = model(x).argmax(1)
    y[1] = (y[1] + 1) % 10  # misclassified: left out
    res = export_benchmark(model, "ode-tiny", x, y, 0.03, tmp_path, timeout=120)
    assert res.indices == (0,) and res.skipped == (1,)
    rows = (tmp_path / "instances.csv").read_text().splitlines()
    assert rows == ["onnx/ode-tiny.onnx,vnnlib/ode-tiny_0_eps0.03.vnnlib,120"]
    prop = read_vnnlib(res.properties[0])
    x0 = x[0].double().numpy().reshape(-1)
    np.testing.assert_array_equal(prop.lower, np.clip(x0 - 0.03, 0, 1))
    np.testing.assert_array_equal(prop.upper, np.clip(x0 + 0.03, 0, 1))
    yy = int(y[0])
    assert prop.num_outputs == 10
    assert set(prop.unsafe) == {((">=", f"Y_{j}", f"Y_{yy}"),) for j in range(10) if j != yy}
    # a hand-written property with nested and/or and numbers parses to the same structure it states
    want = robustness_property(np.zeros(2), np.ones(2), 1, 3)
    write_vnnlib(tmp_path / "p.vnnlib", want, "two inputs")
    got = read_vnnlib(tmp_path / "p.vnnlib")
    assert got.unsafe == want.unsafe and (got.lower == want.lower).all() and (got.upper == want.upper).all()
    (tmp_path / "bad.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0 1.0))\n")
    with pytest.raises(VnnlibError, match="lower and an upper"):
        read_vnnlib(tmp_path / "bad.vnnlib")


def test_export_cli(tmp_path, capsys):
    assert main(["export", "--model", "mlp", "--out", str(tmp_path / "b"), "--n", "2", "--eps", "0.01"]) == 0
    assert len((tmp_path / "b" / "instances.csv").read_text().splitlines()) >= 1
    for argv in (["export", "--model", "mlp", "--out", str(tmp_path), "--eps", "-1"],
                 ["export", "--model", "no-such-model", "--out", str(tmp_path)],
                 ["export", "--model", "mlp", "--out", str(tmp_path), "--n", "0"],
                 ["export", "--model", "ode-chen", "--out", str(tmp_path), "--n", "1"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:"), (argv, err)
