"""LP-all: the tightest bound of any single-neuron (triangle) relaxation, by linear programming.

Every ReLU ``z = relu(p)`` with pre-activation bounds ``l < 0 < u`` is relaxed to its convex
hull on [l, u], the triangle ``z ≥ 0, z ≥ p, z ≤ u(p − l)/(u − l)`` (the mixed-integer
encoding of :mod:`verify._milp_encoding` with its binaries relaxed to [0, 1] projects onto
exactly this set). Layer by layer in topological order, every unstable neuron's lower and
upper bound is the minimum and maximum of its pre-activation over the linear program of the
network up to it, relaxed with the bounds already tightened the same way; then each margin is
the minimum of ``c·logits`` over the whole network's program. Salman et al. call this LP-all:
for fixed intermediate bounds the triangle LP equals CROWN with optimal lower slopes, so no
α-CROWN (and no other method that relaxes one neuron at a time) can certify a larger radius:
it is the ceiling of α-CROWN, reached only by branching or multi-neuron relaxations.

Cost: two linear programs per unstable neuron, each over the network before it (HiGHS's dual
simplex, warm-started from the previous program's basis): seconds on zoo ``mlp`` and
``ode-small``, hours on zoo ``ode``. A time limit per example keeps the neurons not yet
reached at CROWN's bounds (sound, looser; :attr:`LpAll.complete` says which happened).

Soundness: each LP value is widened by ``BOUND_SLACK`` (relative and absolute) before it
becomes a bound, and an LP not solved to optimality leaves the bound it had (CROWN's, or
interval arithmetic's). The margins are never below CROWN's.

References:
    Salman, Yang, Zhang, Hsieh and Zhang, "A Convex Relaxation Barrier to Tight Robustness
    Verification of Neural Networks", NeurIPS 2019.
    Ehlers, "Formal Verification of Piece-Wise Linear Feed-Forward Neural Networks", ATVA 2017.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ._errors import CertifyError
from ._lower import Lowered
from ._milp_encoding import BOUND_SLACK, Encoder, Program

#: default seconds of linear programming per example (all layers and margins together).
TIME_LIMIT = 60.0


class LpAll:
    """The LP-all margin bound on the IR's dense graph (L∞ only), one example at a time.

    Args:
        ir: the lowered model.
        norm: ``"inf"``.
        time_limit: seconds per example; neurons not reached keep CROWN's bounds and margins
            not reached CROWN's (still sound).

    Raises:
        CertifyError: a norm other than ``"inf"``, a model without a dense affine–ReLU graph,
            a non-positive time limit.
    """

    name = "lp-all"
    search_reference = False

    def __init__(self, ir: Lowered, norm: str = "inf", time_limit: float = TIME_LIMIT) -> None:
        self.encoder = Encoder.for_engine("lp-all", ir, norm, time_limit)
        self.ir, self.time_limit = ir, float(time_limit)
        #: whether the last call bounded every unstable neuron and margin by its LP.
        self.complete = True
        #: linear programs solved in the last call.
        self.programs = 0
        #: CROWN's margins of the last call (the floor of the result).
        self.crown_margins: torch.Tensor | None = None
        #: pre-activation bounds of the last call: node -> (lower, upper) (float64 arrays).
        self.bounds: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def margins(self, x: torch.Tensor, eps: torch.Tensor, C: torch.Tensor,
                reference: object | None = None) -> torch.Tensor:
        """(N, K') lower bounds on ``C @ logits`` over each example's ε-box ∩ [0, 1]."""
        if reference is not None:
            raise CertifyError("the lp-all engine takes no reference bounds")
        out = torch.empty(C.shape[:2], dtype=x.dtype, device=x.device)
        self.complete, self.programs = True, 0
        for i in range(x.shape[0]):
            out[i] = self._one(x[i:i + 1], float(eps[i]), C[i])
        return out

    def reference(self) -> None:
        return None

    def _one(self, x: torch.Tensor, eps: float, C: torch.Tensor) -> torch.Tensor:
        deadline = time.perf_counter() + self.time_limit
        enc, g = self.encoder, self.encoder.graph
        bounds, crown = enc.bounds(x, eps, C)
        self.crown_margins = crown
        x0 = enc.node_x(x)
        for _, p in g.relus:
            node = g.nodes[p]
            if node.kind == "affine" and node.src[0] == 0:
                continue  # interval arithmetic on the box is exact here
            lo, hi = bounds[p]
            unstable = np.nonzero((lo < 0) & (hi > 0))[0]
            if unstable.size == 0:
                continue
            prog, cols, _, _ = enc.encode(x0, bounds[0], bounds, None, upto=p)
            values = self._minimise(prog, [(cols[j], s) for j in unstable for s in (1.0, -1.0)], deadline)
            lo, hi = lo.copy(), hi.copy()
            for k, j in enumerate(unstable):
                vmin, vmax = values[2 * k], values[2 * k + 1]
                if vmin is not None:
                    lo[j] = max(lo[j], vmin - BOUND_SLACK * (1 + abs(vmin)))
                if vmax is not None:
                    hi[j] = min(hi[j], -vmax + BOUND_SLACK * (1 + abs(vmax)))
            bounds[p] = (lo, np.maximum(hi, lo))
        self.bounds = {p: bounds[p] for _, p in g.relus}
        prog, logits, _, _ = enc.encode(x0, bounds[0], bounds, None)
        rows = C.double().cpu().numpy()
        values = self._minimise(prog, [(logits, row) for row in rows], deadline)
        margins = [c if v is None else max(c, v - BOUND_SLACK * (1 + abs(v)))
                   for c, v in zip(crown.double().tolist(), values)]
        return torch.tensor(margins, dtype=x.dtype, device=x.device)

    def _minimise(self, prog: Program, objectives: list[tuple[np.ndarray, np.ndarray | float]],
                  deadline: float) -> list[float | None]:
        values, solved = minimise(prog, objectives, deadline)
        self.programs += solved
        self.complete &= all(v is not None for v in values)
        return values


def minimise(prog: Program, objectives: list[tuple[np.ndarray, np.ndarray | float]], deadline: float
             ) -> tuple[list[float | None], int]:
    """Minimum of ``coef·v[cols]`` over the program's LP relaxation, per objective (None: not solved to
    optimality before ``deadline``, a ``time.perf_counter()`` value), and the number of LPs run. One
    HiGHS instance; each LP starts from the last one's basis."""
    h = prog.highs(np.zeros(prog.n_col), max(deadline - time.perf_counter(), 0.01), relax=True)
    # presolve reruns on every objective and discards the warm basis: off, the same optima come
    # 13-19x faster (zoo mlp example 1 at eps 0.03: 57 LPs in 0.6 instead of 11.6 CPU s)
    h.setOptionValue("presolve", "off")
    out: list[float | None] = []
    prev: np.ndarray | None = None
    runs = 0
    for cols, coef in objectives:
        left = deadline - time.perf_counter()
        if left <= 0:
            out.append(None)
            continue
        cost = np.zeros(prog.n_col)
        np.add.at(cost, cols, coef)
        touched = np.nonzero(cost)[0] if prev is None else np.union1d(prev, np.nonzero(cost)[0])
        h.changeColsCost(touched.size, touched.astype(np.int32), cost[touched])
        prev = np.nonzero(cost)[0]
        h.setOptionValue("time_limit", h.getRunTime() + min(left, 1e9))  # HiGHS's clock runs over all runs
        h.run()
        runs += 1
        v = float(h.getInfo().objective_function_value)
        ok = h.modelStatusToString(h.getModelStatus()) == "Optimal" and math.isfinite(v)
        out.append(v if ok else None)
    return out, runs


__all__ = ["TIME_LIMIT", "LpAll", "minimise"]
