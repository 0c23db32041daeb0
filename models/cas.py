"""Controlled adaptive solver (CAS): an embedded Runge–Kutta pair whose step sizes live on a grid.

GAINS (Zeqiri et al.) replaces the continuous step-size update of an adaptive solver by a
three-way rule on the error ratio, so that every step size is ``h0 · 2^k`` and a verifier can
enumerate the step decisions any input of a ball can cause. This module is that solver, for
any explicit pair of :data:`lipbound.tableau.TABLEAUS` with embedded weights ``b_err``
(``dopri5``, ``bosh3``, ``heun-euler``, ``fehlberg2``), written as small pure functions that
the solver and the verifier of the trajectory graph share.

Exact semantics (one example; a batch integrates each example's own sequence):

* **State.** Time ``t`` (a Python float, float64), step size ``h``, state ``y``. It starts at
  ``t = 0``, ``h = min(h0, T)``. Times are sums of ``h0 · 2^k``; with ``h0`` a float32 value
  (as a stored running mean is) these sums are exact in float64.
* **One step** from ``(t, y)`` of size ``h`` with the tableau ``(a, b, c, b_err)``: stages
  ``k_i = f(t + c_i h, y + h Σ_{j<i} a_ij k_j)``, the proposal ``y_new = y + h Σ b_i k_i`` and the
  error estimate ``err = h Σ (b_i − b_err_i) k_i`` (:func:`rk_step`). A first-same-as-last pair
  (dopri5, bosh3) reuses its last stage ``f(t + h, y_new)`` as the next step's first stage.
* **Error ratio** (:func:`error_ratio`), per example, over every state entry ``i``:
  ``ratio = Σ_i |err_i| / (atol + rtol · max(|y_i|, |y_new_i|))``. With ``rtol = 0`` this is
  GAINS's CAS norm ``‖err‖₁ / atol`` (its ``_compute_error_est``; GAINS then averages it over
  the batch, which equals ours at batch size 1 — the size its verifier and attacks use).
* **Decision** (:func:`decide`, ``order`` = the tableau's order, 5 for dopri5):
  ``ratio ≤ 2^(−order)`` → :data:`ACCEPT_DOUBLE` (take ``y_new``, next ``h' = 2h``);
  else ``ratio ≤ 1`` → :data:`ACCEPT` (take ``y_new``, ``h' = h``); else (also NaN) →
  :data:`REJECT` (keep ``t, y``, ``h' = h / 2``).
* **Last step clipped.** After the decision, if ``t' + h' > T`` (``t'`` the time after the
  step), ``h' = T − t'``, and that step, when taken, ends exactly at ``T``. The integration
  stops once ``T − t ≤`` :data:`END_SLACK` (GAINS's 1e-8). Steps before the first clip are all
  ``h0 · 2^k``; after a clip they are the clipped size times ``2^(−j)`` (rejections halve it).
* **Minimum step** (GAINS's fallback). Count ``clips`` = 0 until the first clip, then 1 plus
  the rejections since. On a rejection, if ``clips > 0`` it grows by one; then if
  (``h / 2 < min_step`` and ``clips == 0``) or ``clips > 1 + clip_rejects``, the solve gives up
  controlling: ``h'`` stays ``h`` (the rejected step is recomputed) and every later step is
  accepted without an error test (recorded as :data:`ACCEPT`, size ``min(h, T − t)``).
  So a fallback shows in the record as a REJECT followed by a step of the same ``(t, h)``.

The record of a solve is, per example, the list of :class:`CASStep` ``(t, h, decision)`` of
every step tried (rejected ones included), in order. The decision is the rule's: a doubling
whose doubled step the clip shortens stays :data:`ACCEPT_DOUBLE` (GAINS's own record writes 1
for it when the clipped step is no larger than the step taken). Stage times ``t + c_i h`` are
computed in float64 and cast to the state's dtype (GAINS evaluates a stage with ``c_i = 1`` one
float below ``t + h``: a 1-ulp difference in the time plane).

References:
    Zeqiri, Müller, Fischer, Vechev, "Efficient Certified Training and Robustness
    Verification of Neural ODEs", ICLR 2023 (GAINS: controlled adaptive solvers).
    Dormand & Prince, "A family of embedded Runge-Kutta formulae", JCAM 1980.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from lipbound.tableau import TABLEAUS, ButcherTableau

#: Step decisions (:func:`decide`).
REJECT, ACCEPT, ACCEPT_DOUBLE = 0, 1, 2
#: The integration ends once T − t is at most this (GAINS's loop condition).
END_SLACK = 1e-8
#: GAINS's minimum step (absolute, in time units) below which halving gives up.
GAINS_MIN_STEP = 0.02

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CASError(ValueError):
    """An invalid controlled-adaptive-solver rule (unknown tableau, no embedded pair, h0 ≤ 0, ...)."""


class CASStepLimitError(RuntimeError):
    """A solve needed more than ``CASRule.max_steps`` steps for one example."""


class CASStep(NamedTuple):
    """One step tried: start time, size and the rule's decision (:data:`REJECT`, ...)."""

    t: float
    h: float
    decision: int


