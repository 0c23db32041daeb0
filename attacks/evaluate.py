"""Robustness evaluation of a model under one attack, with validity checks.

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv 2019.
    Girard et al., "A security study of Neural ODEs", 2019 (the "mean L2 / accuracy" table style).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ._checks import CheckResult, run_checks
from .base import Attack, AttackError, AttackResult


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """Clean and robust accuracy of a model under an attack.

    Attributes:
        attack: attack name.
        norm: ``"inf"`` or ``"2"``.
        eps: ball radius (``inf`` for unbounded minimum-norm attacks).
        n: examples evaluated.
        clean_accuracy: fraction classified correctly.
        robust_accuracy: fraction classified correctly and not broken by the attack.
        success_rate: fraction of the correctly classified examples the attack broke.
        mean_l2, median_l2, mean_linf, median_linf: norms of the successful perturbations
            (NaN when there are none).
        seconds: wall time of the attack over all batches.
        nfe: ODE function evaluations the attack spent.
        mean_queries: mean forward passes per attacked example.
        checks: validity checks (empty when disabled).
        params: attack hyper-parameters, for the record.
    """

    attack: str
    norm: str
    eps: float
    n: int
    clean_accuracy: float
    robust_accuracy: float
    success_rate: float
    mean_l2: float
    median_l2: float
    mean_linf: float
    median_linf: float
    seconds: float
    nfe: int
    mean_queries: float
    checks: tuple[CheckResult, ...] = ()
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def failed_checks(self) -> tuple[str, ...]:
        """Names of the validity checks that failed, in check order."""
        return tuple(c.name for c in self.checks if c.status == "fail")

    @property
    def flagged(self) -> bool:
        """True when a validity check failed."""
        return bool(self.failed_checks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN/inf as strings are avoided: they become None / "inf")."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "checks":
                v = [c.to_dict() for c in v]
            elif isinstance(v, float) and math.isnan(v):
                v = None
            elif isinstance(v, float) and math.isinf(v):
                v = "inf"
            out[f.name] = v
        out["flagged"] = self.flagged
        out["failed_checks"] = list(self.failed_checks)
        return out

    def warning(self) -> str | None:
        """One line naming the failed validity checks (None when none failed)."""
        if not self.flagged:
            return None
        return (f"WARNING: validity check(s) failed: {', '.join(self.failed_checks)}; the attack is probably "
                "too weak and the robust accuracy below overstates robustness")

    def summary(self) -> str:
        """Seed-style "mean L2 / accuracy" line plus the other numbers and every check; when a check
        failed, the first line is :meth:`warning`."""
        eps = "unbounded" if math.isinf(self.eps) else f"eps={self.eps:g}"
        warning = self.warning()
        lines = [] if warning is None else [warning]
        lines += [
            f"{self.attack} L{self.norm} {eps}, n={self.n}: mean L2 / accuracy = {self.mean_l2:.2f}/"
            f"{100 * self.robust_accuracy:.2f}%",
            f"  clean accuracy {100 * self.clean_accuracy:.2f}%, robust accuracy {100 * self.robust_accuracy:.2f}%, "
            f"success rate {100 * self.success_rate:.2f}%",
            f"  L2 mean {self.mean_l2:.4f} median {self.median_l2:.4f}; Linf mean {self.mean_linf:.4f} "
            f"median {self.median_linf:.4f}; {self.seconds:.1f}s, NFE {self.nfe}, "
            f"{self.mean_queries:.0f} queries/example",
        ]
        for c in self.checks:
            lines.append(f"  check {c.name}: {c.status.upper()} ({c.reason})")
        return "\n".join(lines)


def _stat(values: torch.Tensor, median: bool) -> float:
    if values.numel() == 0:
        return math.nan
    return float(values.median() if median else values.mean())


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    *,
    batch_size: int = 500,
    checks: bool = True,
    check_n: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> EvalReport:
    """Clean accuracy, robust accuracy and perturbation norms of ``model`` under ``attack``.

    Only correctly classified examples are attacked (a misclassified one is already
    non-robust, at distance 0). With ``checks`` the validity checks of
    :func:`attacks._checks.run_checks` run on the first ``check_n`` correctly classified
    examples and are reported in :attr:`EvalReport.checks`.

    Args:
        model: classifier returning logits (must be ``attack.model``).
        x: (N, C, H, W) inputs in [0, 1].
        y: (N,) labels.
        attack: the attack.
        batch_size: examples per attack call.
        checks: run the validity checks.
        check_n: subsample size of the checks.
        seed: seed of the checks' auxiliary attacks.
        progress: show a progress bar over batches.

    Returns:
        the :class:`EvalReport`.

    Raises:
        AttackError: ``model`` is not the attack's model, or malformed inputs.
    """
    if attack.model is not model:
        raise AttackError("evaluate(): the attack was built for a different model")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not isinstance(y, torch.Tensor) \
            or y.shape != (x.shape[0],):
        raise AttackError("evaluate() needs x of shape (N, C, H, W) and y of shape (N,)")
    n = x.shape[0]
    correct = _clean_correct(model, x, y, batch_size)
    idx = correct.nonzero().squeeze(1)
    sweep = _attack_all(attack, x, y, idx, batch_size, progress)
    check_results: tuple[CheckResult, ...] = ()
    if checks and idx.numel() > 0:
        check_results = _subsample_checks(attack, x, y, idx[:check_n], sweep.first, seed)
    success = sweep.success
    eps = attack.eps if isinstance(attack.eps, float) else float(attack.eps.max())
    return EvalReport(
        attack=attack.name, norm=attack.norm, eps=eps, n=n, clean_accuracy=correct.float().mean().item(),
        robust_accuracy=float((~success).sum()) / n,
        success_rate=float(success.float().mean()) if idx.numel() else 0.0,
        mean_l2=_stat(sweep.l2[success], False), median_l2=_stat(sweep.l2[success], True),
        mean_linf=_stat(sweep.linf[success], False), median_linf=_stat(sweep.linf[success], True),
        seconds=sweep.seconds, nfe=sweep.nfe, mean_queries=sweep.queries / max(1, idx.numel()),
        checks=check_results, params=_params(attack),
    )


def _clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) bool: the clean prediction is right (eval mode; the module modes are restored)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                              for i in range(0, x.shape[0], batch_size)])
    finally:
        for m, training in modes:
            m.training = training


@dataclasses.dataclass
class _Sweep:
    """The attack's outcome on every correctly classified example, batch by batch."""

    success: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    seconds: float = 0.0
    nfe: int = 0
    queries: int = 0
    first: AttackResult | None = None


