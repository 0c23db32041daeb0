"""The mixed-integer encoding of a ReLU network on an L∞ box, solved by HiGHS (used by :mod:`verify._milp`).

The network is the IR's dense graph (:class:`~verify._dense_graph.DenseGraph`: affine maps,
weighted sums and ReLUs, an unrolled solver's stages included). Every affine or sum node
gets continuous variables tied to its inputs by equality rows; a ReLU whose pre-activation
bounds ``l < 0 < u`` straddle zero gets an output ``z ∈ [0, u]`` and a binary ``a`` with
the big-M encoding ``z ≥ p``, ``z ≤ p − l(1 − a)``, ``z ≤ u·a`` (exact for binary ``a``);
a ReLU with ``l ≥ 0`` is the identity and one with ``u ≤ 0`` is zero, so only the unstable
neurons cost a binary. The bounds ``l, u`` are CROWN's pre-activation bounds intersected
with interval arithmetic, computed on the largest set the program may visit (the ball of
the current ε ceiling), so the encoding is exact on it.

Two programs share the encoding (:mod:`verify._milp`):

* margins (``Milp``): at a fixed ε, ``min c·f(x')`` over ``x' ∈ [x−ε, x+ε] ∩ [0, 1]``,
  one program per specification row; the solver's dual bound is a valid lower bound (the
  exact minimum when solved to the gap, CROWN's bound when larger, e.g. after a time limit).
* the minimal adversarial distance (``exact_radius``): ``min ε`` over ``x'`` in the
  ε-box ∩ [0, 1] with ``f_j(x') ≥ f_y(x')``. The disjunction over wrong classes j is taken
  as one program per class, the minimum over classes: each program keeps a single linear
  target constraint (a binary per class would add a big-M on the logits, weakening every
  LP relaxation), the classes are tried from the highest clean logit down, and each found
  counterexample lowers the ceiling ε for the rest, for which the bounds are recomputed
  (tighter big-M) and a class CROWN already certifies at the ceiling is skipped unsolved.

References:
    Tjeng, Xiao and Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
    Programming" (MIPVerify), ICLR 2019. Huangfu and Hall, "Parallelizing the dual revised
    simplex method" (HiGHS), Math. Prog. Comp. 2018.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch

from ._dense_graph import DenseGraph, GraphError
from ._errors import CertifyError
from ._lower import Lowered
from .crown import Crown

#: relative and absolute widening of float32 CROWN bounds before they become float64 big-M constants.
BOUND_SLACK = 1e-5
#: HiGHS's relative MIP gap (the exact radius and margins are exact to this relative tolerance).
REL_GAP = 1e-4
_INF = math.inf
_QUIET: list[bool] = []


@contextlib.contextmanager
def _silenced_stdout() -> Iterator[None]:
    """File descriptor 1 sent to /dev/null (HiGHS prints a banner when its first instance is made)."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _highs():  # noqa: ANN202 - highspy.Highs, imported lazily
    import highspy

    if not _QUIET:
        with _silenced_stdout():
            h = highspy.Highs()
        _QUIET.append(True)
    else:
        h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return h


