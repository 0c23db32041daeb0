"""Lipschitz-margin radii: formula, and soundness on a linear classifier."""

from __future__ import annotations

import math

import pytest
import torch

from lipbound import linf_to_l2_lipschitz, lipschitz_radius, logit_margin, network_bound
from models.lenet import MLP


def test_formula_and_edge_cases() -> None:
    m = torch.tensor([1.0, -0.5, 0.0])
    assert torch.allclose(lipschitz_radius(m, 2.0, "2"), torch.tensor([1 / (2 * math.sqrt(2)), 0.0, 0.0]))
    assert torch.allclose(lipschitz_radius(m, 2.0, "inf"), torch.tensor([0.25, 0.0, 0.0]))
    assert torch.allclose(lipschitz_radius(m, 2.0, "inf", output_norm="2"),
                          torch.tensor([1 / (2 * math.sqrt(2)), 0.0, 0.0]))
    assert lipschitz_radius(m, 0.0, "2")[0] == math.inf
    with pytest.raises(ValueError):
        lipschitz_radius(m, -1.0, "2")
    with pytest.raises(ValueError):
        lipschitz_radius(m, 1.0, "1")
    assert linf_to_l2_lipschitz(2.0, 784) == pytest.approx(56.0)
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    assert torch.allclose(logit_margin(logits, torch.tensor([1, 1])), torch.tensor([1.0, -5.0]))


def test_certified_radius_below_exact_linear_distance() -> None:
    torch.manual_seed(0)
    model = MLP(hidden=()).eval()
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    w = model.net[-1].weight.detach().double()
    for norm, dual in (("2", 2), ("inf", 1)):
        bound = network_bound(model, norm).total
        radius = lipschitz_radius(logit_margin(logits, y), bound, norm).double()
        for i in range(32):
            diffs = w[y[i]] - w  # (K, d)
            gaps = (logits[i, y[i]] - logits[i]).double()
            mask = torch.arange(10) != y[i]
            exact = (gaps[mask] / diffs[mask].norm(p=dual, dim=1)).min()
            assert radius[i] <= exact + 1e-9
            assert radius[i] > 0