def _attack_all(attack: Attack, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, batch_size: int,
                progress: bool) -> _Sweep:
    """Attack the examples ``idx`` in batches of ``batch_size``."""
    sweep = _Sweep(success=torch.zeros(idx.numel(), dtype=torch.bool, device=x.device),
                   l2=torch.zeros(idx.numel(), device=x.device), linf=torch.zeros(idx.numel(), device=x.device))
    for i in tqdm(range(0, idx.numel(), batch_size), desc=f"{attack.name}", disable=not progress, leave=False):
        rows = idx[i:i + batch_size]
        r = attack(x[rows], y[rows])
        sweep.first = sweep.first or r
        sweep.success[i:i + rows.numel()] = r.success
        sweep.l2[i:i + rows.numel()] = r.l2
        sweep.linf[i:i + rows.numel()] = r.linf
        sweep.seconds += r.seconds
        sweep.nfe += r.nfe
        sweep.queries += int(r.queries.sum())
    return sweep


def _subsample_checks(attack: Attack, x: torch.Tensor, y: torch.Tensor, sub: torch.Tensor,
                      first: AttackResult | None, seed: int) -> tuple[CheckResult, ...]:
    """The validity checks on the examples ``sub`` (the first correctly classified ones)."""
    # Reuse the main run's outcome on the subsample (same examples, first batch).
    sub_result = attack(x[sub], y[sub]) if first is None or first.success.shape[0] < sub.numel() else \
        _slice(first, sub.numel())
    return tuple(run_checks(attack, x[sub], y[sub], sub_result, seed=seed))


def _slice(result: Any, k: int) -> Any:
    clean = None if result.clean_correct is None else result.clean_correct[:k]
    return dataclasses.replace(result, x_adv=result.x_adv[:k], success=result.success[:k], l2=result.l2[:k],
                               linf=result.linf[:k], queries=result.queries[:k], clean_correct=clean)


def _params(attack: Attack) -> dict[str, Any]:
    """The attack's scalar hyper-parameters, for the report."""
    keys = ("steps", "step_size", "random_start", "restarts", "loss", "output", "binary_search_steps",
            "initial_const", "confidence", "lr", "max_queries", "prob", "resize_rate", "momentum",
            "grad_samples")
    out: dict[str, Any] = {}
    for k in keys:
        try:
            v = getattr(attack, k)
        except AttributeError:
            continue
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
    return out


__all__ = ["EvalReport", "evaluate"]