@dataclasses.dataclass
class Program:
    """A MILP under construction: columns with bounds, rows in COO form."""

    col_lo: list[np.ndarray] = dataclasses.field(default_factory=list)
    col_hi: list[np.ndarray] = dataclasses.field(default_factory=list)
    col_int: list[np.ndarray] = dataclasses.field(default_factory=list)
    rows: list[np.ndarray] = dataclasses.field(default_factory=list)
    cols: list[np.ndarray] = dataclasses.field(default_factory=list)
    vals: list[np.ndarray] = dataclasses.field(default_factory=list)
    row_lo: list[np.ndarray] = dataclasses.field(default_factory=list)
    row_hi: list[np.ndarray] = dataclasses.field(default_factory=list)
    n_col: int = 0
    n_row: int = 0

    def add_cols(self, lo: np.ndarray, hi: np.ndarray, integer: bool = False) -> np.ndarray:
        k = len(lo)
        self.col_lo.append(np.asarray(lo, float))
        self.col_hi.append(np.asarray(hi, float))
        self.col_int.append(np.full(k, integer))
        idx = np.arange(self.n_col, self.n_col + k)
        self.n_col += k
        return idx

    def add_rows(self, r: np.ndarray, c: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Rows ``lo ≤ Σ v·x[c] ≤ hi``; ``r`` indexes the new rows from 0."""
        self.rows.append(np.asarray(r) + self.n_row)
        self.cols.append(np.asarray(c))
        self.vals.append(np.asarray(v, float))
        self.row_lo.append(np.asarray(lo, float))
        self.row_hi.append(np.asarray(hi, float))
        self.n_row += len(lo)

    def solve(self, cost: np.ndarray, time_limit: float) -> Solution:
        h = self.highs(cost, time_limit)
        start = time.perf_counter()
        h.run()
        status = h.modelStatusToString(h.getModelStatus())
        info = h.getInfo()
        has_x = info.primal_solution_status == 2  # kSolutionStatusFeasible
        x = np.asarray(h.getSolution().col_value) if has_x else None
        return Solution(status, float(info.mip_dual_bound), float(info.objective_function_value) if has_x else _INF,
                         x, time.perf_counter() - start, int(info.mip_node_count))

    def highs(self, cost: np.ndarray, time_limit: float, relax: bool = False):  # noqa: ANN201 - highspy.Highs
        """A HiGHS instance holding the program (minimise ``cost``), not yet run; ``relax``: every
        column continuous (the LP relaxation: a ReLU's big-M rows with a ∈ [0, 1] are its triangle)."""
        import highspy
        from scipy import sparse

        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n_col, self.n_row
        lp.col_cost_ = cost
        lp.col_lower_ = np.concatenate(self.col_lo)
        lp.col_upper_ = np.concatenate(self.col_hi)
        lp.row_lower_ = np.concatenate(self.row_lo) if self.row_lo else np.zeros(0)
        lp.row_upper_ = np.concatenate(self.row_hi) if self.row_hi else np.zeros(0)
        a = sparse.csc_matrix((np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))),
                              shape=(self.n_row, self.n_col))
        a.sum_duplicates()
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
        if not relax:
            lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                               for i in np.concatenate(self.col_int)]
        h = _highs()
        h.setOptionValue("time_limit", max(float(time_limit), 0.01))
        h.setOptionValue("mip_rel_gap", REL_GAP)
        h.setOptionValue("mip_feasibility_tolerance", 1e-9)
        h.setOptionValue("primal_feasibility_tolerance", 1e-9)
        # RINS and RENS solve sub-MIPs for primal solutions; on these programs they took 80 % of the
        # time (measured: 16 of 20 s on one zoo ode-small class), and the radius needs the dual bound.
        h.setOptionValue("mip_heuristic_run_rins", False)
        h.setOptionValue("mip_heuristic_run_rens", False)
        h.passModel(lp)
        return h


@dataclasses.dataclass(frozen=True)
class Solution:
    status: str  # HiGHS's model status text ("Optimal", "Infeasible", "Time limit reached", ...)
    dual_bound: float
    objective: float
    x: np.ndarray | None
    seconds: float
    nodes: int


