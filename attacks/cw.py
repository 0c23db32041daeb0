"""Carlini–Wagner L2 attack: minimal-norm adversarial examples by optimisation.

References:
    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from .base import Attack, _check_float, _check_int, margin

#: Factors by which CW lengthens an adversarial that the final scoring pass does not confirm.
CONFIRM_SCALES: tuple[float, ...] = (1.01, 1.02, 1.05, 1.1, 1.25, 1.5)
#: The one set of default hyper-parameters (the CLI, ``verify.compare`` and
#: ``benchmarks/attacks_vs_peers.py`` use these). Not Carlini & Wagner's c0 = 1e-3 and
#: lr = 1e-2, which they ran for 1,000-10,000 Adam steps: MNIST pixels sit at 0 or 1, where
#: the tanh variable starts at w = ±atanh(0.999999) ≈ ±7.25 (dx/dw ≈ 1e-6). Adam moves w by
#: about lr per step, so at lr = 1e-2 a saturated pixel needs ~500 steps before it changes,
#: and c0 = 1e-3 spends the first rounds on a constant too small to cross the boundary. In
#: 100 steps those settings broke ~30 % of undefended LeNet-5, ODE-net and ResNet; these break
#: all of them (``benchmarks/results/cw_defaults.md``).
CW_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "steps": 100, "binary_search_steps": 5, "initial_const": 1.0, "confidence": 0.0, "lr": 0.1,
    "abort_early": True,
})


class CW(Attack):
    """Minimise ‖δ‖₂² + c · max(z_y − max_{j≠y} z_j + κ, 0) over x + δ = (tanh(w) + 1) / 2.

    The tanh change of variables keeps every iterate in [0, 1]; w is optimised with Adam.
    A per-example binary search over c (``binary_search_steps`` rounds, starting at
    ``initial_const``; ×10 while no adversarial is found, bisection afterwards) trades
    norm for success. The smallest-L2 misclassified iterate seen is returned (x itself
    where none was found, which then counts as a failure), after one scoring pass of the
    returned batch (see :meth:`_confirm`).

    Defaults are :data:`CW_DEFAULTS` (100 steps, 5 rounds, c0 = 1, lr = 0.1).

    Args:
        model: classifier returning logits.
        eps: optional L2 budget: results are projected onto the ball (default: unbounded).
        norm: must be ``"2"``.
        steps: Adam steps per binary-search round.
        binary_search_steps: rounds of the search over c.
        initial_const: first value of c.
        confidence: κ, the required logit margin.
        lr: Adam learning rate (in w-space; pixels at 0 or 1 start at |w| ≈ 7.25).
        abort_early: end a round when the batch loss has not decreased by 0.01 % over the
            last ``ceil(steps / 10)`` steps (as in Carlini & Wagner's code), once it has moved
            from its starting value by 0.01 %: pixels at 0 or 1 need tens of steps before they
            move at all, and stopping on that initial plateau would end every round on binary images.
        seed, attack_solver, eval_solver: see :class:`~attacks.base.Attack`.

    Raises:
        AttackError: a norm other than L2 or invalid hyper-parameters.
    """

    name = "cw"
    supported_norms = ("2",)
    budget_arg = "steps"
    minimal = True

    def __init__(
        self,
        model: nn.Module,
        eps: float | torch.Tensor = math.inf,
        norm: str = "2",
        *,
        steps: int = CW_DEFAULTS["steps"],
        binary_search_steps: int = CW_DEFAULTS["binary_search_steps"],
        initial_const: float = CW_DEFAULTS["initial_const"],
        confidence: float = CW_DEFAULTS["confidence"],
        lr: float = CW_DEFAULTS["lr"],
        abort_early: bool = CW_DEFAULTS["abort_early"],
        seed: int | torch.Generator = 0,
        attack_solver: Any | None = None,
        eval_solver: Any | None = None,
    ) -> None:
        super().__init__(model, eps, norm, seed=seed, attack_solver=attack_solver, eval_solver=eval_solver)
        self.steps = _check_int("steps", steps, 1)
        self.binary_search_steps = _check_int("binary_search_steps", binary_search_steps, 1)
        self.initial_const = _check_float("initial_const", initial_const, strict=True)
        self.confidence = _check_float("confidence", confidence)
        self.lr = _check_float("lr", lr, strict=True)
        self.abort_early = bool(abort_early)

    def _is_adv(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = margin(logits, y)
        return m > self.confidence if self.confidence > 0 else m > 0

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        dev = x.device
        w0 = torch.atanh((2 * x - 1).clamp(-1, 1) * 0.999999)
        best_x = x.clone()
        best_l2 = torch.full((n,), math.inf, device=dev)
        const = torch.full((n,), self.initial_const, device=dev)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), math.inf, device=dev)
        check_every = max(1, math.ceil(self.steps / 10))
        b1, b2, tiny = 0.9, 0.999, 1e-8
        for _ in range(self.binary_search_steps):
            mod = torch.zeros_like(x)
            m1 = torch.zeros_like(x)
            m2 = torch.zeros_like(x)
            found = torch.zeros(n, dtype=torch.bool, device=dev)
            prev = start = math.inf
            for step in range(1, self.steps + 1):
                mod.requires_grad_(True)
                xa = (torch.tanh(w0 + mod) + 1) / 2
                logits = self._forward(xa)
                l2sq = (xa - x).flatten(1).pow(2).sum(dim=1)
                hinge = (self.confidence - margin(logits, y)).clamp_min(0)
                loss = l2sq + const * hinge
                (g,) = torch.autograd.grad(loss.sum(), mod)
                self._iterations += 1
                with torch.no_grad():
                    adv = self._is_adv(logits, y)
                    l2 = l2sq.sqrt()
                    improved = adv & (l2 < best_l2)
                    best_l2 = torch.where(improved, l2, best_l2)
                    best_x = torch.where(improved.view(-1, *([1] * (x.dim() - 1))), xa.detach(), best_x)
                    found |= adv
                    m1 = b1 * m1 + (1 - b1) * g
                    m2 = b2 * m2 + (1 - b2) * g * g
                    step_dir = (m1 / (1 - b1 ** step)) / ((m2 / (1 - b2 ** step)).sqrt() + tiny)
                    mod = mod.detach() - self.lr * step_dir
                    if self.abort_early and (step == 1 or step % check_every == 0):
                        total = float(loss.sum())
                        start = total if step == 1 else start
                        # stalled, and not on the initial plateau (saturated pixels still at rest)
                        if step % check_every == 0:
                            if total > 0.9999 * prev and abs(total - start) > 1e-4 * abs(start):
                                break
                            prev = total
            # c: bisection once an adversarial was found, else grow tenfold.
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isfinite(upper), (lower + upper) / 2, const * 10)
        return self._confirm(x, y, best_x, torch.isfinite(best_l2))

    def _confirm(self, x: torch.Tensor, y: torch.Tensor, best_x: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
        """Score the returned batch in one pass; push each adversarial it no longer confirms further out.

        Minimal adversarials sit on the decision boundary, and an adaptive solver (dopri5) shares
        its step control across the batch: a point found misclassified by 1e-3 logits among one
        batch of iterates can score correctly in the batch of returned points. Such a point
        becomes x + s·δ for the first s in :data:`CONFIRM_SCALES` that the pass confirms.

        Args:
            x: (N, C, H, W) clean inputs.
            y: (N,) labels.
            best_x: (N, C, H, W) the search's smallest-L2 adversarials (x where none was found).
            found: (N,) bool, an adversarial was found.

        Returns:
            (N, C, H, W) the points to return.
        """
        delta = best_x - x
        out = best_x
        shape = (-1, *([1] * (x.dim() - 1)))
        lost = torch.zeros_like(found)
        for scale in (1.0, *CONFIRM_SCALES):
            if scale != 1.0:
                step = scale * delta
                if self.ball.bounded:
                    step = self.ball.project(step)
                out = torch.where(lost.view(shape), (x + step).clamp(0.0, 1.0), out)
            with torch.no_grad():
                lost = found & ~self._is_adv(self._forward(out), y)
            if not bool(lost.any()):
                break
        return out


__all__ = ["CW", "CW_DEFAULTS"]
