"""Slow: certificates on the real zoo ODE-net hold against strong attacks (``make test-slow``)."""

from __future__ import annotations

import pytest
import torch

from attacks import PGD
from attacks.minimal_eps import minimal_eps
from models.zoo import available, load
from verify.certify import Certifier

pytestmark = pytest.mark.slow


@pytest.mark.skipif("ode" not in available(), reason="zoo model ode not trained")
def test_crown_radius_of_zoo_ode_is_never_beaten_by_pgd() -> None:
    from models.data import load_dataset

    torch.manual_seed(0)
    model = load("ode")
    x, y = load_dataset("mnist-t10k", "test", n=2)
    cert = Certifier(model, norm="inf", method="crown")
    for i in range(2):
        xi, yi = x[i:i + 1], y[i:i + 1]
        r = cert.radius(xi, yi, eps_max=0.1)
        assert r.radius > 0, "a correctly classified zoo example should have a positive CROWN radius"
        # Certified => no attack succeeds inside the radius, however hard it tries.
        res = PGD(model, r.radius, "inf", steps=100, restarts=5, loss="margin", seed=i)(xi, yi)
        assert not bool(res.success.any())
        # ... and the empirical radius is never below the certified one (soundness).
        emp = minimal_eps(model, xi, yi, norm="inf", attack="pgd", eps_max=1.0, tol=1e-3, steps=40)
        assert float(emp.eps[0]) >= r.radius
