"""Shared fixtures of the attack tests: small linear classifiers with analytic optima."""

from __future__ import annotations

import pytest
import torch

from models import MLP


def linear_problem(seed: int = 0, n: int = 48, size: int = 8, classes: int = 2):
    """A linear classifier on size x size images, inputs in [0.3, 0.7] labelled by the model.

    Returns:
        (model, x, y, minimal L∞ radius, minimal L2 radius); the radii are analytic
        (margin / ‖w_y − w_j‖_dual) and small enough that the box [0, 1] is never active.
    """
    torch.manual_seed(seed)
    model = MLP(hidden=(), input_size=size, num_classes=classes).eval()
    x = 0.3 + 0.4 * torch.rand(n, 1, size, size)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = model.net[1].weight.detach()
    zy = z.gather(1, y[:, None])
    diff = w[y][:, None, :] - w[None, :, :].expand(n, -1, -1)  # (n, K, d): w_y - w_j
    gap = (zy - z)  # (n, K)
    l1 = diff.abs().sum(-1)
    l2 = diff.norm(dim=-1)
    big = torch.full_like(gap, float("inf"))
    own = torch.nn.functional.one_hot(y, classes).bool()
    r_inf = torch.where(own, big, gap / l1).amin(1)
    r_2 = torch.where(own, big, gap / l2).amin(1)
    # The optimal perturbations change no pixel by more than 0.3, so the box never binds.
    peak = (diff.abs().amax(-1) / l2).nan_to_num(0).amax(1)
    assert float(r_inf.max()) < 0.3 and float((r_2 * peak).max()) < 0.3
    return model, x, y, r_inf, r_2


@pytest.fixture(name="linear")
def _linear_fixture():
    """The :func:`linear_problem` factory (conftest is not importable in importlib mode)."""
    return linear_problem
