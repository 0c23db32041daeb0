"""Auto-PGD: PGD with momentum and a step size that halves when progress stalls (CE or DLR loss).

References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", ICML 2020 (Algorithm 1, the checkpoints w_j, the
    conditions for halving η, the DLR and targeted DLR losses).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Attack, AttackError, _check_float, _check_int, margin
from .norms import LpBall

#: Losses APGD maximises.
APGD_LOSSES = ("ce", "dlr")
#: Weight of the new step against the previous direction (the paper's α = 0.75).
MOMENTUM = 0.75


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference-of-logits-ratio loss (to maximise), untargeted or targeted.

    Untargeted: −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3); targeted:
    −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2), with π the logits sorted in decreasing order.
    Both are invariant to shifting and scaling the logits.

    Args:
        logits: (N, K), K >= 3 (>= 4 for the targeted loss).
        y: (N,) true labels.
        target: (N,) target classes, or None for the untargeted loss.

    Returns:
        (N,) losses.

    Raises:
        AttackError: fewer classes than the loss needs.
    """
    need = 3 if target is None else 4
    if logits.shape[1] < need:
        raise AttackError(f"the {'targeted ' if target is not None else ''}DLR loss needs at least {need} classes; "
                          f"the model has {logits.shape[1]}")
    top = logits.sort(dim=1, descending=True).values
    zy = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        return margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)
    zt = logits.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def apgd_loss(name: str, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """(N,) loss ``name`` (``"ce"`` or ``"dlr"``), targeted at ``target`` when it is given."""
    if name == "dlr":
        return dlr_loss(logits, y, target)
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve its step: w_j = ⌈p_j · steps⌉ with p_0 = 0, p_1 = 0.22 and
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
    p_prev, p, out = 0.0, 0.22, []
    while p <= 1.0:
        w = math.ceil(p * steps - 1e-9)  # p is a float sum: 0.41 · 100 must give 41, not 42
        if w > (out[-1] if out else 0):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return out


class APGD(Attack):
    """Auto-PGD, untargeted (``targets=0``) or targeted at the top classes (``targets=k``, APGD-T).

    Per run: a random point of the ε-sphere, a first step of size η = 2ε, then steps with
    momentum x_{k+1} = Π(x_k + α(z_{k+1} − x_k) + (1 − α)(x_k − x_{k−1})), z_{k+1} = Π(x_k + η d(∇)).
    At each checkpoint w_j, η halves (and the run restarts from the best point) where fewer than
    ρ of the steps since w_{j−1} raised the loss, or where η was not halved at w_{j−1} and the best
    loss has not risen since. An example stops at its first misclassified iterate. Restarts (and,
    for APGD-T, the ``targets`` most likely wrong classes, one run each) continue only on the
    examples not yet broken; an example never broken gets its highest-loss point.

    Args:
        model: classifier returning logits.
        eps: ball radius (scalar or (N,) radii; ``math.inf`` is capped at the diameter of [0, 1]^d).
        norm: ``"inf"`` or ``"2"``.
        steps: iterations per run (the paper's N_iter; 100 in AutoAttack).
        restarts: runs per example (per target class for APGD-T).
        loss: ``"ce"`` or ``"dlr"``.
        targets: 0 for untargeted; k >= 1: targeted runs at the k classes of highest clean logit
            other than the label (at most K − 1).
        rho: the fraction ρ of loss-raising steps below which η halves.
        seed, attack_solver, eval_solver: see :class:`~attacks.base.Attack`.

    Raises:
        AttackError: invalid ε, norm, steps, restarts, loss, targets or rho.
    """

    name = "apgd"
    budget_arg = "steps"
    supports_eot = True

    def __init__(
        self,
        model: nn.Module,
        eps: float | torch.Tensor,
        norm: str = "inf",
        *,
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        targets: int = 0,
        rho: float = 0.75,
        seed: int | torch.Generator = 0,
        attack_solver: Any | None = None,
        eval_solver: Any | None = None,
    ) -> None:
        super().__init__(model, eps, norm, seed=seed, attack_solver=attack_solver, eval_solver=eval_solver)
        self.steps = _check_int("steps", steps, 1)
        self.restarts = _check_int("restarts", restarts, 1)
        if loss not in APGD_LOSSES:
            raise AttackError(f"unknown APGD loss {loss!r}; choose one of {', '.join(APGD_LOSSES)}")
        self.loss = loss
        self.targets = _check_int("targets", targets, 0)
        self.rho = _check_float("rho", rho)
        if self.rho > 1:
            raise AttackError(f"rho must lie in [0, 1], got {rho!r}")

    # ------------------------------------------------------------------ the outer loop
    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        self._best = x.clone()
        self._best_loss = torch.full((n,), -math.inf, device=x.device)
        self._found = torch.zeros(n, dtype=torch.bool, device=x.device)
        ranked = self._ranked_targets(x, y) if self.targets else None
        for target_rank in range(1 if ranked is None else ranked.shape[1]):
            for _ in range(self.restarts):
                idx = (~self._found).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                target = None if ranked is None else ranked[idx, target_rank]
                self._run(x[idx], y[idx], target, idx)
        self._known_success = self._found
        return self._best

    def _ranked_targets(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, targets) the classes of highest clean logit other than y, most likely first."""
        with torch.no_grad():
            logits = self._forward(x)
        k = logits.shape[1]
        order = logits.scatter(1, y[:, None], -math.inf).argsort(dim=1, descending=True)
        return order[:, :min(self.targets, k - 1)]

    # ------------------------------------------------------------------ one run
    def _grad(self, xa: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
              idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(∇loss averaged over ``grad_samples`` passes, logits and loss of the last pass), detached."""
        xr = xa.detach().requires_grad_(True)
        grad = torch.zeros_like(xa)
        for _ in range(self.grad_samples):
            logits = self._forward(xr, idx)
            value = apgd_loss(self.loss, logits, y, target)
            grad += torch.autograd.grad(value.sum(), xr)[0]
        return grad / self.grad_samples, logits.detach(), value.detach()

    def _start(self, xs: torch.Tensor, ball: LpBall) -> torch.Tensor:
        """A random point on the sphere of radius ε around xs (the paper's initial point), in [0, 1]."""
        eps = self._effective_eps_of(ball, xs)
        if self.norm == "inf":
            t = 2 * self._rand(xs.shape, xs) - 1
            t = t / t.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        else:
            t = self._randn(xs.shape, xs)
            t = t / t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (xs + eps * t).clamp(0.0, 1.0)

    def _effective_eps_of(self, ball: LpBall, xs: torch.Tensor) -> float | torch.Tensor:
        eps = ball.radius(xs)
        cap = self._diameter(xs)
        return min(eps, cap) if isinstance(eps, float) else eps.clamp(max=cap)

    def _keep(self, rows: torch.Tensor, xa: torch.Tensor, ok: torch.Tensor, loss: torch.Tensor) -> None:
        """Record misclassified iterates, and otherwise the highest-loss point of every example."""
        if ok.any():
            self._best[rows[ok]] = xa[ok]
            self._found[rows[ok]] = True
        better = ~ok & ~self._found[rows] & (loss > self._best_loss[rows])
        if better.any():
            self._best[rows[better]] = xa[better]
            self._best_loss[rows[better]] = loss[better]

    def _run(self, xs: torch.Tensor, ys: torch.Tensor, target: torch.Tensor | None, idx: torch.Tensor) -> None:
        """One APGD run on the examples ``idx`` (rows xs, ys of the batch); results go to ``_keep``."""
        ball = self.ball.subset(idx)
        eps = self._effective_eps_of(ball, xs)
        s = _RunState(xs, ys, target, idx, ball, eps, self._start(xs, ball))
        s.grad, logits, s.loss = self._grad(s.xa, ys, target, idx)
        self._iterations += 1
        s.init_best()
        if self._step_done(s, logits):
            return
        marks, last_mark = set(checkpoints(self.steps)), 0
        for k in range(1, self.steps + 1):
            z = s.project(s.xa + s.eta * s.ball.normalize_grad(s.grad))
            step = z if k == 1 else s.project(s.xa + MOMENTUM * (z - s.xa) + (1 - MOMENTUM) * (s.xa - s.x_prev))
            s.x_prev, s.xa = s.xa, step
            s.grad, logits, loss = self._grad(s.xa, s.ys, s.target, s.idx)
            self._iterations += 1
            s.raised += (loss > s.loss).long()
            s.loss = loss
            s.update_best()
            if self._step_done(s, logits):
                return
            if k in marks:
                s.checkpoint(self.rho * (k - last_mark))
                last_mark = k

    def _step_done(self, s: _RunState, logits: torch.Tensor) -> bool:
        """Record the current iterates; drop the broken examples from the run; True when none is left."""
        ok = logits.argmax(dim=1) != s.ys
        self._keep(s.idx, s.xa, ok, s.loss)
        if ok.any():
            s.drop(~ok)
        if s.idx.numel() == 0:
            return True
        return False


class _RunState:
    """The tensors of one APGD run over its live examples (all indexed alike, shrunk by :meth:`drop`)."""

    def __init__(self, xs: torch.Tensor, ys: torch.Tensor, target: torch.Tensor | None, idx: torch.Tensor,
                 ball: LpBall, eps: float | torch.Tensor, x0: torch.Tensor) -> None:
        m = xs.shape[0]
        self.xs, self.ys, self.target, self.idx, self.ball = xs, ys, target, idx, ball
        self.xa = x0
        self.x_prev = x0
        self.eta = (2 * eps) * torch.ones(m, 1, 1, 1, device=xs.device) if isinstance(eps, float) \
            else 2 * eps.expand(m, 1, 1, 1).clone()
        self.grad = torch.zeros_like(xs)
        self.loss = torch.zeros(m, device=xs.device)
        self.raised = torch.zeros(m, dtype=torch.long, device=xs.device)
        self.halved_last = torch.zeros(m, dtype=torch.bool, device=xs.device)

    def init_best(self) -> None:
        """The starting point is the first best point."""
        self.x_best, self.grad_best = self.xa.clone(), self.grad.clone()
        self.loss_best = self.loss.clone()
        self.loss_best_mark = self.loss.clone()

    def project(self, xa: torch.Tensor) -> torch.Tensor:
        """Π onto the ε-ball around xs intersected with [0, 1]^d."""
        return (self.xs + self.ball.project(xa - self.xs)).clamp(0.0, 1.0)

    def update_best(self) -> None:
        """Keep the highest-loss iterate of the run (and its gradient, for restarts from it)."""
        better = self.loss > self.loss_best
        self.x_best[better] = self.xa[better]
        self.grad_best[better] = self.grad[better]
        self.loss_best[better] = self.loss[better]

    def checkpoint(self, threshold: float) -> None:
        """Halve η where progress stalled (the paper's two conditions) and restart those from x_best."""
        stalled = self.raised.float() < threshold
        stuck = ~self.halved_last & (self.loss_best_mark >= self.loss_best)
        halve = stalled | stuck
        self.eta[halve] /= 2
        self.xa[halve] = self.x_best[halve]
        self.grad[halve] = self.grad_best[halve]
        self.halved_last = halve
        self.loss_best_mark = self.loss_best.clone()
        self.raised.zero_()

    def drop(self, live: torch.Tensor) -> None:
        """Keep only the rows ``live`` (bool mask) of every per-example tensor."""
        rows = live.nonzero().squeeze(1)
        for name in ("xs", "ys", "idx", "xa", "x_prev", "eta", "grad", "loss", "raised", "halved_last",
                     "x_best", "grad_best", "loss_best", "loss_best_mark"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name)[live])
        if self.target is not None:
            self.target = self.target[live]
        self.ball = self.ball.subset(rows)


class APGDT(APGD):
    """APGD-T: targeted APGD with the DLR loss at the 9 most likely wrong classes (AutoAttack's member).

    Same arguments as :class:`APGD`, with the defaults ``loss="dlr"`` and ``targets=9``.

    References:
        Croce & Hein, ICML 2020 (APGD-T with the targeted DLR loss).
    """

    name = "apgd-t"

    def __init__(self, model: nn.Module, eps: float | torch.Tensor, norm: str = "inf", *, steps: int = 100,
                 restarts: int = 1, loss: str = "dlr", targets: int = 9, rho: float = 0.75,
                 seed: int | torch.Generator = 0, attack_solver: Any | None = None,
                 eval_solver: Any | None = None) -> None:
        super().__init__(model, eps, norm, steps=steps, restarts=restarts, loss=loss, targets=targets, rho=rho,
                         seed=seed, attack_solver=attack_solver, eval_solver=eval_solver)
        if self.targets < 1:
            raise AttackError(f"APGD-T needs targets >= 1, got {targets!r}")


__all__ = ["APGD", "APGDT", "APGD_LOSSES", "apgd_loss", "checkpoints", "dlr_loss"]
