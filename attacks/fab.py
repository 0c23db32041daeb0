"""FAB: the fast adaptive boundary attack, a minimum-norm attack by projections onto linearised boundaries.

References:
    Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
    attack", ICML 2020 (Algorithm 1: the linearised decision boundary, the projections onto
    hyperplane ∩ box, the biased step with α_max, η, β, the random restarts and the final search).
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (FAB-T: targeted at the top-9 classes, 100 iterations).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._fab_projection import project_onto_hyperplane_box
from .base import Attack, AttackError, _check_float, _check_int, margin
from .norms import lp_norm

#: The final search aims at this fraction of the best point's margin max_{j≠c} f_j − f_c, not at the
#: boundary itself: a point on the boundary is a tie that a scoring pass may resolve either way.
FINAL_MARGIN = 0.1
#: Fraction of examples sent back by the backward step above which an iteration scores before it
#: linearises (a forward pass costs about a third of a forward and backward pass).
CHECK_FIRST = 1 / 3


class FAB(Attack):
    """FAB, untargeted (``targets=0``) or targeted at the top classes (``targets=k``, FAB-T).

    Each iteration linearises the boundary between the true class c and a class s at the
    current point x^(i) (untargeted: the s of smallest |f_s − f_c| / ‖∇f_s − ∇f_c‖_q, q the dual
    norm; targeted: the target), projects both x^(i) and the original point x onto that
    hyperplane ∩ [0, 1]^d exactly (:mod:`attacks._fab_projection`), and steps to
    (1 − α)(x^(i) + η δ) + α(x + η δ_orig) with α = min(‖δ‖ / (‖δ‖ + ‖δ_orig‖), α_max): the
    bias toward x keeps the iterates close to it. A misclassified iterate is recorded when it is
    the closest to x so far, and the search steps back to x + β(x^(i+1) − x). Restarts after the
    first start at a random point at distance ½ min(best norm, ε) from x; FAB-T runs every target
    class in turn. After the runs, ``final_search`` steps of the linearised search on the segment
    between x and the best point shorten it further (aiming at :data:`FINAL_MARGIN` of its margin).
    A point counts as adversarial when its margin max_{j≠c} f_j − f_c is > 0 (a tie does not).

    As a fixed-ε attack (finite ``eps``), an example is broken when the smallest adversarial
    perturbation found has norm <= ε; it then leaves the remaining runs (later targets and
    restarts, and the rest of the current run), as it would in AutoAttack. An example whose
    smallest perturbation exceeds ε is returned projected onto the ball and counts only if that
    point is misclassified when scored. With ``eps=inf`` every run goes to its end and the result
    is the smallest perturbation found (x itself where none was found).

    Args:
        model: classifier returning logits.
        eps: ε (scalar or (N,) radii); ``math.inf`` (default): minimum-norm mode.
        norm: ``"inf"`` or ``"2"``.
        steps: iterations per run (100 in AutoAttack).
        restarts: runs per example (per target class for FAB-T); runs after the first start at
            random points.
        targets: 0 for untargeted; k >= 1: targeted runs at the k classes of highest clean logit
            other than the label (at most K − 1).
        alpha_max: α_max, the largest weight of the step from the original point (the paper's 0.1).
        eta: η >= 1, the overshoot of the projection steps (1.05).
        beta: β in (0, 1], the backward step toward x after a success (0.9).
        final_search: steps of the final linearised search (0: none; the paper's 3).
        seed, attack_solver, eval_solver: see :class:`~attacks.base.Attack`.

    Raises:
        AttackError: invalid ε, norm, steps, restarts, targets, alpha_max, eta, beta or final_search.
    """

    name = "fab"
    budget_arg = "steps"
    minimal = True

    def __init__(
        self,
        model: nn.Module,
        eps: float | torch.Tensor = math.inf,
        norm: str = "inf",
        *,
        steps: int = 100,
        restarts: int = 1,
        targets: int = 0,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        final_search: int = 3,
        seed: int | torch.Generator = 0,
        attack_solver: Any | None = None,
        eval_solver: Any | None = None,
    ) -> None:
        super().__init__(model, eps, norm, seed=seed, attack_solver=attack_solver, eval_solver=eval_solver)
        self.steps = _check_int("steps", steps, 1)
        self.restarts = _check_int("restarts", restarts, 1)
        self.targets = _check_int("targets", targets, 0)
        self.alpha_max = _check_float("alpha_max", alpha_max)
        if self.alpha_max > 1:
            raise AttackError(f"alpha_max must lie in [0, 1], got {alpha_max!r}")
        self.eta = _check_float("eta", eta, 1.0)
        self.beta = _check_float("beta", beta, 0.0, strict=True)
        if self.beta > 1:
            raise AttackError(f"beta must lie in (0, 1], got {beta!r}")
        self.final_search = _check_int("final_search", final_search, 0)

    # ------------------------------------------------------------------ the outer loop
    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        self._shape = x.shape[1:]
        self._x0 = x.flatten(1)
        self._best = self._x0.clone()
        self._best_norm = torch.full((n,), math.inf, device=x.device)
        radius = self.ball.radius(x)
        self._limit = (torch.full((n,), radius, device=x.device) if isinstance(radius, float)
                       else radius.reshape(-1).expand(n).to(device=x.device, dtype=torch.float32).clone())
        with torch.no_grad():
            self._clean_logits = self._forward(x)
        self._best_norm[margin(self._clean_logits, y) > 0] = 0.0
        ranked = self._ranked_targets(y) if self.targets else None
        for rank in range(1 if ranked is None else ranked.shape[1]):
            for restart in range(self.restarts):
                idx = self._open().nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                target = None if ranked is None else ranked[idx, rank]
                self._run(idx, y[idx], target, random_start=restart > 0)
        self._search_segment(y)
        self._known_success = torch.isfinite(self._best_norm) & (self._best_norm <= self._limit)
        return self._best.view_as(x)

    def _open(self) -> torch.Tensor:
        """(N,) bool: examples that more runs may improve (not misclassified clean, not yet within ε)."""
        return (self._best_norm > 0) & ((self._best_norm > self._limit) | torch.isinf(self._limit))

    def _ranked_targets(self, y: torch.Tensor) -> torch.Tensor:
        """(N, targets) the classes of highest clean logit other than y, most likely first."""
        logits = self._clean_logits
        order = logits.scatter(1, y[:, None], -math.inf).argsort(dim=1, descending=True)
        return order[:, :min(self.targets, logits.shape[1] - 1)]

    def _record(self, rows: torch.Tensor, points: torch.Tensor) -> None:
        """Keep the misclassified ``points`` (flat) of examples ``rows`` that are closer to x than their best."""
        dist = lp_norm(points - self._x0[rows], self.norm)
        better = dist < self._best_norm[rows]
        self._best[rows[better]] = points[better]
        self._best_norm[rows[better]] = dist[better]

    # ------------------------------------------------------------------ one run
    def _linearise(self, xa: torch.Tensor, ys: torch.Tensor, target: torch.Tensor | None, rows: torch.Tensor,
                   grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Logits at the flat points ``xa`` and the boundary to cross there: f_s − f_c and its gradient.

        Returns:
            (logits (M, K), df (M,) or None, w (M, d) or None); without ``grad`` only the logits.
        """
        xr = xa.view(-1, *self._shape).detach().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            logits = self._forward(xr, rows)
        if not grad:
            return logits.detach(), None, None
        zc = logits.gather(1, ys[:, None]).squeeze(1)
        if target is not None:
            diff = logits.gather(1, target[:, None]).squeeze(1) - zc
            (g,) = torch.autograd.grad(diff.sum(), xr)
            return logits.detach(), diff.detach(), g.flatten(1)
        k = logits.shape[1]
        dfs, gs = [], []
        for j in range(k - 1):
            other = j + (ys <= j).long()  # the j-th class other than y
            diff = logits.gather(1, other[:, None]).squeeze(1) - zc
            (g,) = torch.autograd.grad(diff.sum(), xr, retain_graph=j < k - 2)
            dfs.append(diff.detach())
            gs.append(g.flatten(1))
        df, g = torch.stack(dfs, 1), torch.stack(gs, 1)
        dual = g.abs().sum(-1) if self.norm == "inf" else g.norm(dim=-1)
        s = (df.abs() / (dual + 1e-12)).argmin(dim=1)
        ar = torch.arange(df.shape[0], device=df.device)
        return logits.detach(), df[ar, s], g[ar, s]

    def _start(self, rows: torch.Tensor) -> torch.Tensor:
        """A random point at distance ½ min(best norm, ε) from x (ε capped at the diameter), in the box."""
        x0 = self._x0[rows]
        cap = self._diameter(x0.view(-1, *self._shape))
        r = 0.5 * torch.minimum(self._best_norm[rows], self._limit[rows].clamp(max=cap))
        if self.norm == "inf":
            t = 2 * self._rand(x0.shape, x0) - 1
            t = t / t.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            t = self._randn(x0.shape, x0)
            t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (x0 + r[:, None] * t).clamp(0.0, 1.0)

    def _step(self, xa: torch.Tensor, x0: torch.Tensor, df: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The biased projection step from xa (and from x0) onto the linearised boundary, in the box."""
        b = (w * xa).sum(1) - df  # the hyperplane <w, z> = b where the linearisation f_s − f_c vanishes
        both = project_onto_hyperplane_box(torch.cat((xa, x0)), torch.cat((w, w)), torch.cat((b, b)), self.norm)
        d1, d2 = both.split(xa.shape[0])
        a1, a2 = lp_norm(d1, self.norm), lp_norm(d2, self.norm)
        total = a1 + a2
        alpha = torch.where(total > 0, a1 / total.clamp_min(1e-30), torch.zeros_like(a1))
        alpha = alpha.clamp(0.0, self.alpha_max)[:, None]
        return ((xa + self.eta * d1) * (1 - alpha) + (x0 + self.eta * d2) * alpha).clamp(0.0, 1.0)

    def _run(self, idx: torch.Tensor, ys: torch.Tensor, target: torch.Tensor | None, random_start: bool) -> None:
        """One FAB run on the examples ``idx``; misclassified iterates go to :meth:`_record`.

        Each new iterate is scored and linearised by one forward and backward pass, and the examples it
        sends back toward x by a second one at their backward-step point; while more than
        :data:`CHECK_FIRST` of the examples were sent back at the previous iteration, the iterates are
        first scored by a forward pass alone and every example then linearised once (the same points,
        fewer passes).
        """
        x0 = self._x0[idx]
        xa = self._start(idx) if random_start else x0.clone()
        _, df, w = self._linearise(xa, ys, target, idx)
        check_first = False
        for i in range(self.steps):
            assert df is not None and w is not None
            xa = self._step(xa, x0, df, w)
            self._iterations += 1
            last = i == self.steps - 1
            logits, df, w = self._linearise(xa, ys, target, idx, grad=not (last or check_first))
            adv = margin(logits, ys) > 0
            if adv.any():
                self._record(idx[adv], xa[adv])
                xa[adv] = x0[adv] + self.beta * (xa[adv] - x0[adv])
            live = self._open()[idx]
            if last or not live.any():
                return
            if not live.all():
                idx, ys, x0, xa, adv = idx[live], ys[live], x0[live], xa[live], adv[live]
                target = None if target is None else target[live]
                df, w = (None, None) if df is None or w is None else (df[live], w[live])
            redo = torch.ones_like(adv) if df is None else adv  # rows linearised at a point they left
            if redo.any():
                _, df_r, w_r = self._linearise(xa[redo], ys[redo], None if target is None else target[redo],
                                               idx[redo])
                if df is None or w is None:
                    df, w = df_r, w_r
                else:
                    df[redo], w[redo] = df_r, w_r
            check_first = float(adv.float().mean()) > CHECK_FIRST

    # ------------------------------------------------------------------ final search
    def _search_segment(self, y: torch.Tensor) -> None:
        """The paper's final search: on the segment from x (class c) to the best point (class l), step to
        where the line through the two margins f_l − f_c reaches κ (:data:`FINAL_MARGIN` of the best
        point's margin), keeping an adversarial end."""
        rows = (self._open() & torch.isfinite(self._best_norm)).nonzero().squeeze(1)
        if rows.numel() == 0 or self.final_search == 0:
            return
        ys = y[rows]
        lo, hi = self._x0[rows].clone(), self._best[rows].clone()
        z_lo = self._clean_logits[rows].clone()
        with torch.no_grad():
            z_hi = self._forward(hi.view(-1, *self._shape), rows)
            kappa = FINAL_MARGIN * margin(z_hi, ys)[:, None]
            for _ in range(self.final_search):
                label = z_hi.argmax(dim=1)
                t1 = z_lo.gather(1, ys[:, None]) - z_lo.gather(1, label[:, None])
                t2 = z_hi.gather(1, label[:, None]) - z_hi.gather(1, ys[:, None])
                t = (t1 + kappa) / (t1 + t2 + 1e-10)
                t = torch.where((t >= 0) & (t <= 1), t, torch.ones_like(t))
                mid = lo + t * (hi - lo)
                z_mid = self._forward(mid.view(-1, *self._shape), rows)
                same = margin(z_mid, ys) <= 0
                lo[same], z_lo[same] = mid[same], z_mid[same]
                hi[~same], z_hi[~same] = mid[~same], z_mid[~same]
        self._record(rows, hi)


class FABT(FAB):
    """FAB-T: FAB targeted at the 9 most likely wrong classes, one run each (AutoAttack's member).

    Same arguments as :class:`FAB`, with the default ``targets=9``.

    References:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
        parameter-free attacks", ICML 2020.
    """

    name = "fab-t"

    def __init__(self, model: nn.Module, eps: float | torch.Tensor = math.inf, norm: str = "inf", *,
                 steps: int = 100, restarts: int = 1, targets: int = 9, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, final_search: int = 3, seed: int | torch.Generator = 0,
                 attack_solver: Any | None = None, eval_solver: Any | None = None) -> None:
        super().__init__(model, eps, norm, steps=steps, restarts=restarts, targets=targets, alpha_max=alpha_max,
                         eta=eta, beta=beta, final_search=final_search, seed=seed, attack_solver=attack_solver,
                         eval_solver=eval_solver)
        if self.targets < 1:
            raise AttackError(f"FAB-T needs targets >= 1, got {targets!r}")


__all__ = ["CHECK_FIRST", "FAB", "FABT", "FINAL_MARGIN"]
