"""Certified radius of one example: the largest ε an engine certifies, searched in few bounds.

A bound that fails at ε gives reference bounds valid at every smaller ε, so the search starts
just above the expected radius and then approaches it from both sides, predicting it from the
drop of the worst margin bound (see :func:`_next_eps`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

from ._lower import COVERS_DEPLOYED

#: exponent p assumed for the bound's drop m0 − m(ε) ∝ ε^p before a certified ε brackets the radius
#: (measured on the zoo ODE-net: p ≈ 1.8 far below the radius, 3–4 around it).
DROP_EXPONENT = 3.0


@dataclasses.dataclass(frozen=True)
class RadiusResult:
    """A certified radius of one example.

    Attributes:
        radius: the largest ε certified by a bound evaluated at ε (0: none).
        upper: smallest ε that failed (inf when the search hit ``eps_max`` certified).
        evaluations: bounds computed.
        seconds: wall time.
        margins: [(ε, worst margin lower bound)] in evaluation order.
        covers: what the radius holds for (see :class:`verify.certify.CertResult`).
    """

    radius: float
    upper: float
    evaluations: int
    seconds: float
    margins: tuple[tuple[float, float], ...]
    covers: str = COVERS_DEPLOYED


def search_radius(engine: Any, x: torch.Tensor, C: torch.Tensor, m0: float, eps_max: float, guess: float,
                  rtol: float = 0.02, atol: float = 1e-4, max_evals: int = 30,
                  covers: str = COVERS_DEPLOYED) -> RadiusResult:
    """Largest certified ε of one example (``x`` (1, C, H, W), spec ``C`` (1, K', K)).

    Args:
        engine: a :class:`verify.engines.Engine`.
        m0: the clean worst margin (> 0).
        eps_max: search ceiling.
        guess: first ε to try.
        rtol, atol: stop when hi − lo ≤ atol + rtol·lo.
        max_evals: cap on bound evaluations.
        covers: what the radius holds for.
    """
    start = time.perf_counter()
    exact = getattr(engine, "exact_radius", None)
    if exact is not None:  # a margin bound linear in ε: its zero, no search
        r = min(exact(m0), eps_max)
        return RadiusResult(r, r if r < eps_max else math.inf, 0, time.perf_counter() - start, ((0.0, m0),), covers)
    lo, hi = 0.0, math.inf
    ref = None
    history: list[tuple[float, float]] = [(0.0, m0)]
    eps = min(guess, eps_max)
    while len(history) - 1 < max_evals:
        e = torch.full((1,), eps, dtype=x.dtype, device=x.device)
        m = float(engine.margins(x, e, C, ref if eps < hi else None).min())
        history.append((eps, m))
        if m > 0:
            lo = eps
        else:
            hi = eps
            if engine.search_reference:
                ref = engine.reference()
        if lo >= eps_max or hi - lo <= atol + rtol * lo:
            break
        eps = _next_eps(history, lo, hi, rtol, atol, eps_max)
        same = [e for e, _ in history[-3:]]
        if math.isfinite(hi) and len(history) > 3 and (all(e <= lo for e in same) or all(e >= hi for e in same)):
            # three evaluations in a row on one side of the radius: the model misleads, bisect
            eps = math.sqrt(lo * hi) if lo > 0 else hi / 2
    return RadiusResult(lo, hi, len(history) - 1, time.perf_counter() - start, tuple(history), covers)


def _next_eps(history: list[tuple[float, float]], lo: float, hi: float, rtol: float, atol: float,
              eps_max: float) -> float:
    """The next ε of the radius search, from the (ε, worst margin bound) pairs so far.

    The bound's drop d(ε) = m(0) − m(ε) grows like a power of ε (exponent ~2–4 near the
    radius, where neurons turn unstable), so log d is close to linear in log ε. The line
    through the two evaluated points nearest the radius (the bracket's ends when there is
    one; slope ``DROP_EXPONENT`` through a single point) predicts the radius r where
    d(r) = m(0). The next ε lies 0.4·tol beside r, on the side that lets the following
    evaluation close the bracket to the tolerance tol = atol + rtol·r.
    """
    m0 = history[0][1]
    points = history[1:]
    ok = sorted(p for p in points if p[1] > 0)
    bad = sorted(p for p in points if p[1] <= 0)
    if ok and bad:
        a, b = ok[-1], bad[0]
    elif bad:
        a, b = (bad[1] if len(bad) > 1 else None), bad[0]
    else:
        a, b = (ok[-2] if len(ok) > 1 else None), ok[-1]

    def log_drop(m: float) -> float:
        return math.log(max(m0 - m, 1e-12 * m0))

    p = DROP_EXPONENT
    if a is not None and a[0] != b[0]:
        p = min(max((log_drop(b[1]) - log_drop(a[1])) / math.log(b[0] / a[0]), 1.0), 8.0)
    r = b[0] * math.exp((math.log(m0) - log_drop(b[1])) / p)
    tol = atol + rtol * r
    if math.isinf(hi):
        return min(r + 0.4 * tol, 10 * lo, eps_max)  # above r: a failure there brings reference bounds
    below = lo == 0 or hi - r <= r - lo  # the radius looks closer to the failed end: land just below it
    eps = r - 0.4 * tol if below else r + 0.4 * tol
    margin = 0.1 * (atol + rtol * lo)
    return min(max(eps, lo + margin), hi - margin)
