"""A leaf of branch and bound decided exactly: with every ReLU's state fixed the network is affine.

On a subdomain where no pre-activation is unstable, each margin is an affine function
``a·x + b`` of the input on the polytope ``box ∩ {sign·p_k(x) ≥ 0}`` of its split constraints
(each ``p_k`` affine too), so a linear program gives its exact minimum and minimiser.

References:
    Bunel et al., "Branch and Bound for Piecewise Linear Neural Network Verification", JMLR 2020.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog

from .crown import Crown, DenseGraph

#: a leaf's exact minimum is lowered by this (relative to 1 + |value|) against float32 rounding.
LP_TOL = 1e-4


def affine_rows(graph: DenseGraph, masks: dict[int, torch.Tensor], start: dict[int, torch.Tensor], rows: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (rows, input dim), b (rows,)) with ``start``'s rows of the graph equal to ``A·x + b``
    when every ReLU node i passes its input through the 0/1 mask ``masks[i]``."""
    acc = {i: A for i, A in start.items()}
    bias = torch.zeros(rows, dtype=torch.float64)
    for i in range(max(start), 0, -1):
        A = acc.pop(i, None)
        if A is None:
            continue
        node = graph.nodes[i]
        if node.kind == "affine":
            bias += (A @ node.bias.double())
            parts = [(node.src[0], A @ node.weight.double())]
        elif node.kind == "sum":
            if node.bias is not None:
                bias += A @ node.bias.double()
            parts = [(s, c * A) for c, s in zip(node.coef, node.src)]
        else:
            parts = [(node.src[0], A * masks[i].double())]
        for s, part in parts:
            acc[s] = acc[s] + part if s in acc else part
    return acc[0], bias


def leaf_minima(graph: DenseGraph, crown: Crown, x: torch.Tensor, eps: float, C: torch.Tensor,
                splits: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact minima of the margins on a leaf whose pre-activations (``crown.bounds``) are all stable.

    Args:
        graph: the network.
        crown: the bound object of the leaf (its ``bounds`` decide every ReLU's state).
        x: (1, *input_shape) the example; eps: the L∞ radius.
        C: (K', K) specification.
        splits: pre-activation node -> (neuron indices, signs) of the leaf's constraints.

    Returns:
        ((K',) lower bounds: the LP minima less :data:`LP_TOL`, +inf on an empty leaf;
        (1, *input_shape) the minimiser of the worst margin, or None when the leaf is empty).
    """
    masks = {i: (crown.bounds[p][0] >= 0).to(torch.float64) for i, p in graph.relus}
    flat = graph.flat_input(x)[0].double()
    lo, hi = (flat - eps).clamp(0, 1).numpy(), (flat + eps).clamp(0, 1).numpy()
    A_obj, b_obj = affine_rows(graph, masks, {graph.output: C.double()}, C.shape[0])
    rows_ub, rhs = [], []
    for p, (idx, sign) in splits.items():
        e = torch.zeros(idx.numel(), graph.nodes[p].dim, dtype=torch.float64)
        e[torch.arange(idx.numel()), idx] = 1.0
        A, b = affine_rows(graph, masks, {p: e}, idx.numel())
        s = sign.double().view(-1, 1)
        rows_ub.append((-s * A).numpy())  # sign·(A x + b) >= 0  <=>  -sign·A x <= sign·b
        rhs.append((s[:, 0] * b).numpy())
    A_ub = np.concatenate(rows_ub) if rows_ub else None
    b_ub = np.concatenate(rhs) if rhs else None
    out = torch.full((C.shape[0],), float("inf"), dtype=x.dtype)
    best, point = float("inf"), None
    for r in range(C.shape[0]):
        res = linprog(A_obj[r].numpy(), A_ub=A_ub, b_ub=b_ub, bounds=np.stack([lo, hi], 1), method="highs")
        if res.status == 2:  # infeasible: the leaf is empty
            return out, None
        if res.status != 0:
            out[r] = -float("inf")  # undecided: no bound
            continue
        value = float(res.fun + b_obj[r])
        out[r] = value - LP_TOL * (1 + abs(value))
        if value < best:
            best, point = value, torch.as_tensor(res.x)
    return out, None if point is None else _image(graph, point.clamp(torch.as_tensor(lo), torch.as_tensor(hi)), x)


def _image(graph: DenseGraph, flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The image (1, *input_shape) whose input-node vector is ``flat`` (inverts ``flat_input``)."""
    n = flat.numel()
    perm = graph.flat_input(torch.arange(n, dtype=torch.float64).reshape(1, *graph.input_shape))[0].long()
    img = torch.empty(n, dtype=torch.float64)
    img[perm] = flat
    return img.to(like.dtype).reshape(1, *graph.input_shape)


__all__ = ["LP_TOL", "affine_rows", "leaf_minima"]
