"""CROWN pieces of the trajectory graph (:mod:`verify._trajectory`): a growing dense graph whose
back-substitution stops at a chosen state, three lower ReLU slopes at once, and the aggregation
of several linear lower bounds into one bound of their minimum over a box.

References:
    Zhang et al., "Efficient Neural Network Robustness Certification with General Activation
    Functions" (CROWN), NeurIPS 2018.
    Zeqiri, Müller, Fischer, Vechev, "Efficient Certified Training and Robustness Verification
    of Neural ODEs" (GAINS: the pairwise aggregation of linear constraints), ICLR 2023.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._dense_graph import _ConvT, _Node
from .crown import Crown, _Relax, relu_relaxation


class _GraphCrown(Crown):
    """CROWN pieces on a growing graph: relaxations from interval bounds, and back-substitution
    that stops at a given state node (a step's source) instead of the input."""

    def start(self, x: torch.Tensor, eps: float) -> None:
        """Set the input set (the L∞ ball ∩ [0, 1]) and forget every bound."""
        g = self.graph
        x = g.flat_input(x.reshape(1, *g.input_shape))[0]
        xl, xu = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        self._input = ((xu + xl) / 2, (xu - xl) / 2)
        self._eps, self._x = float(eps), x
        self.bounds, self._relax, self._ibp = {}, {}, {}
        self._unrelaxed: list[int] = []  # ReLU nodes whose relaxation is not computed yet
        self._sum_coef: dict[tuple[float, ...], torch.Tensor] = {}
        self._abs: dict[int, tuple] = {}  # id(weight) -> (weight, |weight|, conv input size)
        #: interval of every box node (a merged state).
        self.boxes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def bound_relus(self, first: int, crown: bool) -> None:
        """Relaxations of every ReLU node from index ``first`` on, from interval bounds of its
        pre-activation or (``crown``) from the best of three CROWN back-substitutions to the
        input (the three lower slopes of :meth:`slope_variants`) and interval bounds. The
        relaxations are computed when a back-substitution first needs them, in one batch."""
        nodes = self.graph.nodes
        for i in range(first, len(nodes)):
            if nodes[i].kind == "relu":
                p = nodes[i].src[0]
                self.bounds[p] = self._best_of_three(p) if crown else self._interval(p)
                self._unrelaxed.append(i)

    def _relaxed(self) -> dict[int, _Relax]:
        """Every ReLU's relaxation (:func:`verify.crown.relu_relaxation`): the pending ones are
        computed together, one elementwise call per layer width."""
        if self._unrelaxed:
            nodes = self.graph.nodes
            for idx in _by_dim(self._unrelaxed, nodes).values():
                pre = [self.bounds[nodes[i].src[0]] for i in idx]
                r = relu_relaxation(torch.stack([b[0] for b in pre]), torch.stack([b[1] for b in pre]))
                for k, i in enumerate(idx):
                    self._relax[i] = _Relax(r.lower_d[k], r.gap[k], r.upper_b[k])
            self._unrelaxed = []
        return self._relax

    def _substitute(self, acc: dict[int, tuple[torch.Tensor, bool]], bias: torch.Tensor, top: int,
                    stop: int) -> None:
        # Node by node, newest first, visiting only the nodes that hold rows: the nodes of a step
        # and its source state lie far apart in the growing graph.
        self._relaxed()
        while True:
            i = max((k for k in acc if stop < k <= top), default=None)
            if i is None:
                return
            super()._substitute(acc, bias, i, i - 1)

    def _best_of_three(self, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        node = self.graph.nodes[p]
        lo, hi = self._interval(p)
        if node.kind == "affine" and node.src[0] == 0:
            return lo, hi
        eye = torch.eye(node.dim, dtype=lo.dtype, device=lo.device)
        base = dict(self._relaxed())
        self.slope_variants(2 * node.dim)
        if node.kind == "affine":
            # The first map is common to the six blocks of rows (±, three slopes): applied once.
            rows = node.back(eye)
            both = self._backward({node.src[0]: torch.cat([rows, -rows]).repeat(3, 1)}, 6 * node.dim)
            both = (both + torch.cat([node.bias, -node.bias]).repeat(3)).view(3, 2, node.dim)
        else:
            both = self._backward({p: torch.cat([eye, -eye]).repeat(3, 1)}, 6 * node.dim).view(3, 2, node.dim)
        self._relax = base
        return torch.maximum(both[:, 0].amax(0), lo), torch.minimum(-both[:, 1].amax(0), hi)

    def _interval(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i in self.boxes:
            return self.boxes[i]
        known = self.bounds.get(i) or self._ibp.get(i)
        if known is not None:
            return known
        node = self.graph.nodes[i]
        if node.kind == "sum":
            self._ibp[i] = self._sum_interval(node)
            return self._ibp[i]
        if node.kind != "affine" or (node.src[0] == 0 and self.norm == "2"):
            return super()._interval(i)
        # |W| of a field convolution is shared by every stage of every step: kept once. A
        # convolution is applied as one (its few weights stay in cache; the dense W does not).
        conv = node.conv
        weight = node.weight if conv is None else conv.weight
        key = id(weight)
        if key not in self._abs:
            self._abs[key] = (weight, weight.abs(), None if conv is None else _in_size(conv))
        lo, hi = self._interval(node.src[0])
        if conv is None:
            center = weight @ ((hi + lo) / 2) + node.bias
            dev = self._abs[key][1] @ ((hi - lo) / 2)
        else:
            _, abs_w, size = self._abs[key]
            center = _conv(conv, weight, size, (hi + lo) / 2) + node.bias
            dev = _conv(conv, abs_w, size, (hi - lo) / 2)
        self._ibp[i] = (center - dev, center + dev)
        return self._ibp[i]

    def _sum_interval(self, node: _Node) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval of ``Σ c_j v_j + bias``: lower ``Σ c⁺ lo + c⁻ hi``, upper ``Σ c⁺ hi + c⁻ lo``, as one
        (2, 2k) @ (2k, dim) product (the coefficient matrix kept per coefficient tuple)."""
        K = self._sum_coef.get(node.coef)
        if K is None:
            c = torch.tensor(node.coef, dtype=self._x.dtype, device=self._x.device)
            pos, neg = c.clamp(min=0), c.clamp(max=0)
            K = self._sum_coef[node.coef] = torch.stack([torch.cat([pos, neg]), torch.cat([neg, pos])])
        boxes = [self._interval(s) for s in node.src]
        out = K @ torch.stack([b[0] for b in boxes] + [b[1] for b in boxes])
        if node.bias is not None:
            out = out + node.bias
        return out[0], out[1]

    def slope_variants(self, rows: int) -> None:
        """Replace every ReLU relaxation by three stacked ones for ``3·rows`` back-substituted rows:
        the adaptive lower slope, slope 0 and slope 1 on the unstable neurons (the bound of each
        block of rows is valid; the best per margin is kept, as GAINS keeps the best of its three);
        one batch per layer width."""
        relax = self._relaxed()
        out: dict[int, _Relax | _ThreeSlopes] = {}
        for idx in _by_dim(list(relax), self.graph.nodes).values():
            three = _ThreeSlopes.of(_Relax(*(torch.stack([getattr(relax[i], f) for i in idx])
                                             for f in ("lower_d", "gap", "upper_b"))))
            for k, i in enumerate(idx):
                out[i] = _ThreeSlopes(three.lower_d[:, k:k + 1], three.gap[:, k:k + 1], three.upper_b[k])
        self._relax = out

    def bounds_over(self, i: int, state: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of node i computed from ``state`` without a merge: CROWN back-substitution to
        that state, concretised over its interval, intersected with interval arithmetic."""
        dim = self.graph.nodes[i].dim
        eye = torch.eye(dim, dtype=self._x.dtype, device=self._x.device)
        A, c = self.back_to(i, torch.cat([eye, -eye]), state)
        both = _box_min(A, self._interval(state)) + c
        lo, hi = self._interval(i)
        return torch.maximum(both[:dim], lo), torch.minimum(-both[dim:], hi)

    def back_to(self, start: int, A: torch.Tensor, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``A @ v[start] ≥ A' @ v[stop] + c`` for every value of the nodes between: (A', c).

        Every path from ``start`` back must reach ``stop`` before anything older (true for a
        step and its source state, and for a head and its state).
        """
        acc: dict[int, tuple[torch.Tensor, bool]] = {start: (A, False)}
        bias = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)
        self._substitute(acc, bias, start, stop)
        if set(acc) != {stop}:
            raise ValueError(f"back-substitution from node {start} left nodes {sorted(acc)} besides {stop}")
        return acc[stop][0], bias


@dataclasses.dataclass(frozen=True)
class _ThreeSlopes:
    """A ReLU relaxation with three lower slopes, applied to three equal blocks of rows."""

    lower_d: torch.Tensor  # (3, 1, dim)
    gap: torch.Tensor  # (3, 1, dim)
    upper_b: torch.Tensor  # (dim,)

    @classmethod
    def of(cls, r: _Relax) -> _ThreeSlopes:
        """The three slopes of a relaxation; of a batch (k, dim): lower_d and gap (3, k, dim)."""
        unstable = r.gap != 0
        lower = torch.stack([r.lower_d, torch.where(unstable, 0.0, r.lower_d), torch.where(unstable, 1.0, r.lower_d)])
        lower = lower.unsqueeze(1) if r.lower_d.dim() == 1 else lower
        return cls(lower, (r.gap + r.lower_d) - lower, r.upper_b)

    def back(self, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`verify.crown._Relax.back`, block k of the rows with slope k."""
        A3 = A.view(3, -1, A.shape[1])
        neg = A3.clamp(max=0)
        out = A3 * self.lower_d
        out.addcmul_(neg, self.gap)
        return out.view_as(A), neg.view_as(A) @ self.upper_b


def _in_size(conv: _ConvT) -> tuple[int, int]:
    """(H, W) of the input of the convolution whose matrix ``conv`` back-substitutes through."""
    h, w = ((o - 1) * s - 2 * p + k + op for o, s, p, k, op in zip(
        conv.out_shape[1:], conv.stride, conv.padding, conv.weight.shape[2:], conv.output_padding))
    return h, w


def _conv(conv: _ConvT, weight: torch.Tensor, size: tuple[int, int], v: torch.Tensor) -> torch.Tensor:
    """That convolution with ``weight`` on a node-order (H, W, C) vector ``v`` of its input of ``size``."""
    x = v.view(1, size[0], size[1], weight.shape[1]).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, None, conv.stride, conv.padding).permute(0, 2, 3, 1).reshape(-1)


def _by_dim(relus: Sequence[int], nodes: Sequence[_Node]) -> dict[int, list[int]]:
    """ReLU nodes grouped by width, in order."""
    groups: dict[int, list[int]] = {}
    for i in relus:
        groups.setdefault(nodes[i].dim, []).append(i)
    return groups


Expr = tuple[torch.Tensor, torch.Tensor]  # (A, c): the bound A @ y + c of a state y, one row per margin


def _box_min(A: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """min over y in the box of A @ y, per row (A: (..., dim))."""
    lo, hi = box
    return A @ ((hi + lo) / 2) - A.abs() @ ((hi - lo) / 2)


def _fold(As: torch.Tensor, cs: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor], first: torch.Tensor) -> Expr:
    """GAINS's pairwise aggregation: in order of increasing bound over the box (``first``: the
    bounds of the k expressions, (k, rows)), ``min(x0, x1)`` with ``d = x0 − x1 ∈ [l, u]`` is x0
    (u ≤ 0), x1 (l ≥ 0), else at least the convex combination ``λ x0 + (1 − λ) x1 + u·l/(u − l)``,
    λ = −l/(u − l) (the triangle relaxation of x0 − relu(d))."""
    order = first.argsort(0)  # (k, rows)
    As = As.gather(0, order.unsqueeze(-1).expand_as(As))
    cs = cs.gather(0, order)
    A, c = As[0], cs[0]
    for A1, c1 in zip(As[1:], cs[1:]):
        D = A - A1
        lo, hi = _box_min(D, box) + c - c1, -_box_min(-D, box) + c - c1
        width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        lam = torch.where(hi <= 0, 1.0, torch.where(lo >= 0, 0.0, -lo / width))
        shift = torch.where((hi > 0) & (lo < 0), hi * lo / width, torch.zeros_like(hi))
        A = lam.unsqueeze(1) * A + (1 - lam).unsqueeze(1) * A1
        c = lam * c + (1 - lam) * c1 + shift
    return A, c


def aggregate(exprs: Sequence[Expr], box: tuple[torch.Tensor, torch.Tensor]) -> Expr:
    """One linear lower bound of ``min_b (A_b y + c_b)`` valid for every y in the box.

    With any A*, ``A_b y + c_b ≥ A* y + c_b + min_box (A_b − A*) y`` for each b, so
    ``A* y + min_b [c_b + min_box (A_b − A*) y]`` bounds the minimum. A* is chosen per row among
    GAINS's pairwise aggregation (:func:`_fold`, itself such a bound), the A_b and their mean, by
    the largest bound over the box (the first of equal ones); all candidates are evaluated as one
    batch.
    """
    if len(exprs) == 1:
        return exprs[0]
    As = torch.stack([e[0] for e in exprs])  # (k, rows, dim)
    cs = torch.stack([e[1] for e in exprs])  # (k, rows)
    fold_A, fold_c = _fold(As, cs, box, _box_min(As, box) + cs)
    cands = torch.cat([As, As.mean(0, keepdim=True)])  # (k+1, rows, dim)
    c = (cs + _box_min(As.unsqueeze(0) - cands.unsqueeze(1), box)).amin(1)  # (k+1, rows)
    all_A = torch.cat([fold_A.unsqueeze(0), cands])  # (k+2, rows, dim)
    all_c = torch.cat([fold_c.unsqueeze(0), c])
    best = (_box_min(all_A, box) + all_c).argmax(0)  # (rows,): the first of the largest
    rows = torch.arange(best.shape[0], device=best.device)
    return all_A[best, rows], all_c[best, rows]
