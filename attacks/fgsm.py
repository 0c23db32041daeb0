"""Fast Gradient Sign Method (L∞) and Fast Gradient Method (L2): one step of size ε.

References:
    Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
    (arXiv 2014).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Attack, _check_loss


class FGSM(Attack):
    """x_adv = x + ε · d, d the unit steepest-ascent direction of the loss (sign(∇) for L∞,
    ∇/‖∇‖₂ for L2), then clipped to [0, 1].

    Args:
        model: classifier returning logits.
        eps: step size = ball radius (scalar or (N,) tensor; ``math.inf`` uses the diameter of [0, 1]^d).
        norm: ``"inf"`` (FGSM) or ``"2"`` (FGM).
        loss: ``"ce"`` or ``"margin"``.
        seed, attack_solver, eval_solver: see :class:`~attacks.base.Attack`.

    Raises:
        AttackError: invalid ε, norm or loss.
    """

    name = "fgsm"
    supports_eot = True

    def __init__(self, model: nn.Module, eps: float | torch.Tensor, norm: str = "inf", *, loss: str = "ce",
                 seed: int | torch.Generator = 0, attack_solver: Any | None = None,
                 eval_solver: Any | None = None) -> None:
        super().__init__(model, eps, norm, seed=seed, attack_solver=attack_solver, eval_solver=eval_solver)
        self.loss = _check_loss(loss)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grad, _, _ = self._loss_grad(x, y, self.loss)
        self._iterations = 1
        return x + self._effective_eps(x) * self.ball.normalize_grad(grad)


class FGM(FGSM):
    """:class:`FGSM` with the L2 norm by default (the Fast Gradient Method)."""

    name = "fgm"

    def __init__(self, model: nn.Module, eps: float | torch.Tensor, norm: str = "2", **kwargs: Any) -> None:
        super().__init__(model, eps, norm, **kwargs)


__all__ = ["FGM", "FGSM"]