@dataclasses.dataclass(frozen=True)
class CASRule:
    """The controlled adaptive solver's rule (see the module docstring for its exact semantics).

    Args:
        tableau: key of :data:`lipbound.tableau.TABLEAUS` of an embedded pair (``b_err`` set).
        atol: absolute tolerance of the error ratio (> 0).
        rtol: relative tolerance (≥ 0; GAINS uses 0).
        order: exponent of the doubling threshold 2^(−order); None: the tableau's order.
        h0: first step size and grid base; None: learned (given to :func:`integrate`, e.g. the
            ODE block's running mean).
        min_step: halving below it (before any clip) triggers the fallback.
        clip_rejects: rejections tolerated after the first clip before the fallback.
        T: end time.
        max_steps: cap on the steps tried per example (None: no cap).

    Raises:
        CASError: unknown tableau, a tableau without embedded weights, or invalid numbers.
    """

    tableau: str = "dopri5"
    atol: float = 0.005
    rtol: float = 0.0
    order: int | None = None
    h0: float | None = None
    min_step: float = GAINS_MIN_STEP
    clip_rejects: int = 1
    T: float = 1.0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.tableau not in TABLEAUS:
            raise CASError(f"unknown tableau {self.tableau!r}; choose one of {', '.join(TABLEAUS)}")
        tab = TABLEAUS[self.tableau]
        if tab.b_err is None:
            pairs = [n for n, t in TABLEAUS.items() if t.b_err is not None]
            raise CASError(f"tableau {self.tableau!r} has no embedded pair (b_err); choose one of {', '.join(pairs)}")
        if not (self.atol > 0 and self.rtol >= 0):
            raise CASError(f"a CAS needs atol > 0 and rtol >= 0, got atol={self.atol}, rtol={self.rtol}")
        if self.h0 is not None and not self.h0 > 0:
            raise CASError(f"h0 must be positive (or None: learned), got {self.h0}")
        if not (self.T > 0 and self.min_step >= 0 and self.clip_rejects >= 0):
            raise CASError(f"need T > 0, min_step >= 0, clip_rejects >= 0; got {self.T}, {self.min_step}, "
                           f"{self.clip_rejects}")
        if self.max_steps is not None and self.max_steps < 1:
            raise CASError(f"max_steps must be >= 1, got {self.max_steps}")
        object.__setattr__(self, "order", tab.order if self.order is None else int(self.order))

    @property
    def butcher(self) -> ButcherTableau:
        """The pair's :class:`ButcherTableau`."""
        return TABLEAUS[self.tableau]


def error_ratio(y: torch.Tensor, y_new: torch.Tensor, err: torch.Tensor, atol: float, rtol: float) -> torch.Tensor:
    """Per-example error ratio ``Σ_i |err_i| / (atol + rtol · max(|y_i|, |y_new_i|))``.

    Args:
        y: state at the step's start (N, ...).
        y_new: proposed state (N, ...).
        err: error estimate (N, ...).
        atol: absolute tolerance.
        rtol: relative tolerance.

    Returns:
        ratios, shape (N,).
    """
    scale = atol + rtol * torch.maximum(y.abs(), y_new.abs()) if rtol else atol
    return (err.abs() / scale).flatten(1).sum(1)


def decide(ratio: torch.Tensor, order: int) -> torch.Tensor:
    """The rule's decision per ratio: :data:`ACCEPT_DOUBLE` when ``ratio ≤ 2^(−order)``,
    :data:`ACCEPT` when ``ratio ≤ 1``, else (NaN too) :data:`REJECT`.

    Args:
        ratio: error ratios (any shape).
        order: the pair's order.

    Returns:
        int64 codes, same shape.
    """
    double = torch.full_like(ratio, ACCEPT_DOUBLE, dtype=torch.int64)
    accept = torch.full_like(double, ACCEPT)
    return torch.where(ratio <= 2.0 ** (-order), double, torch.where(ratio <= 1, accept, torch.full_like(double, REJECT)))


