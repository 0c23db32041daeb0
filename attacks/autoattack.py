"""AutoAttack: a fixed, parameter-free sequence of complementary attacks, each on the points still robust.

``standard`` runs APGD-CE, APGD-T (targeted DLR, 9 targets), FAB-T (9 targets) and Square
(5,000 queries), the paper's ensemble; every member attacks only the points no earlier member
broke. ``rand`` (for randomized defenses) runs APGD-CE and APGD-DLR with EOT over 20 samples.

References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", ICML 2020.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .apgd import APGD, APGDT
from .base import Attack, AttackError, _check_int
from .eot import EOT
from .fab import FABT
from .square import Square

#: AutoAttack versions.
VERSIONS = ("standard", "rand")


@dataclasses.dataclass(frozen=True)
class MemberRun:
    """What one member of the ensemble did in the last call.

    Attributes:
        name: the member ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr").
        attacked: examples it ran on (those still robust when its turn came).
        broken: of these, how many it broke.
        seconds: its wall time.
        nfe: ODE function evaluations it spent.
        queries: forward passes it spent, summed over its examples.
    """

    name: str
    attacked: int
    broken: int
    seconds: float
    nfe: int
    queries: int


class AutoAttack(Attack):
    """The AutoAttack ensemble: every member attacks only the examples no earlier member broke.

    Args:
        model: classifier returning logits.
        eps: ball radius (scalar or (N,) radii).
        norm: ``"inf"`` or ``"2"``.
        version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square) or ``"rand"`` (APGD-CE and APGD-DLR
            with EOT, for randomized models).
        steps: APGD and FAB-T iterations per run (100 in the paper).
        queries: Square's query budget per example (5,000 in the paper).
        targets: APGD-T's and FAB-T's target classes (9 in the paper).
        eot_samples: gradient samples of the ``rand`` version (20 in the paper).
        seed, attack_solver, eval_solver: see :class:`~attacks.base.Attack`; every member
            integrates with ``attack_solver`` and is scored with ``eval_solver``.

    Raises:
        AttackError: unknown version, invalid ε, norm or budgets.

    Attributes:
        members_last: the :class:`MemberRun` of each member in the last call.
    """

    name = "autoattack"
    budget_arg = "steps"

    def __init__(
        self,
        model: nn.Module,
        eps: float | torch.Tensor,
        norm: str = "inf",
        *,
        version: str = "standard",
        steps: int = 100,
        queries: int = 5000,
        targets: int = 9,
        eot_samples: int = 20,
        seed: int | torch.Generator = 0,
        attack_solver: Any | None = None,
        eval_solver: Any | None = None,
    ) -> None:
        super().__init__(model, eps, norm, seed=seed, attack_solver=attack_solver, eval_solver=eval_solver)
        if version not in VERSIONS:
            raise AttackError(f"unknown AutoAttack version {version!r}; choose one of {', '.join(VERSIONS)}")
        self.version = version
        self.steps = _check_int("steps", steps, 1)
        self.queries = _check_int("queries", queries, 1)
        self.targets = _check_int("targets", targets, 1)
        self.eot_samples = _check_int("eot_samples", eot_samples, 1)
        self.members_last: tuple[MemberRun, ...] = ()
        self._own_solver: Any | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        """Run the ensemble (see :meth:`Attack.__call__`); :attr:`members_last` says what each member did."""
        # Members score inside this attack's solver context: they must be told the model's own solver.
        self._own_solver = getattr(self.model, "solver", None)
        return super().__call__(x, y)

    def members(self) -> list[tuple[str, Callable[[float | torch.Tensor], Attack]]]:
        """(name, factory ε -> attack) of each member, in the order they run."""
        scorer = self.eval_solver if self.eval_solver is not None else self._own_solver
        common = {"seed": self.generator, "attack_solver": self.attack_solver, "eval_solver": scorer}
        m, norm, steps = self.model, self.norm, self.steps
        if self.version == "rand":
            k = self.eot_samples
            return [("apgd-ce", lambda e: EOT(APGD(m, e, norm, steps=steps, loss="ce", **common), k)),
                    ("apgd-dlr", lambda e: EOT(APGD(m, e, norm, steps=steps, loss="dlr", **common), k))]
        return [("apgd-ce", lambda e: APGD(m, e, norm, steps=steps, loss="ce", **common)),
                ("apgd-t", lambda e: APGDT(m, e, norm, steps=steps, targets=self.targets, **common)),
                ("fab-t", lambda e: FABT(m, e, norm, steps=steps, targets=self.targets, **common)),
                ("square", lambda e: Square(m, e, norm, queries=self.queries, **common))]

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        runs = []
        for name, make in self.members():
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            result = make(self.ball.subset(idx).eps)(x[idx], y[idx])
            broken = result.success
            best[idx[broken]] = result.x_adv[broken]
            robust[idx[broken]] = False
            self._nfe += result.nfe
            self._queries[idx] += result.queries
            self._iterations += result.iterations
            runs.append(MemberRun(name, int(idx.numel()), int(broken.sum()), result.seconds, result.nfe,
                                  int(result.queries.sum())))
        self.members_last = tuple(runs)
        # every member scored its points as the template would (eval_solver, else the model's own solver)
        self._known_success = ~robust
        return best


__all__ = ["VERSIONS", "AutoAttack", "MemberRun"]
