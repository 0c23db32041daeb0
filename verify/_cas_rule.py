"""The step decisions of a controlled adaptive solver as the rule of a trajectory graph.

:mod:`models.cas` keeps, between two steps of one example, the time t, the next step size h,
the clip counter and the fallback flag (every step accepted without an error test). A graph
node is exactly that tuple ``(t, h, clips, forced)``, and its successors are computed by the
solver's own :func:`models.cas.next_step` in the same float64 arithmetic, so every node's times
and step sizes are bit for bit those of the deployed solver (two histories meet in one node only
when the solver's state after them is identical). The decisions feasible at a node are read from
an interval of the error ratio (:func:`models.cas.error_ratio` bounded over boxes), widened by a
relative ``slack`` so that the rounding of the deployed arithmetic cannot hide one.

References:
    Zeqiri, Müller, Fischer, Vechev, "Efficient Certified Training and Robustness Verification
    of Neural ODEs" (GAINS), ICLR 2023.
"""

from __future__ import annotations

import dataclasses

import torch

from models.cas import ACCEPT, ACCEPT_DOUBLE, END_SLACK, REJECT, CASRule, next_step

Node = tuple[float, float, int, bool]  # (t, h, clips, forced)
Box = tuple[torch.Tensor, torch.Tensor]


def _abs_box(box: Box) -> Box:
    """Interval of |v| for v in [lo, hi], elementwise."""
    lo, hi = box
    lower = torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo)))
    return lower, torch.maximum(lo.abs(), hi.abs())


@dataclasses.dataclass(frozen=True)
class CASGraphRule:
    """The decisions of one CAS block for :func:`verify._trajectory.trajectory_margins`.

    Attributes:
        rule: the solver's rule.
        h0: its first step (a learned h0: the running mean the deployed block uses).
        slack: relative widening of the error ratio's interval.
    """

    rule: CASRule
    h0: float
    slack: float = 1e-4

    @property
    def needs_states(self) -> bool:
        """Whether the ratio depends on the state boxes (rtol > 0)."""
        return self.rule.rtol > 0

    def root(self) -> Node:
        T = self.rule.T
        return (0.0, min(self.h0, T), 1 if self.h0 > T else 0, False)

    def attempt(self, node: Node) -> tuple[float, float]:
        return node[0], node[1]

    def forced(self, node: Node) -> bool:
        return node[3]

    def sort_key(self, node: Node) -> tuple[float, ...]:
        t, h, clips, forced = node
        return (t, -h, float(forced), float(clips))

    def decisions(self, lo: float, hi: float) -> tuple[int, ...]:
        """Codes some ratio in [lo, hi] (widened by ``slack``) takes under :func:`models.cas.decide`."""
        if not lo <= hi:  # a NaN bound (an overflow): every decision stays feasible
            return (REJECT, ACCEPT, ACCEPT_DOUBLE)
        lo, hi = lo * (1 - self.slack), hi * (1 + self.slack)
        tau = 2.0 ** (-self.rule.order)
        out = []
        if hi > 1.0:
            out.append(REJECT)
        if lo <= 1.0 and hi > tau:
            out.append(ACCEPT)
        if lo <= tau:
            out.append(ACCEPT_DOUBLE)
        return tuple(out)

    def ratio_bounds(self, err: Box, y0: Box | None, y1: Box | None) -> tuple[float, float]:
        """Interval of :func:`models.cas.error_ratio` for err, y, y_new in the boxes (states only with rtol > 0)."""
        elo, ehi = _abs_box(err)
        atol, rtol = self.rule.atol, self.rule.rtol
        if not rtol:
            return float(elo.sum()) / atol, float(ehi.sum()) / atol
        a0, a1 = _abs_box(y0), _abs_box(y1)
        small = atol + rtol * torch.maximum(a0[0], a1[0])
        large = atol + rtol * torch.maximum(a0[1], a1[1])
        return float((elo / large).sum()), float((ehi / small).sum())

    def after(self, node: Node, code: int) -> Node | None:
        """The solver's state after ``code`` at ``node`` (None: the integration ended)."""
        t, h, clips, forced = node
        T = self.rule.T
        if forced:
            t1 = T if h == T - t else t + h
            return (t1, min(h, T - t1), clips, True) if T - t1 > END_SLACK else None
        t1, h1, clips1, fallback = next_step(self.rule, t, h, code, clips)
        if fallback:
            return (t, h, clips1, True)
        return (t1, h1, clips1, False) if T - t1 > END_SLACK else None
