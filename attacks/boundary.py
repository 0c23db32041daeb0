"""Boundary Attack: a decision-based (label-only) random walk along the decision boundary.

References:
    Brendel, Rauber & Bethge, "Decision-Based Adversarial Attacks: Reliable Attacks Against
    Black-Box Machine Learning Models", ICLR 2018.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import Attack, _check_float, _check_int


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class BoundaryAttack(Attack):
    """Decision-based L2 attack that only queries the predicted label.

    Start: per example, uniform noise images are drawn until one is misclassified
    (at most ``init_tries``), then a bisection over the blend (1 − λ) x + λ u finds the
    adversarial blend closest to x. Walk: each step proposes one candidate per example —
    an orthogonal step of relative size ``spherical_step`` on the sphere around x through
    the current point, followed by a step of relative size ``source_step`` towards x — and
    accepts it if it is still misclassified and closer. Step sizes adapt per example
    (Brendel et al. §3.2): every ``adapt_every`` steps both grow by ``step_adaptation``
    when more than half of the recent candidates were accepted, and shrink when fewer than
    a fifth were. The walk ends with a bisection on the segment towards x. Every model
    call counts as one query per example; an example stops at ``max_queries``.

    Args:
        model: classifier returning logits (only the arg-max is used).
        eps: optional L2 budget: results are projected onto the ball (default: unbounded).
        norm: must be ``"2"``.
        max_queries: query budget per example (initialisation and final bisection included).
        spherical_step: initial orthogonal step, relative to the current distance.
        source_step: initial step towards x, relative to the current distance.
        step_adaptation: factor of the step-size adaptation (> 1).
        adapt_every: steps between adaptations.
        init_tries: noise draws per example before giving up on it.
        bisection_steps: queries of each bisection (start and end).
        seed, attack_solver, eval_solver: see :class:`~attacks.base.Attack`.

    Raises:
        AttackError: a norm other than L2 or invalid hyper-parameters.
    """

    name = "boundary"
    supported_norms = ("2",)
    budget_arg = "max_queries"
    minimal = True

    def __init__(
        self,
        model: nn.Module,
        eps: float | torch.Tensor = math.inf,
        norm: str = "2",
        *,
        max_queries: int = 5000,
        spherical_step: float = 0.01,
        source_step: float = 0.01,
        step_adaptation: float = 1.5,
        adapt_every: int = 10,
        check_every: int = 5,
        init_tries: int = 50,
        bisection_steps: int = 10,
        seed: int | torch.Generator = 0,
        attack_solver: Any | None = None,
        eval_solver: Any | None = None,
    ) -> None:
        super().__init__(model, eps, norm, seed=seed, attack_solver=attack_solver, eval_solver=eval_solver)
        self.max_queries = _check_int("max_queries", max_queries, 1)
        self.spherical_step = _check_float("spherical_step", spherical_step, strict=True)
        self.source_step = _check_float("source_step", source_step, strict=True)
        self.step_adaptation = _check_float("step_adaptation", step_adaptation, minimum=1.0, strict=True)
        self.adapt_every = _check_int("adapt_every", adapt_every, 1)
        self.check_every = _check_int("check_every", check_every, 1)
        self.init_tries = _check_int("init_tries", init_tries, 1)
        self.bisection_steps = _check_int("bisection_steps", bisection_steps, 0)

    @torch.no_grad()
    def _is_adv(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self._forward(x, idx).argmax(dim=1) != y

    @torch.no_grad()
    def _bisect(self, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Closest adversarial point found on the segments [x, adv] (adv misclassified)."""
        lo = torch.zeros(x.shape[0], device=x.device)
        hi = torch.ones(x.shape[0], device=x.device)
        for _ in range(self.bisection_steps):
            room = self._queries[idx] < self.max_queries
            if not room.any():
                break
            mid = (lo + hi) / 2
            sel = room.nonzero().squeeze(1)
            cand = x[sel] + _bcast(mid[sel], x) * (adv[sel] - x[sel])
            ok = self._is_adv(cand, y[sel], idx[sel])
            hi[sel] = torch.where(ok, mid[sel], hi[sel])
            lo[sel] = torch.where(ok, lo[sel], mid[sel])
        return x + _bcast(hi, x) * (adv - x)

    @torch.no_grad()
    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        found, start = self._initial_adversarials(x, y)
        walk = (found & (self._queries < self.max_queries)).nonzero().squeeze(1)
        walk = walk[(start[walk] - x[walk]).flatten(1).norm(dim=1) > 0]
        if walk.numel() == 0:
            return best
        best[walk] = self._bisect(x[walk], start[walk], y[walk], walk)
        xs, ys = x[walk], y[walk]
        cur = self._walk(xs, ys, best[walk], walk)
        best[walk] = self._bisect(xs, cur, ys, walk)
        return best

    @torch.no_grad()
    def _initial_adversarials(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(found, start): per example, a misclassified uniform-noise image, or x when x is misclassified."""
        # Already misclassified examples need no search (their adversarial is x itself).
        found = self._is_adv(x, y, torch.arange(x.shape[0], device=x.device))
        start = x.clone()
        for _ in range(self.init_tries):
            todo = (~found & (self._queries < self.max_queries)).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            noise = self._rand((todo.numel(), *x.shape[1:]), x)
            ok = self._is_adv(noise, y[todo], todo)
            start[todo[ok]] = noise[ok]
            found[todo[ok]] = True
        return found, start

    @torch.no_grad()
    def _walk(self, xs: torch.Tensor, ys: torch.Tensor, cur: torch.Tensor, walk: torch.Tensor) -> torch.Tensor:
        """The random walk along the boundary from the adversarials ``cur`` of the examples ``walk``."""
        steps = _StepSizes(walk.numel(), self.spherical_step, self.source_step, xs.device)
        reserve = self.bisection_steps
        while True:
            check = (self._iterations + 1) % self.check_every == 0
            live = (self._queries[walk] < self.max_queries - reserve - int(check)).nonzero().squeeze(1)
            if live.numel() == 0:
                break
            self._iterations += 1
            d = cur[live] - xs[live]
            dist = d.flatten(1).norm(dim=1)
            moved = self._orthogonal_move(d, dist, steps.sph[live])
            cand = (xs[live] + moved * _bcast(1 - steps.src[live], d)).clamp(0.0, 1.0)
            ok = self._is_adv(cand, ys[live], walk[live])
            closer = (cand - xs[live]).flatten(1).norm(dim=1) < dist
            take = ok & closer
            cur[live[take]] = cand[take]
            steps.accepted[live] += take.float()
            steps.tried[live] += 1
            if check:
                # The orthogonal step alone: its success rate measures the boundary's curvature.
                steps.sph_ok[live] += self._is_adv((xs[live] + moved).clamp(0.0, 1.0), ys[live], walk[live]).float()
                steps.sph_tried[live] += 1
            steps.adapt(live, self.adapt_every, self.step_adaptation)
        return cur

    def _orthogonal_move(self, d: torch.Tensor, dist: torch.Tensor, sph: torch.Tensor) -> torch.Tensor:
        """A random step of relative size ``sph`` orthogonal to ``d``, back onto the sphere of radius ``dist``."""
        unit = d / _bcast(dist.clamp_min(1e-12), d)
        eta = self._randn(d.shape, d)
        eta = eta - unit * _bcast((eta * unit).flatten(1).sum(dim=1), d)
        eta = eta / _bcast(eta.flatten(1).norm(dim=1).clamp_min(1e-12), d)
        moved = d + eta * _bcast(sph * dist, d)
        return moved * _bcast(dist / moved.flatten(1).norm(dim=1).clamp_min(1e-12), d)


class _StepSizes:
    """Per-example step sizes of the walk and the acceptance counts that adapt them (Brendel et al. §3.2)."""

    def __init__(self, m: int, spherical_step: float, source_step: float, device: torch.device) -> None:
        self.sph = torch.full((m,), spherical_step, device=device)
        self.src = torch.full((m,), source_step, device=device)
        self.accepted = torch.zeros(m, device=device)
        self.tried = torch.zeros(m, device=device)
        self.sph_ok = torch.zeros(m, device=device)
        self.sph_tried = torch.zeros(m, device=device)

    def adapt(self, live: torch.Tensor, adapt_every: int, a: float) -> None:
        """Grow or shrink the steps of the examples ``live`` whose counts reached ``adapt_every``."""
        due = live[self.tried[live] >= adapt_every]
        if due.numel():
            rate = self.accepted[due] / self.tried[due]
            self.src[due] = torch.where(rate > 0.25, self.src[due] * a,
                                        torch.where(rate < 0.1, self.src[due] / a, self.src[due]))
            self.accepted[due] = 0
            self.tried[due] = 0
        due = live[self.sph_tried[live] >= adapt_every]
        if due.numel():
            rate = self.sph_ok[due] / self.sph_tried[due]
            factor = torch.where(rate > 0.5, a, torch.where(rate < 0.2, 1 / a, 1.0))
            self.sph[due] = (self.sph[due] * factor).clamp(max=1.0)
            self.src[due] = self.src[due] * factor
            self.sph_ok[due] = 0
            self.sph_tried[due] = 0
        self.src.clamp_(max=0.5)

__all__ = ["BoundaryAttack"]
