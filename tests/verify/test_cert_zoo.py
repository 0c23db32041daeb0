"""The committed certified-training zoo models: their certificates survive per-margin PGD."""

import pytest
import torch

from models.data import load_dataset
from models.zoo import load_with_metadata
from verify import certify

from tests.verify._margin_attack import min_margins


@pytest.mark.parametrize("name,eps", [("ode-cert-0.1", 0.1), ("resnet-cert-0.1", 0.1), ("resnet-s1-cert-0.1", 0.1),
                                      ("ode-cert-0.1-wide", 0.1), ("ode-cert-0.3", 0.3), ("ode-cert-0.1-mtl", 0.1),
                                      ("ode-cert-0.1-mtl-ibp", 0.1), ("resnet-cert-0.1-mtl", 0.1),
                                      ("resnet-cert-0.1-mtl-ibp", 0.1)])
def test_certified_zoo_models_are_certified_and_unbeaten(name, eps):
    x, y = load_dataset("mnist-t10k", "test")
    x, y = x[:3], y[:3]
    model, meta = load_with_metadata(name)
    assert meta["certified_accuracy"]["eps"] == eps and meta["certified_accuracy"]["n"] == 2000
    for method in ("ibp", "crown"):
        res = certify(model, x, y, eps, "inf", method)
        for i in range(3):
            attacked = min_margins(model, x[i:i + 1], int(y[i]), eps, "inf", steps=40, restarts=2)
            assert float((attacked - res.lower[i]).min()) >= -1e-5, (name, method, i)
    assert bool(res.certified.any())  # not vacuous: IBP-trained models certify at their ε


@pytest.mark.parametrize("name", ["ode-cert-0.1-mtl", "ode-cert-0.1-mtl-ibp"])
def test_mtl_ibp_trained_fields_are_alive(name):
    from models import SolverConfig
    from models.activity import field_activity

    x, _ = load_dataset("mnist-t10k", "test")
    x = x[:100]
    model, _ = load_with_metadata(name)
    assert field_activity(model, x)["block.field.act"] > 0.1
    with torch.no_grad():
        base = model(x)
        model.block.solver = SolverConfig.fixed("rk4", 4, T=1.0)
        assert float((model(x) - base).abs().max()) > 0.1  # a live field: the solver matters


def test_branch_and_bound_on_a_certified_zoo_model_survives_per_margin_pgd():
    """Above the training ε IBP and CROWN leave ode-cert-0.1's images open and BaB decides them
    (benchmarks.cert_targets' last stage): its bounds stay below every margin PGD reaches."""
    import time

    from verify import BranchAndBound, lower, spec_matrix

    x, y = load_dataset("mnist-t10k", "test")
    model, _ = load_with_metadata("ode-cert-0.1")
    eps, idx = 0.13, [4, 10]  # at 0.13: IBP and CROWN fail on both; BaB verifies image 4 (tens of subdomains)
    assert not bool(certify(model, x[idx], y[idx], eps, "inf", "crown").certified.any())
    bab = BranchAndBound(lower(model), "inf", time_limit=5.0, clock=time.process_time)
    statuses = []
    for i in idx:
        v = bab.verdict(x[i:i + 1], eps, spec_matrix(y[i:i + 1], 10)[0])
        statuses.append(v.status)
        attacked = min_margins(model, x[i:i + 1], int(y[i]), eps, "inf", steps=40, restarts=2)
        assert float((attacked - v.lower).min()) >= -1e-5, (i, v.status)
        assert v.domains > 1
    assert statuses[0] == "verified"
