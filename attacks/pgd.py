"""Projected Gradient Descent (ascent on the loss) in an L∞ or L2 ball, with restarts.

References:
    Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import Attack, AttackError, _check_float, _check_int, _check_loss, attack_loss


#: what PGD returns per example (see :class:`PGD`).
OUTPUTS = ("best", "last")


class PGD(Attack):
    """Iterated steepest ascent x ← Π_{B(x0, ε) ∩ [0,1]^d}(x + α · d(∇loss)) from a random start.

    What is returned per example depends on ``output``:

    * ``"best"`` (default, for evaluation): every iterate the model is evaluated on is a
      candidate and the best one is kept (best = misclassified, else highest loss). An
      example stops iterating at its first misclassified iterate, since no later one could
      replace it: the output is what running every step would give, at a fraction of the
      work. With a single restart an example never misclassified gets its final iterate.
    * ``"last"``: every example runs every step and returns its final iterate, the loss
      maximiser of Madry et al. (what adversarial training trains on, and what torchattacks
      and foolbox return); with restarts, the final iterate of the best restart.

    Args:
        model: classifier returning logits.
        eps: ball radius (scalar, or (N,) per-example radii; ``math.inf``: unbounded).
        norm: ``"inf"`` or ``"2"``.
        steps: gradient steps per restart (>= 1).
        step_size: α; None uses 2.5 · ε / steps (Madry et al.), with ε capped at the
            diameter of [0, 1]^d.
        random_start: start from a uniform point of the ball (else from x).
        restarts: independent runs (>= 1); the best per example is kept.
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (Carlini–Wagner margin).
        output: ``"best"`` or ``"last"`` (above).
        seed, attack_solver, eval_solver: see :class:`~attacks.base.Attack`.

    Raises:
        AttackError: invalid ε, norm, steps, step size, restarts, loss or output.
    """

    name = "pgd"
    budget_arg = "steps"
    supports_eot = True

    def __init__(
        self,
        model: nn.Module,
        eps: float | torch.Tensor,
        norm: str = "inf",
        *,
        steps: int = 40,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        output: str = "best",
        seed: int | torch.Generator = 0,
        attack_solver: Any | None = None,
        eval_solver: Any | None = None,
    ) -> None:
        super().__init__(model, eps, norm, seed=seed, attack_solver=attack_solver, eval_solver=eval_solver)
        self.steps = _check_int("steps", steps, 1)
        self.step_size = None if step_size is None else _check_float("step_size", step_size, strict=True)
        self.random_start = bool(random_start)
        self.restarts = _check_int("restarts", restarts, 1)
        self.loss = _check_loss(loss)
        if output not in OUTPUTS:
            raise AttackError(f"unknown PGD output {output!r}; choose one of {', '.join(OUTPUTS)}")
        self.output = output

    def _alpha(self, x: torch.Tensor) -> float | torch.Tensor:
        if self.step_size is not None:
            return self.step_size
        return 2.5 * self._effective_eps(x) / self.steps

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        best_x = x.clone()
        best_loss = torch.full((n,), -math.inf, device=x.device)
        best_ok = torch.zeros(n, dtype=torch.bool, device=x.device)
        alpha_full = self._alpha(x)
        best = self.output == "best"

        def keep(idx: torch.Tensor, xa: torch.Tensor, ok: torch.Tensor, loss: torch.Tensor) -> None:
            prev_ok = best_ok[idx]
            better = (ok & ~prev_ok) | (~ok & ~prev_ok & (loss > best_loss[idx]))
            if better.any():
                rows = idx[better]
                best_x[rows] = xa[better]
                best_loss[rows] = loss[better]
                best_ok[rows] = ok[better]

        for restart in range(self.restarts):
            idx = torch.arange(n, device=x.device)
            if restart > 0 and best:
                idx = idx[~best_ok]
                if idx.numel() == 0:
                    break
            xs, ys, ball = x[idx], y[idx], self.ball.subset(idx)
            alpha = alpha_full if not isinstance(alpha_full, torch.Tensor) or alpha_full.dim() == 0 \
                else alpha_full[idx]
            xa = xs
            if self.random_start:
                xa = (xs + ball.random_start(xs.shape, self.generator, xs.device)).clamp(0.0, 1.0)
            for _ in range(self.steps):
                grad, logits, loss = self._loss_grad(xa, ys, self.loss, idx)
                self._iterations += 1
                if best:
                    ok = logits.argmax(dim=1) != ys
                    keep(idx, xa, ok, loss)
                    if ok.any():  # broken examples are done: drop them from the batch
                        live = ~ok
                        idx, xs, ys, xa, grad, ball = idx[live], xs[live], ys[live], xa[live], grad[live], \
                            ball.subset(live.nonzero().squeeze(1))
                        if isinstance(alpha, torch.Tensor) and alpha.dim() > 0:
                            alpha = alpha[live]
                        if idx.numel() == 0:
                            break
                xa = xa + alpha * ball.normalize_grad(grad)
                xa = (xs + ball.project(xa - xs)).clamp(0.0, 1.0)
            if idx.numel() == 0:
                continue
            if self.restarts == 1:
                # Single run: an example not yet broken gets the final iterate (Madry et al.'s
                # output) without spending a forward pass to score it.
                last = ~best_ok[idx]
                best_x[idx[last]] = xa[last]
            else:
                with torch.no_grad():
                    logits = self._forward(xa, idx)
                keep(idx, xa, logits.argmax(dim=1) != ys, attack_loss(self.loss, logits, ys))
        # a single "last" run never scored its final iterates: the template scores them
        self._known_success = best_ok if best or self.restarts > 1 else None
        return best_x


__all__ = ["OUTPUTS", "PGD"]
