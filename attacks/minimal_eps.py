"""Minimal-ε search: the empirical robustness radius of each example, by bisection.

For a fixed-ε attack A, the radius of x is the smallest ε at which A(x, ε) succeeds.
The search runs a batched bisection with one ε per example, so every round is a single
attack call on the examples that are still undecided. The result is an *upper* bound
on the true robustness radius (an adversarial example at that distance exists), the
number that certified radii from ``verify/`` are compared with.

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv 2019 (report the full
    robustness curve, not a single ε).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
from torch import nn

from .apgd import APGD, APGDT
from .autoattack import AutoAttack
from .base import Attack, AttackError
from .fab import FAB, FABT
from .fgsm import FGSM
from .norms import canonical_norm, lp_norm
from .pgd import PGD
from .square import Square

#: Fixed-ε attacks the search accepts by name.
SEARCH_ATTACKS: dict[str, type[Attack]] = {"pgd": PGD, "fgsm": FGSM, "apgd": APGD, "apgd-t": APGDT,
                                           "square": Square, "autoattack": AutoAttack, "fab": FAB, "fab-t": FABT}


@dataclasses.dataclass(frozen=True)
class MinEpsResult:
    """Per-example empirical robustness radii.

    Attributes:
        eps: (N,) smallest ε found at which the attack succeeds (0: misclassified clean;
            ``inf``: the attack fails even at ``eps_max``).
        lower: (N,) largest ε at which the attack was seen to fail (0 when none was tried).
        x_adv: (N, C, H, W) adversarial input found at ``eps`` (x where eps is 0 or inf).
        norm: ``"inf"`` or ``"2"``.
        attack: name of the fixed-ε attack.
        tol: bisection tolerance: ``eps − lower <= tol`` for every finite non-zero eps.
        eps_max: largest ε tried.
        attack_calls: batched attack calls made.
        seconds: wall time.
        nfe: ODE function evaluations spent.
    """

    eps: torch.Tensor
    lower: torch.Tensor
    x_adv: torch.Tensor
    norm: str
    attack: str
    tol: float
    eps_max: float
    attack_calls: int
    seconds: float
    nfe: int

    def summary(self) -> str:
        """One line: how many radii are 0, finite, infinite, and the median finite radius."""
        finite = self.eps[torch.isfinite(self.eps) & (self.eps > 0)]
        med = float(finite.median()) if finite.numel() else math.nan
        return (f"minimal eps ({self.attack}, L{self.norm}): {int((self.eps == 0).sum())} misclassified, "
                f"{finite.numel()} found (median {med:.4f}), {int(torch.isinf(self.eps).sum())} above "
                f"eps_max={self.eps_max:g}; {self.attack_calls} calls, {self.seconds:.1f}s")


def minimal_eps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str = "inf",
    attack: str | type[Attack] = "pgd",
    eps_max: float = 1.0,
    tol: float = 1e-3,
    seed: int = 0,
    **attack_kwargs: Any,
) -> MinEpsResult:
    """Per example, the smallest ε at which a fixed-ε attack succeeds, to within ``tol``.

    Args:
        model: classifier returning logits.
        x: (N, C, H, W) inputs in [0, 1].
        y: (N,) labels.
        norm: ``"inf"`` or ``"2"``.
        attack: a name of :data:`SEARCH_ATTACKS` (``"pgd"``, ``"fgsm"``, ``"apgd"``, ``"apgd-t"``,
            ``"square"``, ``"autoattack"``, ``"fab"``, ``"fab-t"``: FAB at a fixed ε breaks a point when
            the smallest perturbation it finds is within ε) or a fixed-ε :class:`~attacks.base.Attack` subclass
            constructed as ``attack(model, eps, norm, seed=..., **attack_kwargs)``.
        eps_max: upper end of the search (> 0).
        tol: absolute tolerance of the bisection on ε (> 0).
        seed: seed of the attack's randomness (one generator for the whole search).
        **attack_kwargs: further constructor arguments (``steps``, ``step_size``, ...).

    Returns:
        the :class:`MinEpsResult`.

    Raises:
        AttackError: unknown attack, a minimum-norm attack, or invalid ``eps_max``/``tol``/norm.
    """
    cls = _search_attack(attack)
    norm = canonical_norm(norm)
    if not (isinstance(eps_max, (int, float)) and math.isfinite(eps_max) and eps_max > 0):
        raise AttackError(f"eps_max must be a positive finite number, got {eps_max!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise AttackError(f"tol must be a positive number, got {tol!r}")
    start = time.perf_counter()
    runner = _Runner(model, x, y, norm, cls, attack_kwargs, torch.Generator().manual_seed(seed))
    eps, lower, x_adv = _bisect(runner, float(eps_max), tol)
    # The returned points really are within their radius (up to float rounding).
    finite = torch.isfinite(eps) & (eps > 0)
    if finite.any():
        dist = lp_norm(x_adv[finite] - x[finite], norm)
        assert bool((dist <= eps[finite] + 1e-5).all())
    return MinEpsResult(eps=eps, lower=lower, x_adv=x_adv, norm=norm, attack=cls.name, tol=float(tol),
                        eps_max=float(eps_max), attack_calls=runner.calls, seconds=time.perf_counter() - start,
                        nfe=runner.nfe)


def _search_attack(attack: str | type[Attack]) -> type[Attack]:
    """The fixed-ε attack class named or given by ``attack``; raises :class:`AttackError` otherwise."""
    if isinstance(attack, str):
        if attack not in SEARCH_ATTACKS:
            raise AttackError(f"unknown attack {attack!r} for the minimal-eps search; choose one of "
                              f"{', '.join(SEARCH_ATTACKS)}")
        return SEARCH_ATTACKS[attack]
    if isinstance(attack, type) and issubclass(attack, Attack) and not attack.minimal:
        return attack
    raise AttackError(f"the minimal-eps search needs a fixed-eps attack class, got {attack!r}")


class _Runner:
    """Batched attack calls on subsets of (x, y), one ε per example, counting calls and NFE.

    One generator serves every call, so the whole search is reproducible from one seed.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, cls: type[Attack],
                 attack_kwargs: dict[str, Any], gen: torch.Generator) -> None:
        self.model, self.x, self.y, self.norm = model, x, y, norm
        self.cls, self.attack_kwargs, self.gen = cls, attack_kwargs, gen
        self.calls, self.nfe = 0, 0

    def __call__(self, idx: torch.Tensor, eps: torch.Tensor,
                 kind: type[Attack] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(success, x_adv) of the search attack (or ``kind``, without the extra kwargs) on ``idx``."""
        kind = self.cls if kind is None else kind
        kwargs = self.attack_kwargs if kind is self.cls else {}
        result = kind(self.model, eps, self.norm, seed=self.gen, **kwargs)(self.x[idx], self.y[idx])
        self.calls += 1
        self.nfe += result.nfe
        return result.success, result.x_adv


def _bisect(run: _Runner, eps_max: float, tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batched bisection: (eps, lower, x_adv) as :class:`MinEpsResult` describes them."""
    x = run.x
    n = x.shape[0]
    # A zero-ε FGSM call validates the inputs and finds the clean misclassifications cheaply.
    clean_bad, _ = run(torch.arange(n, device=x.device), torch.zeros(n), FGSM)
    dev = x.device
    eps = torch.full((n,), math.inf, device=dev)
    lower = torch.zeros(n, device=dev)
    x_adv = x.detach().clone()
    eps[clean_bad] = 0.0
    todo = (~clean_bad).nonzero().squeeze(1)
    if todo.numel():
        ok, adv = run(todo, torch.full((todo.numel(),), eps_max))
        eps[todo[ok]] = eps_max
        x_adv[todo[ok]] = adv[ok]
        lower[todo[~ok]] = eps_max
        todo = todo[ok]
    hi = eps.clone()
    while todo.numel():
        todo = todo[(hi[todo] - lower[todo]) > tol]
        if not todo.numel():
            break
        mid = (lower[todo] + hi[todo]) / 2
        ok, adv = run(todo, mid.cpu())
        hi[todo[ok]] = mid[ok]
        x_adv[todo[ok]] = adv[ok]
        lower[todo[~ok]] = mid[~ok]
    return torch.where(torch.isfinite(eps) & (eps > 0), hi, eps), lower, x_adv

__all__ = ["SEARCH_ATTACKS", "MinEpsResult", "minimal_eps"]