class Encoder:
    """The MILP encoding of one dense graph around one input (node-order vectors, float64)."""

    @classmethod
    def for_engine(cls, method: str, ir: Lowered, norm: str, time_limit: float) -> Encoder:
        """The encoder of an engine (``milp``, ``lp-all``) after checking its arguments.

        Raises:
            CertifyError: a norm other than ``"inf"``, a non-positive time limit, an IR without a
                dense affine–ReLU graph (e.g. max pooling).
        """
        if norm != "inf":
            raise CertifyError(f"{method} encodes the L∞ ball only, not norm {norm!r}")
        if not (time_limit > 0):
            raise CertifyError(f"{method} time_limit must be > 0, got {time_limit!r}")
        try:
            return cls(DenseGraph.from_lowered(ir))
        except GraphError as err:
            raise CertifyError(f"{method}: {err}") from err

    def __init__(self, graph: DenseGraph) -> None:
        self.graph = graph
        self.crown = Crown(graph, "inf")
        self._sparse: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        n = graph.nodes[0].dim
        order = graph.flat_input(torch.arange(n, dtype=torch.float64).view(1, *graph.input_shape))[0]
        #: node-order entry k of the input is pixel ``perm[k]`` of the flattened image.
        self.perm = order.round().long().numpy()

    def _coo(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if i not in self._sparse:
            w = self.graph.nodes[i].weight.detach().double().cpu().numpy()
            r, c = np.nonzero(w)
            self._sparse[i] = (r, c, w[r, c])
        return self._sparse[i]

    def node_x(self, x: torch.Tensor) -> np.ndarray:
        return self.graph.flat_input(x.reshape(1, *self.graph.input_shape).double())[0].cpu().numpy()

    def image(self, v: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """Node-order input vector -> image shaped like ``like`` (1, C, H, W)."""
        flat = np.empty_like(v)
        flat[self.perm] = v
        return torch.as_tensor(flat, dtype=like.dtype).view_as(like)

    def bounds(self, x: torch.Tensor, eps: float, C: torch.Tensor,
               tighter: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], torch.Tensor]:
        """Interval bounds of every node on the ε-box ∩ [0, 1], ReLU pre-activations tightened by
        CROWN's (and by ``tighter``'s, node -> (lower, upper) valid on the same box, e.g.
        α-CROWN's), each widened by ``BOUND_SLACK``, and CROWN's lower bounds of the rows of ``C``."""
        g = self.graph
        with torch.no_grad():
            rows = self.crown.margins(x, eps, C)
        pre = {p: (lo.double().cpu().numpy(), hi.double().cpu().numpy()) for p, (lo, hi) in self.crown.bounds.items()}
        for p, (lo, hi) in (tighter or {}).items():
            pre[p] = (np.maximum(pre[p][0], lo.detach().double().cpu().numpy()),
                      np.minimum(pre[p][1], hi.detach().double().cpu().numpy()))
        x0 = self.node_x(x)
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1))]
        for i, node in enumerate(g.nodes[1:], start=1):
            if node.kind == "affine":
                lo, hi = out[node.src[0]]
                w = node.weight.detach().double().cpu().numpy()
                b = node.bias.detach().double().cpu().numpy()
                mid, rad = w @ ((hi + lo) / 2) + b, np.abs(w) @ ((hi - lo) / 2)
                lo, hi = mid - rad, mid + rad
            elif node.kind == "sum":
                b = 0.0 if node.bias is None else node.bias.detach().double().cpu().numpy()
                lo = hi = b
                for c, s in zip(node.coef, node.src):
                    sl, sh = out[s]
                    lo, hi = lo + (c * sl if c >= 0 else c * sh), hi + (c * sh if c >= 0 else c * sl)
            else:
                lo, hi = (np.maximum(v, 0.0) for v in out[node.src[0]])
            if i in pre:
                slack_l = BOUND_SLACK * (1 + np.abs(pre[i][0]))
                slack_h = BOUND_SLACK * (1 + np.abs(pre[i][1]))
                lo, hi = np.maximum(lo, pre[i][0] - slack_l), np.minimum(hi, pre[i][1] + slack_h)
            out.append((np.asarray(lo, float) * np.ones(node.dim), np.asarray(hi, float) * np.ones(node.dim)))
        return out, rows

    def encode(self, x0: np.ndarray, box: tuple[np.ndarray, np.ndarray], bounds: list[tuple[np.ndarray, np.ndarray]],
               eps_ceiling: float | None, upto: int | None = None) -> tuple[Program, np.ndarray, int | None, int]:
        """(program, logit columns, ε column or None, binaries) of the network on ``box``.

        With ``eps_ceiling`` the program also has a column ε ∈ [0, ceiling] and the rows
        x0 − ε ≤ x' ≤ x0 + ε (the box being the ceiling's ε-box ∩ [0, 1]). With ``upto`` only
        nodes 1..upto are encoded and the second item is node ``upto``'s columns.
        """
        prog = Program()
        var: list[np.ndarray] = [prog.add_cols(*box)]
        eps_col = None
        if eps_ceiling is not None:
            eps_col = int(prog.add_cols(np.zeros(1), np.array([eps_ceiling]))[0])
            for sign, keep in ((1.0, x0 > 0), (-1.0, x0 < 1)):  # x' + ε ≥ x0 ;  −x' + ε ≥ −x0
                k = np.nonzero(keep)[0]
                r = np.arange(len(k))
                prog.add_rows(np.concatenate([r, r]), np.concatenate([var[0][k], np.full(len(k), eps_col)]),
                              np.concatenate([np.full(len(k), sign), np.ones(len(k))]), sign * x0[k],
                              np.full(len(k), _INF))
        binaries = 0
        last = self.graph.output if upto is None else upto
        for i, node in enumerate(self.graph.nodes[1:last + 1], start=1):
            lo, hi = bounds[i]
            if node.kind == "relu":
                var.append(self._relu(prog, var[node.src[0]], bounds[node.src[0]]))
                binaries += int(((bounds[node.src[0]][0] < 0) & (bounds[node.src[0]][1] > 0)).sum())
                continue
            v = prog.add_cols(lo, hi)
            if node.kind == "affine":
                r, c, w = self._coo(i)
                b = node.bias.detach().double().cpu().numpy()
                src = var[node.src[0]][c]
                keep = src >= 0
                r, src, w = r[keep], src[keep], w[keep]
            else:
                b = np.zeros(node.dim) if node.bias is None else node.bias.detach().double().cpu().numpy()
                parts = [(np.arange(node.dim), var[s], np.full(node.dim, c)) for c, s in zip(node.coef, node.src)]
                r, src, w = (np.concatenate(z) for z in zip(*parts))
                keep = src >= 0
                r, src, w = r[keep], src[keep], w[keep]
            d = np.arange(node.dim)
            prog.add_rows(np.concatenate([r, d]), np.concatenate([src, v]), np.concatenate([w, -np.ones(node.dim)]),
                          -b, -b)
            var.append(v)
        return prog, var[last], eps_col, binaries

    @staticmethod
    def _relu(prog: Program, p: np.ndarray, pre: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Columns of relu(p): p itself where active, −1 (zero) where off, big-M where unstable."""
        l, u = pre
        out = np.where(l >= 0, p, -1)
        unstable = np.nonzero((l < 0) & (u > 0) & (p >= 0))[0]
        if unstable.size == 0:
            return out
        m = unstable.size
        z = prog.add_cols(np.zeros(m), u[unstable])
        a = prog.add_cols(np.zeros(m), np.ones(m), integer=True)
        pu, lu, uu = p[unstable], l[unstable], u[unstable]
        r = np.arange(m)
        # z − p ≥ 0 ;  z − p − l·a ≤ −l ;  z − u·a ≤ 0
        prog.add_rows(np.concatenate([r, r]), np.concatenate([z, pu]), np.concatenate([np.ones(m), -np.ones(m)]),
                      np.zeros(m), np.full(m, _INF))
        prog.add_rows(np.concatenate([r, r, r]), np.concatenate([z, pu, a]),
                      np.concatenate([np.ones(m), -np.ones(m), -lu]), np.full(m, -_INF), -lu)
        prog.add_rows(np.concatenate([r, r]), np.concatenate([z, a]), np.concatenate([np.ones(m), -uu]),
                      np.full(m, -_INF), np.zeros(m))
        out[unstable] = z
        return out
