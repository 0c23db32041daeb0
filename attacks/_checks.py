"""Validity checks that flag an attack evaluation that is probably too weak.

Each check is cheap (a small subsample of correctly classified examples) and returns a
named :class:`CheckResult` with status pass / fail / skip and a reason.

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv 2019.
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from .base import Attack, AttackResult
from .boundary import BoundaryAttack
from .eot import EOT
from .fgsm import FGSM
from .norms import LpBall, lp_norm
from .pgd import PGD
from .square import Square


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Outcome of one validity check.

    Attributes:
        name: check name.
        status: ``"pass"``, ``"fail"`` or ``"skip"``.
        reason: what was measured, in one sentence.
    """

    name: str
    status: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dataclasses.asdict(self)


def variant(attack: Attack, seed: int, **changes: Any) -> Attack:
    """A copy of ``attack`` with some hyper-parameters changed (``eps`` rebuilds the ball)."""
    if isinstance(attack, EOT):
        new_eot = copy.copy(attack)
        new_eot.inner = variant(attack.inner, seed, **changes)
        return new_eot
    new = copy.copy(attack)
    new.generator = torch.Generator().manual_seed(seed)
    for key, value in changes.items():
        if key == "eps":
            new.ball = LpBall(new.norm, value)
            new.eps = new.ball.eps
        else:
            setattr(new, key, value)
    return new


def _eps(attack: Attack) -> float:
    return attack.eps if isinstance(attack.eps, float) else float(attack.eps.max())


def run_checks(attack: Attack, x: torch.Tensor, y: torch.Tensor, result: AttackResult, seed: int = 0,
               black_box_queries: int = 300, unbounded_steps: int = 50,
               steps_tolerance: float = 0.05) -> list[CheckResult]:
    """Run every validity check on a subsample.

    Args:
        attack: the evaluated attack.
        x: (M, C, H, W) correctly classified inputs (the subsample).
        y: (M,) labels.
        result: ``attack``'s result on (x, y).
        seed: seed of the auxiliary attacks.
        black_box_queries: query budget of the black-box comparison.
        unbounded_steps: PGD steps of the unbounded-attack check.
        steps_tolerance: largest accepted change of robust accuracy when the steps double.

    Returns:
        the check results, in a fixed order.
    """
    robust = float((~result.success).float().mean())
    return [
        _iterative_vs_single_step(attack, x, y, robust, seed),
        _unbounded_reaches_100(attack, x, y, unbounded_steps, seed),
        _eps_sweep_monotone(attack, x, y, robust, seed),
        _double_steps(attack, x, y, robust, steps_tolerance, seed),
        _gradient_check(attack.model, x, y),
        _randomized_without_eot(attack, x),
        _white_vs_black_box(attack, x, y, result, black_box_queries, seed),
    ]


def _iterative_vs_single_step(attack: Attack, x: torch.Tensor, y: torch.Tensor, robust: float,
                              seed: int) -> CheckResult:
    """An iterative attack is at least as strong as a single gradient step."""
    eps = _eps(attack)
    if attack.budget_arg is None or math.isinf(eps):
        return CheckResult("iterative_vs_single_step", "skip", "single-step or unbounded attack: nothing to compare")
    fg = FGSM(attack.model, eps, attack.norm, seed=seed)(x, y)
    fg_robust = float((~fg.success).float().mean())
    ok = robust <= fg_robust + 1e-9
    return CheckResult("iterative_vs_single_step", "pass" if ok else "fail",
                       f"robust accuracy {robust:.3f} vs FGSM {fg_robust:.3f} on {x.shape[0]} examples")


def _unbounded_reaches_100(attack: Attack, x: torch.Tensor, y: torch.Tensor, unbounded_steps: int,
                           seed: int) -> CheckResult:
    """With no budget the attack must reach 100 % success."""
    unb = PGD(attack.model, math.inf, attack.norm, steps=unbounded_steps, loss="margin", seed=seed)(x, y)
    rate = unb.success_rate
    return CheckResult("unbounded_reaches_100", "pass" if rate == 1.0 else "fail",
                       f"unbounded PGD-{unbounded_steps} success {rate:.3f} on {x.shape[0]} examples")


