"""Empirical lower bounds on a network's Lipschitz constant.

Any local Jacobian norm ‖J(x)‖ and any observed ratio ‖f(x) − f(y)‖ / ‖x − y‖ is a lower
bound on the true constant. For classifiers the Jacobian has few rows, so ‖J(x)‖ is
computed exactly from its rows (spectral norm for ``"2"``, max row ℓ1 norm for
``"inf"``). Because ReLU networks have piecewise-constant Jacobians (zero gradient of
‖J(x)v‖ in x), the search moves x by gradient ascent on the finite-difference ratio
‖f(x + δ) − f(x)‖ / ‖δ‖ over both x and δ, and evaluates ‖J‖ at every visited point.

References:
    Scaman & Virmaux, "Lipschitz regularity of deep neural networks: analysis and
    efficient estimation", NeurIPS 2018.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .layers import _check_norm

__all__ = ["EmpiricalLipschitz", "jacobian_norm", "empirical_lipschitz", "pair_ratio"]


@dataclasses.dataclass(frozen=True)
class EmpiricalLipschitz:
    """Result of the lower-bound search.

    Attributes:
        norm: ``"2"`` or ``"inf"``.
        lower: the largest observed value (a valid lower bound on the Lipschitz constant).
        jacobian: largest local Jacobian norm seen.
        pair: largest finite-difference ratio seen.
        n_points: inputs searched from.
        steps: ascent steps per input.
    """

    norm: str
    lower: float
    jacobian: float
    pair: float
    n_points: int
    steps: int


def _flat_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    v = v.flatten(1)
    return v.norm(dim=1) if norm == "2" else v.abs().amax(dim=1)


def pair_ratio(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "2") -> torch.Tensor:
    """‖f(x) − f(y)‖ / ‖x − y‖ per example (same norm on both sides)."""
    norm = _check_norm(norm)
    with torch.no_grad():
        return _flat_norm(model(x) - model(y), norm) / _flat_norm(x - y, norm)


def jacobian_norm(model: nn.Module, x: torch.Tensor, norm: str = "2") -> torch.Tensor:
    """Induced norm of the Jacobian of the flattened output at each example of ``x``.

    The rows are obtained by one backward pass per output coordinate (fine for logits).

    Args:
        model: the map.
        x: (N, *input) inputs.
        norm: ``"2"`` (largest singular value) or ``"inf"`` (max row ℓ1 norm).

    Returns:
        (N,) float64 tensor.
    """
    norm = _check_norm(norm)
    x = x.detach().clone().requires_grad_(True)
    out = model(x).flatten(1)
    rows = []
    for i in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, i].sum(), x, retain_graph=i + 1 < out.shape[1])
        rows.append(g.flatten(1).double())
    jac = torch.stack(rows, dim=1)
    if norm == "2":
        return torch.linalg.matrix_norm(jac, 2)
    return jac.abs().sum(dim=2).amax(dim=1)


def empirical_lipschitz(model: nn.Module, x: torch.Tensor, norm: str = "2", steps: int = 20,
                        radius: float = 0.05, lr: float = 0.02, seed: int = 0) -> EmpiricalLipschitz:
    """Lower-bound a model's Lipschitz constant by search from inputs ``x``.

    Args:
        model: classifier in eval mode.
        x: (N, C, H, W) starting inputs (e.g. held-out images).
        norm: ``"2"`` or ``"inf"``.
        steps: ascent steps.
        radius: ‖δ‖ of the finite-difference pairs.
        lr: ascent step on x (pixel units).
        seed: seed of the initial δ.

    Returns:
        an :class:`EmpiricalLipschitz`.

    Raises:
        ValueError: bad norm, steps < 0 or radius <= 0.
    """
    norm = _check_norm(norm)
    if steps < 0 or not radius > 0:
        raise ValueError(f"need steps >= 0 and radius > 0, got {steps}, {radius}")
    g = torch.Generator().manual_seed(seed)
    x = x.detach().clone()
    delta = torch.randn(x.shape, generator=g, dtype=x.dtype)

    def scale(d: torch.Tensor) -> torch.Tensor:
        if norm == "inf":
            return radius * d.sign()
        return radius * d / _flat_norm(d, "2").clamp_min(1e-12).view(-1, *[1] * (d.dim() - 1))

    delta = scale(delta)
    best_jac = float(jacobian_norm(model, x, norm).max())
    best_pair = 0.0
    for _ in range(steps):
        xv = x.clone().requires_grad_(True)
        dv = delta.clone().requires_grad_(True)
        ratio = _flat_norm(model(xv + dv) - model(xv), norm) / _flat_norm(dv, norm)
        best_pair = max(best_pair, float(ratio.detach().max()))
        gx, gd = torch.autograd.grad(ratio.sum(), (xv, dv))
        x = (x + lr * gx.sign()).clamp(0.0, 1.0).detach()
        delta = scale(delta + radius * gd / _flat_norm(gd, "2").clamp_min(1e-12).view(-1, *[1] * (gd.dim() - 1)))
        best_jac = max(best_jac, float(jacobian_norm(model, x, norm).max()))
    best_pair = max(best_pair, float(pair_ratio(model, x + delta, x, norm).max()))
    return EmpiricalLipschitz(norm, max(best_jac, best_pair), best_jac, best_pair, int(x.shape[0]), steps)