def is_fsal(tab: ButcherTableau) -> bool:
    """Whether the last stage is f(t + h, y_new), reusable as the next step's first stage."""
    return tab.c[-1] == 1 and tab.b[-1] == 0 and tuple(tab.a[-1][:-1]) == tuple(tab.b[:-1])


def rk_step(field: Field, tab: ButcherTableau, t: float, h: float, y: torch.Tensor, k0: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the pair.

    Args:
        field: f(t, y) with t a scalar tensor.
        tab: the pair.
        t: start time.
        h: step size.
        y: state (N, ...).
        k0: f(t, y).

    Returns:
        (y_new, err, last stage), ``err = h Σ (b_i − b_err_i) k_i``.
    """
    a, b, c = tab.a_float, tab.b_float, tab.c_float
    e = [bi - be for bi, be in zip(b, tab.b_err_float)]
    ks = [k0]
    for i in range(1, tab.stages):
        yi = y + sum(h * a[i][j] * ks[j] for j in range(i) if a[i][j] != 0.0)
        ks.append(field(torch.tensor(t + c[i] * h, dtype=y.dtype, device=y.device), yi))
    y_new = y + sum(h * b[i] * ks[i] for i in range(tab.stages) if b[i] != 0.0)
    err = sum(h * e[i] * ks[i] for i in range(tab.stages) if e[i] != 0.0)
    return y_new, err, ks[-1]


@dataclasses.dataclass
class _Path:
    """One example's controller state."""

    t: float
    h: float
    clips: int = 0
    forced: bool = False
    nfe: int = 0


def next_step(rule: CASRule, t: float, h: float, decision: int, clips: int, forced: bool = False
              ) -> tuple[float, float, int, bool]:
    """The controller after one step: (next t, next h, next clips, fallback in force).

    Args:
        rule: the rule.
        t: the step's start time.
        h: its size.
        decision: its decision (ignored once the fallback is in force: the step is accepted).
        clips: the clip counter before it (see the module docstring).
        forced: whether the fallback was already in force for this step.

    Returns:
        (t', h', clips', forced'): when a rejection triggers the fallback t' = t and h' = h (the
        step is recomputed, accepted, and so is every later one, of size ``min(h, T − t)``).
    """
    if forced:
        t_next = rule.T if h == rule.T - t else t + h
        return t_next, min(h, rule.T - t_next), clips, True
    if decision == REJECT:
        t_next, h_next = t, h / 2
        if clips > 0:
            clips += 1
        if (h_next < rule.min_step and clips == 0) or clips > 1 + rule.clip_rejects:
            return t, h, clips, True
    else:
        t_next = rule.T if h == rule.T - t else t + h
        h_next = 2 * h if decision == ACCEPT_DOUBLE else h
    if t_next + h_next > rule.T:
        h_next = rule.T - t_next
        clips = max(clips, 1)
    return t_next, h_next, clips, False


def integrate(field: Field, y0: torch.Tensor, rule: CASRule, h0: float | None = None
              ) -> tuple[torch.Tensor, list[list[CASStep]], list[int]]:
    """Integrate dy/dt = field(t, y) from 0 to ``rule.T`` with the CAS, each example on its own steps.

    Examples at the same ``(t, h)`` are stepped together in one batched call of ``field``; the
    state is updated out of place, so the result is differentiable in ``y0`` and the field's
    parameters (the decisions are not).

    Args:
        field: f(t, y) with t a scalar tensor, y of shape (n, ...) for any subset of the batch.
        y0: initial states (N, ...).
        rule: the rule.
        h0: first step (the grid base); None: ``rule.h0``.

    Returns:
        (y at T (N, ...), per example the list of :class:`CASStep` tried, per example its
        number of field evaluations).

    Raises:
        CASError: no h0 (neither given nor in the rule), or h0 ≤ 0.
        CASStepLimitError: an example needed more than ``rule.max_steps`` steps.
    """
    h0 = rule.h0 if h0 is None else float(h0)
    if h0 is None or not h0 > 0:
        raise CASError(f"the CAS needs a positive first step h0, got {h0} (a learned h0 is 0 until trained)")
    tab = rule.butcher
    fsal = is_fsal(tab)
    n = y0.shape[0]
    paths = [_Path(0.0, min(h0, rule.T), 1 if h0 > rule.T else 0) for _ in range(n)]
    steps: list[list[CASStep]] = [[] for _ in range(n)]
    y = y0
    k0 = field(torch.tensor(0.0, dtype=y0.dtype, device=y0.device), y0) if fsal else None
    for p in paths:
        p.nfe = int(fsal)
    while True:
        active = [i for i, p in enumerate(paths) if rule.T - p.t > END_SLACK]
        if not active:
            return y, steps, [p.nfe for p in paths]
        t, h = paths[active[0]].t, paths[active[0]].h
        if not t + h > t:
            raise CASStepLimitError(f"CAS step size underflow at t={t:g} (h={h:g})")
        group = [i for i in active if paths[i].t == t and paths[i].h == h]
        idx = torch.tensor(group, device=y0.device)
        yg = y.index_select(0, idx)
        tt = torch.tensor(t, dtype=y0.dtype, device=y0.device)
        kg = k0.index_select(0, idx) if fsal else field(tt, yg)
        y_new, err, k_last = rk_step(field, tab, t, h, yg, kg)
        with torch.no_grad():
            codes = decide(error_ratio(yg, y_new, err, rule.atol, rule.rtol), rule.order).tolist()
        taken = []
        for pos, i in enumerate(group):
            p = paths[i]
            p.nfe += tab.stages - 1 if fsal else tab.stages
            code = ACCEPT if p.forced else int(codes[pos])
            steps[i].append(CASStep(t, h, code))
            if rule.max_steps is not None and len(steps[i]) > rule.max_steps:
                raise CASStepLimitError(f"CAS {rule.tableau} needed more than max_steps={rule.max_steps} steps "
                                        f"(atol={rule.atol:g}, h0={h0:g})")
            p.t, p.h, p.clips, p.forced = next_step(rule, t, h, code, p.clips, p.forced)
            if code != REJECT:
                taken.append(pos)
        if taken:
            sel = torch.tensor(taken, device=y0.device)
            dst = idx.index_select(0, sel)
            y = y.index_copy(0, dst, y_new.index_select(0, sel))
            if fsal:
                k0 = k0.index_copy(0, dst, k_last.index_select(0, sel))


def initial_step(field: Field, y0: torch.Tensor, rule: CASRule) -> float:
    """GAINS's initial step of a training batch (its ``_select_initial_step_mod``), the statistic
    its ODE block averages into ``running_mean_step``.

    With the batch means ``d0 = Σ|y0| / (atol·N)`` and ``d1 = Σ|f(0, y0)| / (atol·N)``, a trial step
    ``h = 0.01·d0/d1`` (1e-5 when either is below 1e-5) gives the largest per-example error ratio
    ``r``; the result is ``h · min(10, max(0.9 / r^(1/(p−1)), 1 if r < 1 else 0.2))`` (``h·10`` when
    ``r = 0``; ``p`` the tableau's order), clipped to T. No gradient flows through it.

    Args:
        field: f(t, y).
        y0: the batch of initial states (N, ...).
        rule: the rule (its tolerances, tableau and T).

    Returns:
        the first step, a float in (0, T].
    """
    with torch.no_grad():
        tab = rule.butcher
        f0 = field(torch.tensor(0.0, dtype=y0.dtype, device=y0.device), y0)
        scale = rule.atol * y0.shape[0]
        d0, d1 = float(y0.abs().sum()) / scale, float(f0.abs().sum()) / scale
        h = 1e-5 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        y1, err, _ = rk_step(field, tab, 0.0, h, y0, f0)
        ratio = float(error_ratio(y0, y1, err, rule.atol, rule.rtol).max())
    if ratio == 0:
        factor = 10.0
    else:
        factor = min(10.0, max(0.9 / ratio ** (1.0 / max(1, tab.order - 1)), 1.0 if ratio < 1 else 0.2))
    return min(h * factor, rule.T)


def running_mean(previous: float, statistic: float) -> float:
    """GAINS's running mean of the first step: ``clamp(0.9·previous + 0.1·statistic, 0, 1)``."""
    return min(1.0, max(0.0, 0.9 * previous + 0.1 * statistic))


def rule_for(solver: Any) -> CASRule:
    """The :class:`CASRule` of a CAS :class:`~models.solver.SolverConfig` (``cas-<pair>``; its
    ``step_size`` is h0, None: learned)."""
    return CASRule(tableau=solver.method.removeprefix("cas-"), atol=solver.atol, rtol=solver.rtol, h0=solver.step_size,
                   T=solver.T, max_steps=solver.max_steps)
