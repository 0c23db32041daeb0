"""Lipschitz-margin certificates (Tsuzuku et al. 2018).

Let f map inputs to logits and let L be a Lipschitz constant of f from the input norm
‖·‖_p to an output norm ‖·‖_q. The prediction y = argmax f(x) with margin
M = f_y(x) − max_{j≠y} f_j(x) cannot change under ‖δ‖_p < r, where

* q = 2:   r = M / (√2 · L)   (f_y − f_j = ⟨e_y − e_j, f⟩ and ‖e_y − e_j‖_2 = √2),
* q = ∞:   r = M / (2 · L)    (each of f_y, f_j moves by at most L‖δ‖_p).

:func:`lipbound.network.network_bound` with ``norm="2"`` gives L for p = q = 2; with
``norm="inf"`` it gives L for p = q = ∞. An ℓ2 → ℓ2 constant also gives
L_{∞→2} ≤ √d · L_{2→2} for inputs of dimension d (:func:`linf_to_l2_lipschitz`).

References:
    Tsuzuku, Sato, Sugiyama, "Lipschitz-margin training: scalable certification of
    perturbation invariance for deep neural networks", NeurIPS 2018.
"""

from __future__ import annotations

import math

import torch

from .layers import _check_norm

__all__ = ["lipschitz_radius", "logit_margin", "linf_to_l2_lipschitz"]

_OUTPUT_CONSTANT = {"2": math.sqrt(2.0), "inf": 2.0}


def logit_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """f_y − max_{j≠y} f_j per example (negative when misclassified).

    Args:
        logits: (N, K), K ≥ 2.
        labels: (N,) int64.

    Raises:
        ValueError: shape mismatch or fewer than two classes.
    """
    if logits.dim() != 2 or logits.shape[1] < 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits (N, K>=2) and labels (N,), got {tuple(logits.shape)}, {tuple(labels.shape)}")
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)
    return true - other


def lipschitz_radius(margin: torch.Tensor, lipschitz: float, norm: str = "2",
                     output_norm: str | None = None) -> torch.Tensor:
    """Certified radius M / (c · L), clamped at 0 (no certificate for M ≤ 0).

    Args:
        margin: (N,) logit margins (:func:`logit_margin`).
        lipschitz: L of the logits from the ``norm`` input norm to ``output_norm``.
        norm: input norm, ``"2"`` or ``"inf"``; it names the norm of the radius.
        output_norm: output norm L was measured in; default the same as ``norm`` (as
            :func:`~lipbound.network.network_bound` computes). c = √2 for ``"2"``,
            2 for ``"inf"``.

    Returns:
        (N,) radii in the input norm (``inf`` where L = 0 and M > 0).

    Raises:
        ValueError: L negative or not finite-or-inf, unknown norm.
    """
    _check_norm(norm)
    out = _check_norm(norm if output_norm is None else output_norm)
    if not (lipschitz >= 0) or math.isnan(lipschitz):
        raise ValueError(f"Lipschitz constant must be >= 0, got {lipschitz}")
    margin = torch.as_tensor(margin)
    if torch.isnan(margin).any():
        raise ValueError("margin contains NaN")
    c = _OUTPUT_CONSTANT[out]
    if lipschitz == 0:
        return torch.where(margin > 0, torch.full_like(margin, math.inf), torch.zeros_like(margin))
    return margin.clamp_min(0) / (c * lipschitz)


def linf_to_l2_lipschitz(l2_lipschitz: float, input_dim: int) -> float:
    """L_{∞→2} ≤ √d · L_{2→2}, since ‖δ‖_2 ≤ √d ‖δ‖_∞."""
    if input_dim < 1:
        raise ValueError(f"input_dim must be >= 1, got {input_dim}")
    return math.sqrt(input_dim) * l2_lipschitz
