"""Per-margin PGD: the smallest value of each margin f_y − f_j found inside the ε-ball ∩ [0, 1].

A certified lower bound on a margin must not exceed what any point of the set attains; this
minimises every margin separately (restarts, sign steps for L∞, normalised steps for L2),
which reaches far lower than a misclassification attack on the margins it does not target.
"""

from __future__ import annotations

import torch
from torch import nn


def _project(x0: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    d = x - x0
    if norm == "inf":
        d = d.clamp(-eps, eps)
    else:
        n = d.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (d.dim() - 1)))
        d = d * (eps / n).clamp(max=1.0)
    # clipping to [0, 1] after the ball projection stays inside the ball (|x0 - clip| <= |d|)
    return (x0 + d).clamp(0, 1)


def min_margins(model: nn.Module, x: torch.Tensor, y: int, eps: float, norm: str = "inf", steps: int = 60,
                restarts: int = 3, seed: int = 0) -> torch.Tensor:
    """(K-1,) smallest margin f_y − f_j (j ≠ y, class order) found per margin, x of shape (1, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        k = model(x).shape[1]
    others = [j for j in range(k) if j != y]
    best = torch.full((len(others),), float("inf"))
    x0 = x.expand(len(others), *x.shape[1:]).clone()
    idx = torch.arange(len(others))
    js = torch.tensor(others)
    for r in range(restarts + 1):
        if r == 0:
            xa = x0.clone()
        elif norm == "inf":
            xa = _project(x0, x0 + eps * (2 * torch.rand(x0.shape, generator=g) - 1), eps, norm)
        else:
            d = torch.randn(x0.shape, generator=g)
            xa = _project(x0, x0 + eps * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1), eps, norm)
        for t in range(steps):
            xa.requires_grad_(True)
            out = model(xa)
            m = out[idx, y] - out[idx, js]
            with torch.no_grad():
                best = torch.minimum(best, m.detach())
            (grad,) = torch.autograd.grad(m.sum(), xa)
            step = eps * (2.5 / steps) * (1.0 - t / steps) + 1e-3 * eps
            with torch.no_grad():
                if norm == "inf":
                    xa = xa - step * grad.sign()
                else:
                    xa = xa - step * grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
                xa = _project(x0, xa, eps, norm)
        with torch.no_grad():
            out = model(xa)
            best = torch.minimum(best, out[idx, y] - out[idx, js])
    return best