def _eps_sweep_monotone(attack: Attack, x: torch.Tensor, y: torch.Tensor, robust: float, seed: int) -> CheckResult:
    """Accuracy is non-increasing along an ε sweep."""
    eps = _eps(attack)
    if math.isinf(eps) or eps == 0:
        return CheckResult("eps_sweep_monotone", "skip", "no finite positive eps to sweep")
    accs = [1.0]
    for frac in (0.25, 0.5):
        r = variant(attack, seed, eps=eps * frac)(x, y)
        accs.append(float((~r.success).float().mean()))
    accs.append(robust)
    slack = 1.0 / x.shape[0] + 1e-9
    ok = all(b <= a + slack for a, b in zip(accs[:-1], accs[1:]))
    return CheckResult("eps_sweep_monotone", "pass" if ok else "fail",
                       "robust accuracy at eps x (0, 0.25, 0.5, 1): " + ", ".join(f"{a:.3f}" for a in accs))


def _double_steps(attack: Attack, x: torch.Tensor, y: torch.Tensor, robust: float, steps_tolerance: float,
                  seed: int) -> CheckResult:
    """Doubling the budget does not change the result much."""
    arg = attack.budget_arg
    if arg is None:
        return CheckResult("double_steps", "skip", "single-step attack")
    doubled = variant(attack, seed, **{arg: 2 * getattr(attack, arg)})(x, y)
    d_robust = float((~doubled.success).float().mean())
    ok = abs(d_robust - robust) <= steps_tolerance
    return CheckResult("double_steps", "pass" if ok else "fail",
                       f"robust accuracy {robust:.3f} with {arg}={getattr(attack, arg)}, "
                       f"{d_robust:.3f} with twice as many (tolerance {steps_tolerance})")


def _randomized_without_eot(attack: Attack, x: torch.Tensor) -> CheckResult:
    """A randomized model must be attacked with EOT."""
    model = attack.model
    modes = [(mod, mod.training) for mod in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            a, b = model(x), model(x)
    finally:
        for mod, training in modes:
            mod.training = training
    if torch.allclose(a, b, rtol=1e-5, atol=1e-6):
        return CheckResult("randomized_without_eot", "pass", "two forward passes agree: deterministic model")
    ok = attack.grad_samples > 1
    return CheckResult("randomized_without_eot", "pass" if ok else "fail",
                       "repeated forward passes disagree; attack "
                       + (f"averages {attack.grad_samples} samples (EOT)" if ok else "uses no EOT"))


def _white_vs_black_box(attack: Attack, x: torch.Tensor, y: torch.Tensor, result: AttackResult,
                        black_box_queries: int, seed: int) -> CheckResult:
    """A white-box attack is stronger than the black-box ones (Boundary, and Square within a finite ε)."""
    if isinstance(attack, (BoundaryAttack, Square)):
        return CheckResult("white_vs_black_box", "skip", "the attack is a black-box attack")
    bb = BoundaryAttack(attack.model, max_queries=black_box_queries, seed=seed)(x, y)
    within = bb.success & (lp_norm(bb.x_adv - x, attack.norm) <= _eps(attack) + 1e-6)
    eps = _eps(attack)
    if math.isfinite(eps) and eps > 0:
        # Square searches the ε-ball itself: it beats gradient masking that Boundary's walk may miss
        sq = Square(attack.model, attack.eps, attack.norm, queries=black_box_queries, seed=seed)(x, y)
        within = within | sq.success
    beaten = int((within & ~result.success).sum())
    return CheckResult("white_vs_black_box", "fail" if beaten else "pass",
                       f"Boundary Attack and Square ({black_box_queries} queries each) found {int(within.sum())} "
                       f"adversarials within eps, {beaten} where the white-box attack failed")


def _gradient_check(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> CheckResult:
    """Gradients at the clean inputs are finite and not zero (gradient masking)."""
    modes = [(mod, mod.training) for mod in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        xr = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xr)
    finally:
        for mod, training in modes:
            mod.training = training
        for p, r in flags:
            p.requires_grad_(r)
    flat = g.flatten(1)
    nan = int((~torch.isfinite(flat)).any(dim=1).sum())
    zero = int((flat == 0).all(dim=1).sum())
    frac = zero / x.shape[0]
    ok = nan == 0 and frac <= 0.1
    return CheckResult("gradient_health", "pass" if ok else "fail",
                       f"{nan} examples with NaN/inf gradients, {zero} of {x.shape[0]} with all-zero gradients")


__all__ = ["CheckResult", "run_checks", "variant"]
