"""The committed certified-training zoo models: their certificates survive per-margin PGD."""

import pytest
import torch

from models.data import load_dataset
from models.zoo import load_with_metadata
from verify import certify

from tests.verify._margin_attack import min_margins


@pytest.mark.parametrize("name,eps", [("ode-cert-0.1", 0.1), ("resnet-cert-0.1", 0.1), ("resnet-s1-cert-0.1", 0.1),
                                      ("ode-cert-0.1-wide", 0.1), ("ode-cert-0.3", 0.3)])
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
