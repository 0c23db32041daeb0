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
        self._abs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        #: interval of every box node (a merged state).
        self.boxes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def bound_relus(self, first: int, crown: bool) -> None:
        """Relaxations of every ReLU node from index ``first`` on, from interval bounds of its
        pre-activation or (``crown``) from the best of three CROWN back-substitutions to the
        input (the three lower slopes of :meth:`slope_variants`) and interval bounds."""
        nodes = self.graph.nodes
        for i in range(first, len(nodes)):
            if nodes[i].kind == "relu":
                p = nodes[i].src[0]
                self.bounds[p] = self._best_of_three(p) if crown else self._interval(p)
                self._relax[i] = relu_relaxation(*self.bounds[p])

    def _best_of_three(self, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        node = self.graph.nodes[p]
        lo, hi = self._interval(p)
        if node.kind == "affine" and node.src[0] == 0:
            return lo, hi
        eye = torch.eye(node.dim, dtype=lo.dtype, device=lo.device)
        base = dict(self._relax)
        self.slope_variants(2 * node.dim)
        both = self._backward({p: torch.cat([eye, -eye]).repeat(3, 1)}, 6 * node.dim).view(3, 2, node.dim)
        self._relax = base
        return torch.maximum(both[:, 0].amax(0), lo), torch.minimum(-both[:, 1].amax(0), hi)

    def _interval(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i in self.boxes:
            return self.boxes[i]
        node = self.graph.nodes[i]
        if node.kind != "affine" or i in self.bounds or i in self._ibp or (node.src[0] == 0 and self.norm == "2"):
            return super()._interval(i)
        # The dense |W| of a field convolution is shared by every stage of every step: kept once.
        key = id(node.weight)
        if key not in self._abs:
            self._abs[key] = (node.weight, node.weight.abs())
        lo, hi = self._interval(node.src[0])
        center = node.weight @ ((hi + lo) / 2) + node.bias
        dev = self._abs[key][1] @ ((hi - lo) / 2)
        self._ibp[i] = (center - dev, center + dev)
        return self._ibp[i]

    def slope_variants(self, rows: int) -> None:
        """Replace every ReLU relaxation by three stacked ones for ``3·rows`` back-substituted rows:
        the adaptive lower slope, slope 0 and slope 1 on the unstable neurons (the bound of each
        block of rows is valid; the best per margin is kept, as GAINS keeps the best of its three)."""
        self._relax = {i: _ThreeSlopes.of(r) for i, r in self._relax.items()}

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
        unstable = r.gap != 0
        lower = torch.stack([r.lower_d, torch.where(unstable, 0.0, r.lower_d), torch.where(unstable, 1.0, r.lower_d)])
        return cls(lower.unsqueeze(1), (r.gap + r.lower_d) - lower.unsqueeze(1), r.upper_b)

    def back(self, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`verify.crown._Relax.back`, block k of the rows with slope k."""
        A3 = A.view(3, -1, A.shape[1])
        neg = A3.clamp(max=0)
        out = A3 * self.lower_d
        out.addcmul_(neg, self.gap)
        return out.view_as(A), neg.view_as(A) @ self.upper_b


Expr = tuple[torch.Tensor, torch.Tensor]  # (A, c): the bound A @ y + c of a state y, one row per margin


def _box_min(A: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """min over y in the box of A @ y, per row."""
    lo, hi = box
    return A @ ((hi + lo) / 2) - A.abs() @ ((hi - lo) / 2)


def _fold(As: torch.Tensor, cs: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor]) -> Expr:
    """GAINS's pairwise aggregation: in order of increasing bound over the box, ``min(x0, x1)``
    with ``d = x0 − x1 ∈ [l, u]`` is x0 (u ≤ 0), x1 (l ≥ 0), else at least the convex combination
    ``λ x0 + (1 − λ) x1 + u·l/(u − l)``, λ = −l/(u − l) (the triangle relaxation of x0 − relu(d))."""
    order = (torch.stack([_box_min(A, box) for A in As]) + cs).argsort(0)  # (k, rows)
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
    the A_b, their mean and GAINS's pairwise aggregation (:func:`_fold`, itself such a bound), by
    the largest bound over the box.
    """
    if len(exprs) == 1:
        return exprs[0]
    As = torch.stack([e[0] for e in exprs])  # (k, rows, dim)
    cs = torch.stack([e[1] for e in exprs])  # (k, rows)
    fold_A, fold_c = _fold(As, cs, box)
    cands = torch.cat([As, As.mean(0, keepdim=True)])  # (k+1, rows, dim)
    best_A, best_c, best_v = fold_A, fold_c, _box_min(fold_A, box) + fold_c
    for A in cands:
        c = (cs + torch.stack([_box_min(Ab - A, box) for Ab in As])).amin(0)
        v = _box_min(A, box) + c
        better = v > best_v
        best_A = torch.where(better.unsqueeze(1), A, best_A)
        best_c, best_v = torch.where(better, c, best_c), torch.maximum(v, best_v)
    return best_A, best_c
