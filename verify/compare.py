"""Certified radius next to the empirical radius of an attack, per example, with a soundness check.

A certificate claims no adversarial example exists within the certified radius r_c;
an attack that found one at distance r_e < r_c proves the certificate (or the bound
code) wrong. :func:`soundness_flags` reports every such case loudly (a ``warnings``
warning, a flag in the per-example record, a count in the summary).

References:
    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", S&P 2017.
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._lower import Lowered, is_adaptive, lower

#: slack for float round-off when comparing a certified radius with an empirical one.
SOUNDNESS_SLACK = 1e-6


class SoundnessWarning(UserWarning):
    """A certified radius above an empirical (attack) radius: a bug somewhere."""


def empirical_radius(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, seed: int = 0,
                     eps_max: float | None = None, attack: str = "pgd") -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest adversarial distance found: a minimal-ε search (PGD by default) for ℓ∞, CW-L2 for ℓ2.

    Args:
        model: classifier, eval mode.
        x: (N, C, H, W) in [0, 1].
        y: (N,) labels.
        norm: ``"inf"`` or ``"2"``.
        seed: attack seed.
        eps_max: search ceiling for the ℓ∞ search (default 0.5).
        attack: the ℓ∞ search's fixed-ε attack, a name of :data:`attacks.minimal_eps.SEARCH_ATTACKS`.

    Returns:
        (N,) radii (0 for misclassified inputs, inf when no adversarial example was found)
        and the (N, C, H, W) adversarial examples (x where none was found).
    """
    if norm == "inf":
        from attacks.minimal_eps import minimal_eps

        res = minimal_eps(model, x, y, "inf", attack, eps_max=eps_max or 0.5, tol=1e-3, seed=seed)
        return res.eps.detach().float().cpu(), res.x_adv.detach()
    from attacks import CW

    res = CW(model, norm="2", seed=seed)(x, y)
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    r = torch.where(res.success.cpu(), res.l2.detach().float().cpu(), torch.full_like(res.l2.cpu(), math.inf))
    return torch.where(wrong.cpu(), torch.zeros_like(r), r), res.x_adv.detach()


def soundness_flags(certified: dict[str, float], empirical: float, index: int) -> list[str]:
    """Methods whose certified radius exceeds the empirical one (each also warned about)."""
    bad = [m for m, r in certified.items() if r > empirical + SOUNDNESS_SLACK]
    for m in bad:
        warnings.warn(
            f"UNSOUND: example {index}: {m} certified radius {certified[m]:.6g} > empirical radius {empirical:.6g}",
            SoundnessWarning, stacklevel=2)
    return bad


def ratio(certified: float, empirical: float) -> float | None:
    """certified / empirical (None when undefined)."""
    if not (empirical > 0) or math.isinf(empirical):
        return None
    return certified / empirical


def measured_growth(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, ir: Lowered | None = None
                    ) -> list[float] | None:
    """‖z_n − y_n‖₂ / ‖z_0 − y_0‖₂ after each solver step of the model's (first) ODE block or
    residual chain, None for a model without one.

    y_n are the states of the clean input, z_n those of ``x_adv`` (the perturbation δ
    enters the block as z_0 − y_0, the layers' image of δ). ``ir``: the model's lowered IR
    when the caller has it (a :class:`~verify.certify.Certifier`'s ``ir``); otherwise it is
    lowered here (an adaptive solver: the fixed-step surrogate of the steps accepted on x).
    """
    if ir is None:
        adaptive = is_adaptive(model)
        ir = lower(model, x if adaptive else None, fixed_steps=adaptive)
    with torch.no_grad():
        ys, zs = ir.states(x), ir.states(x_adv)
    if not ys:
        return None
    d0 = float((zs[0] - ys[0]).norm())
    if d0 == 0:
        return None
    return [float((z - y).norm()) / d0 for y, z in zip(ys[1:], zs[1:])]


def _median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else None


def summarize(records: Sequence[dict[str, Any]], methods: Sequence[str], eps_list: Sequence[float]) -> dict[str, Any]:
    """Summary of per-example records (see ``python -m verify certify``).

    Returns:
        dict with n, clean accuracy, what the certificates cover, per method certified
        accuracy at each ε, median certified / empirical radius and their median ratio,
        seconds per example (certification alone; the attack's and the wall time per example
        apart), the number of unsound examples and the number of *unchecked* ones: correctly
        classified examples whose certificate no attack checked (the attack found no
        adversarial example, or did not run), for which "0 unsound" proves nothing.
    """
    n = len(records)
    correct = [r for r in records if r["correct"]]
    covers = sorted({r["certificate_covers"] for r in records if r.get("certificate_covers")})
    out: dict[str, Any] = {"n": n, "clean_accuracy": len(correct) / n if n else None,
                           "certificate_covers": ", ".join(covers) or None,
                           "median_empirical_radius": _median([r["empirical"] for r in correct
                                                               if r["empirical"] is not None]),
                           "unsound_examples": sum(1 for r in records if r.get("unsound")),
                           "unchecked_examples": sum(1 for r in correct if r["empirical"] is None),
                           "attack_seconds_per_example": (sum(r.get("attack_seconds", 0.0) for r in records) / n
                                                          if n else None),
                           "wall_seconds_per_example": sum(r.get("seconds", 0.0) for r in records) / n if n else None,
                           "methods": {}}
    for m in methods:
        radii = [r["methods"][m]["radius"] for r in records if m in r["methods"]]
        out["methods"][m] = {
            "certified_accuracy": {f"{e:g}": (sum(1 for r in radii if r >= e and r > 0) / n if n else None)
                                   for e in eps_list},
            "median_radius": _median([r["methods"][m]["radius"] for r in correct if m in r["methods"]]),
            "median_ratio": _median([r["ratio"].get(m) for r in correct if r["ratio"].get(m) is not None]),
            "seconds_per_example": (sum(r["methods"][m]["seconds"] for r in records if m in r["methods"]) / n
                                    if n else None),
            "unsound": sum(1 for r in records if m in r.get("unsound", [])),
        }
    return out


def summary_table(summary: dict[str, Any], eps_list: Sequence[float]) -> str:
    """Markdown table of :func:`summarize`'s output."""
    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    head = ["method", *[f"cert acc @{e:g}" for e in eps_list], "median r_cert", "median r_emp",
            "median ratio", "s/example", "unsound"]
    unchecked = summary.get("unchecked_examples", 0)
    lines = [f"n = {summary['n']}, clean accuracy = {f(summary['clean_accuracy'])}, "
             f"unsound examples = {summary['unsound_examples']}, unchecked {unchecked}"
             + (" (no adversarial example found: those certificates were not checked)" if unchecked else ""),
             f"certificates cover: {summary.get('certificate_covers') or 'the deployed model'}; "
             f"seconds per example: attack {f(summary.get('attack_seconds_per_example'))}, "
             f"wall {f(summary.get('wall_seconds_per_example'))} (s/example below: certification alone)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in summary["methods"].items():
        row = [m, *[f(s["certified_accuracy"][f"{e:g}"]) for e in eps_list], f(s["median_radius"]),
               f(summary["median_empirical_radius"]), f(s["median_ratio"]), f(s["seconds_per_example"]),
               str(s["unsound"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
