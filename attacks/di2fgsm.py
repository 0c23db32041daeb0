"""Diverse-inputs iterative FGSM (DI²-FGSM), with optional momentum (DI-MI-FGSM).

References:
    Xie, Zhang, Zhou, Bai, Wang, Ren & Yuille, "Improving Transferability of Adversarial
    Examples with Input Diversity", CVPR 2019.
    Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018 (momentum).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Attack, AttackError, _check_float, _check_int, _check_loss, attack_loss


class DI2FGSM(Attack):
    """Iterative FGSM whose gradients are taken through a random resize-and-pad of the input.

    At every step, with probability ``prob``, the batch is shrunk to a random side
    s ∈ [⌊resize_rate · H⌋, H) (nearest neighbour) and zero-padded back to H × W at a random
    offset; the gradient of the loss of the transformed input drives the step. With
    ``momentum`` μ > 0 the direction is the sign / L2-normalisation of the accumulated
    g ← μ g + ∇ / ‖∇‖₁ (DI-MI-FGSM).

    Args:
        model: classifier returning logits.
        eps: ball radius (scalar or (N,)).
        norm: ``"inf"`` or ``"2"``.
        steps: iterations.
        step_size: α; None uses ε / steps.
        prob: probability of applying the transformation at a step.
        resize_rate: smallest relative side of the shrunk image, in (0, 1].
        momentum: μ >= 0 (0: plain DI²-FGSM).
        loss: ``"ce"`` or ``"margin"``.
        seed, attack_solver, eval_solver: see :class:`~attacks.base.Attack`.

    Raises:
        AttackError: invalid hyper-parameters.
    """

    name = "di2fgsm"
    budget_arg = "steps"
    supports_eot = True

    def __init__(
        self,
        model: nn.Module,
        eps: float | torch.Tensor,
        norm: str = "inf",
        *,
        steps: int = 10,
        step_size: float | None = None,
        prob: float = 0.5,
        resize_rate: float = 0.9,
        momentum: float = 0.0,
        loss: str = "ce",
        seed: int | torch.Generator = 0,
        attack_solver: Any | None = None,
        eval_solver: Any | None = None,
    ) -> None:
        super().__init__(model, eps, norm, seed=seed, attack_solver=attack_solver, eval_solver=eval_solver)
        self.steps = _check_int("steps", steps, 1)
        self.step_size = None if step_size is None else _check_float("step_size", step_size, strict=True)
        self.prob = _check_float("prob", prob)
        if self.prob > 1:
            raise AttackError(f"prob must lie in [0, 1], got {prob!r}")
        self.resize_rate = _check_float("resize_rate", resize_rate, strict=True)
        if self.resize_rate > 1:
            raise AttackError(f"resize_rate must lie in (0, 1], got {resize_rate!r}")
        self.momentum = _check_float("momentum", momentum)
        self.loss = _check_loss(loss)

    def _diverse(self, x: torch.Tensor) -> torch.Tensor:
        """Random shrink-and-pad of the whole batch, applied with probability ``prob``."""
        if float(torch.rand((), generator=self.generator)) >= self.prob:
            return x
        h, w = x.shape[-2:]
        low = max(1, int(self.resize_rate * h))
        if low >= h:
            return x
        side = int(torch.randint(low, h, (), generator=self.generator))
        top = int(torch.randint(0, h - side + 1, (), generator=self.generator))
        left = int(torch.randint(0, w - side + 1, (), generator=self.generator))
        small = F.interpolate(x, size=(side, side), mode="nearest")
        return F.pad(small, (left, w - side - left, top, h - side - top), value=0.0)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        alpha = self.step_size if self.step_size is not None else self._effective_eps(x) / self.steps
        xa = x.clone()
        accum = torch.zeros_like(x)
        for _ in range(self.steps):
            xr = xa.detach().requires_grad_(True)
            grad = torch.zeros_like(x)
            for _ in range(self.grad_samples):
                value = attack_loss(self.loss, self._forward(self._diverse(xr)), y)
                grad = grad + torch.autograd.grad(value.sum(), xr)[0]
            self._iterations += 1
            if self.momentum > 0:
                l1 = grad.abs().flatten(1).sum(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                accum = self.momentum * accum + grad / l1
                grad = accum
            xa = xa + alpha * self.ball.normalize_grad(grad)
            xa = (x + self.ball.project(xa - x)).clamp(0.0, 1.0)
        return xa


__all__ = ["DI2FGSM"]
