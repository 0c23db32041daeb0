"""Square Attack: score-based random search with square-shaped updates (no gradients).

References:
    Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
    adversarial attack via random search", ECCV 2020 (Algorithms 1-3, the schedule of the
    square size p, the stripe and pseudo-Gaussian initialisations).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import Attack, AttackError, _check_float, _check_int, margin

#: Query counts at which the fraction p of pixels in a square halves, on the paper's 10,000-query scale.
P_HALVINGS: tuple[int, ...] = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, query: int, budget: int) -> float:
    """The paper's piecewise-constant schedule of p, rescaled from 10,000 queries to ``budget``."""
    it = int(query / budget * 10000)
    return p_init / 2 ** sum(1 for h in P_HALVINGS if it > h)


def _rect_bump(h: int, w: int) -> torch.Tensor:
    """(h, w) unit-norm pyramid of nested rectangles, weight 1/(r+1)² for ring r (the paper's M(r, s))."""
    out = torch.zeros(h, w)
    ch, cw = h // 2, w // 2
    for r in range(max(ch, cw) + 1):
        out[max(ch - r, 0):min(ch + r + 1, h), max(cw - r, 0):min(cw + r + 1, w)] += 1.0 / (r + 1) ** 2
    return out / out.norm()


def pseudo_gaussian(s: int, transpose: bool) -> torch.Tensor:
    """(s, s) unit-norm update of the L2 attack: two bumps of opposite sign side by side."""
    out = torch.cat([_rect_bump(s // 2, s), -_rect_bump(s - s // 2, s)], dim=0)
    out = out / out.norm()
    return out.t() if transpose else out


class Square(Attack):
    """Random search on the ε-sphere: each query changes one random square of side ⌈√(p·d/C)⌉.

    L∞: start from vertical stripes of ±ε; a step sets the square to ±ε per channel. L2: start
    from a grid of pseudo-Gaussian bumps scaled to norm ε; a step moves the perturbation's mass
    from a second random square into the first, keeping ‖δ‖₂ = ε. A step is kept when it lowers
    the margin loss z_y − max_{j≠y} z_j; an example stops once misclassified. p follows the
    paper's schedule from ``p_init``. No gradients: the attack sees only the model's logits.

    Args:
        model: classifier returning logits.
        eps: ball radius (scalar or (N,) radii; ``math.inf`` is capped at the diameter of [0, 1]^d).
        norm: ``"inf"`` or ``"2"``.
        queries: forward passes per example, the initial one included (>= 1).
        p_init: initial fraction of the image a square covers (0 < p_init <= 1).
        seed, attack_solver, eval_solver: see :class:`~attacks.base.Attack`.

    Raises:
        AttackError: invalid ε, norm, queries or p_init.
    """

    name = "square"
    budget_arg = "queries"

    def __init__(
        self,
        model: nn.Module,
        eps: float | torch.Tensor,
        norm: str = "inf",
        *,
        queries: int = 5000,
        p_init: float = 0.8,
        seed: int | torch.Generator = 0,
        attack_solver: Any | None = None,
        eval_solver: Any | None = None,
    ) -> None:
        super().__init__(model, eps, norm, seed=seed, attack_solver=attack_solver, eval_solver=eval_solver)
        self.queries = _check_int("queries", queries, 1)
        self.p_init = _check_float("p_init", p_init, strict=True)
        if self.p_init > 1:
            raise AttackError(f"p_init must lie in (0, 1], got {p_init!r}")

    def _loss(self, xa: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(M,) margin loss z_y − max_{j≠y} z_j (< 0 exactly when misclassified), one query each."""
        with torch.no_grad():
            return -margin(self._forward(xa, idx), y)

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.generator))

    def _signs(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return 2 * torch.randint(0, 2, shape, generator=self.generator).to(like) - 1

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        eps_full = self._effective_eps(x)
        eps_full = eps_full * torch.ones(n, 1, 1, 1, device=x.device) if isinstance(eps_full, float) \
            else eps_full.expand(n, 1, 1, 1).clone()
        idx = torch.arange(n, device=x.device)
        # clamping to [0, 1] moves each pixel towards x, so the ε-ball constraint keeps holding
        best = (x + self._init_delta(x, eps_full)).clamp(0.0, 1.0)
        loss = self._loss(best, y, idx)
        self._iterations += 1
        # the live examples, compacted: (index, x, best, label, ε, loss), shrunk when some are broken
        live = loss >= 0
        state = [t[live] for t in (idx, x, best, y, eps_full, loss)]
        for q in range(1, self.queries):
            rows, xs, bs, ys, eps, ls = state
            if rows.numel() == 0:
                break
            p = p_schedule(self.p_init, q, self.queries)
            cand = self._step_inf(xs, bs, eps, p) if self.norm == "inf" else self._step_l2(xs, bs, eps, p)
            new = self._loss(cand, ys, rows)
            self._iterations += 1
            better = new < ls
            bs[better] = cand[better]
            ls[better] = new[better]
            done = better & (new < 0)
            if done.any():
                best[rows[done]], loss[rows[done]] = bs[done], ls[done]
                state = [t[~done] for t in state]
        rows, _, bs, _, _, ls = state
        best[rows], loss[rows] = bs, ls
        self._known_success = loss < 0
        return best

    # ------------------------------------------------------------------ both norms
    def _side(self, p: float, h: int, w: int, minimum: int) -> int:
        """Side of a square covering a fraction p of the h x w image (at least ``minimum``, less than h and w)."""
        s = max(int(round(math.sqrt(p * h * w))), minimum)
        return min(s, h - 1, w - 1)

    def _init_delta(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.norm == "inf":
            return eps * self._signs((n, c, 1, w), x)
        delta = torch.zeros_like(x)
        s = h // 5
        top, left0 = (h - 5 * s) // 2, (w - 5 * s) // 2
        for i in range(h // s):
            for j in range(w // s):
                r, col = top + i * s, left0 + j * s
                if r + s > h or col + s > w:
                    continue
                bump = pseudo_gaussian(s, bool(self._randint(2))).to(x)
                delta[:, :, r:r + s, col:col + s] += bump * self._signs((n, c, 1, 1), x)
        return delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) * eps

    def _step_inf(self, xs: torch.Tensor, bs: torch.Tensor, eps: torch.Tensor, p: float) -> torch.Tensor:
        """Candidates: the current best with one square set to ±ε per channel (a change that moves it)."""
        m, c, h, w = xs.shape
        s = self._side(p, h, w, 1)
        r, col = self._randint(h - s + 1), self._randint(w - s + 1)
        win = (slice(None), slice(None), slice(r, r + s), slice(col, col + s))
        x_win, b_win = xs[win], bs[win]
        signs = self._signs((m, c, 1, 1), xs)
        new_win = (x_win + eps * signs).clamp(0.0, 1.0)
        same = (new_win - b_win).abs().flatten(1).amax(dim=1) < 1e-7
        if same.any():  # the square would not move these points: flip its signs (a new point unless the box binds)
            new_win[same] = (x_win[same] - eps[same] * signs[same]).clamp(0.0, 1.0)
        # outside the square the candidate is the current best (already in the ball and the box)
        out = bs.clone()
        out[win] = new_win
        return out

    # ------------------------------------------------------------------ L2
    def _step_l2(self, xs: torch.Tensor, bs: torch.Tensor, eps: torch.Tensor, p: float) -> torch.Tensor:
        """Candidates: mass of square 2 moved into square 1 as a fresh pseudo-Gaussian, ‖δ‖₂ kept at ε."""
        m, c, h, w = xs.shape
        s = self._side(p, h, w, 3)
        s = s + 1 if s % 2 == 0 and s + 1 < min(h, w) else s
        r1, c1 = self._randint(h - s + 1), self._randint(w - s + 1)
        r2, c2 = self._randint(h - s + 1), self._randint(w - s + 1)
        delta = bs - xs
        w1 = (slice(None), slice(None), slice(r1, r1 + s), slice(c1, c1 + s))
        w2 = (slice(None), slice(None), slice(r2, r2 + s), slice(c2, c2 + s))
        both = torch.zeros_like(xs)
        both[w1], both[w2] = 1.0, 1.0
        # per channel: the energy both squares hold now, plus the budget not yet used by the image
        in_windows = (delta * both).pow(2).sum(dim=(2, 3), keepdim=True)
        spare = (eps.pow(2) - delta.flatten(1).pow(2).sum(dim=1).view(-1, 1, 1, 1)).clamp_min(0.0) / c
        old = delta[w1]
        old = old / (old.pow(2).sum(dim=(2, 3), keepdim=True).sqrt() + 1e-12)
        bump = pseudo_gaussian(s, bool(self._randint(2))).to(xs).view(1, 1, s, s)
        new = bump * self._signs((m, c, 1, 1), xs) + old
        new = new / new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12) * (spare + in_windows).sqrt()
        delta[w2] = 0.0
        delta[w1] = new
        delta = delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) * eps
        return (xs + delta).clamp(0.0, 1.0)


__all__ = ["P_HALVINGS", "Square", "p_schedule", "pseudo_gaussian"]
