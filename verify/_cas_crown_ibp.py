"""CROWN-IBP margin bounds through the trajectory graph of a controlled adaptive solver.

The CROWN-IBP bound (Zhang et al. 2020) of an ODE-net deployed with a CAS, differentiable in the
weights, for certified training (``crown-ibp``) through the deployed solver. The forward pass is
:func:`verify._cas_ibp.cas_ibp_bounds` with its graph recorded: IBP boxes in front of every op
of every stage of every step tried, and every node's incoming edges. The backward pass starts,
for every edge that reaches T, from the specification, runs through the head (CROWN, the ReLUs
relaxed on the IBP boxes), and then walks that edge's trajectory backwards, one Runge–Kutta step
at a time (:func:`verify._crown_ibp.step_back`; a rejected step leaves the state unchanged):

* at a node that an example can reach by one incoming edge only, every trajectory of that
  example through the node came by that edge, so the linear bound continues through it;
* at a node that the example can reach by several edges, the trajectories differ before it:
  the linear bound is concretised on the node's box, the hull of those edges' boxes (sound
  for each of them);
* at the root it continues through the stem to the input box (or stops at the root's box when
  the stem holds a max-pool layer).

An example's margin is the minimum over the ends of T it reaches, as in the interval bound.
When the ball takes one step sequence, this is CROWN-IBP of that sequence's fixed steps.

Soundness: each linear bound holds on the states of the inputs whose trajectory takes the edges
it was pushed through (the relaxations hold on the IBP boxes, which contain those states), and
it is concretised on a box containing the state where it stops; every trajectory of every input
of the ball ends through some final edge.

References:
    Zhang et al., "Towards Stable and Efficient Training of Verifiably Robust Neural Networks",
    ICLR 2020. Zeqiri et al., "Efficient Certified Training and Robustness Verification of Neural
    ODEs" (GAINS), ICLR 2023.
"""

from __future__ import annotations

from typing import Any

import torch

from ._cas_ibp import GIVE_UP_MARGIN, MAX_NODES, CASBounds, CASGraph, cas_ibp_bounds, cas_index
from ._crown_ibp import Linear, backward_parts, concretize, forward_parts, step_back
from ._lower import Flow, Lowered, Step
from ._spec import spec_matrix


def cas_crown_ibp_margins(ir: Lowered, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
                          max_nodes: int = MAX_NODES) -> tuple[torch.Tensor, CASBounds]:
    """CROWN-IBP lower bounds (N, K-1) on ``f_y − f_j`` over the L∞ ball ∩ [0, 1], for every step
    sequence the deployed CAS takes, and the interval bounds of the same forward pass.

    Args:
        ir: a lowered model with one :class:`verify._lower.CASFlow` (its ops are the live modules).
        x: (N, C, H, W) inputs.
        y: (N,) labels.
        eps: L∞ radius (a float or (N,) radii).
        max_nodes: the node budget of :func:`verify._cas_ibp.cas_ibp_bounds` (given-up examples
            get :data:`verify._cas_ibp.GIVE_UP_MARGIN` here too).

    Raises:
        ValueError: ``ir`` has no CAS block (or several).
        UnsupportedLayerError: a head the backward pass has no rule for.
    """
    bounds = cas_ibp_bounds(ir, x, y, eps, max_nodes, record=True)
    graph = bounds.graph
    assert graph is not None
    k = cas_index(ir)
    cas = ir.parts[k]
    walk = _Walk(graph, Flow("cas", cas.tableau, (), cas.where), cas.field, list(ir.parts[:k]))
    head = list(ir.parts[k + 1:])
    C = spec_matrix(y, ir.num_classes, x.dtype)
    out = torch.full(C.shape[:2], float("inf"), dtype=x.dtype, device=x.device)
    for (edge, mask), box in zip(graph.finals, graph.final_boxes):
        rows = (mask & ~bounds.gave_up).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        _, records = forward_parts(head, _select(box, rows))
        Cr = C.index_select(0, rows)
        lin = backward_parts(head, records, (Cr, torch.zeros(Cr.shape[:2], dtype=x.dtype, device=x.device)))
        out = torch.minimum(out, torch.full_like(out, float("inf")).index_copy(0, rows, walk(edge, rows, lin)))
    out = torch.where(bounds.gave_up.view(-1, 1), torch.full_like(out, GIVE_UP_MARGIN), out)
    if not torch.isfinite(out).all():
        raise RuntimeError("CAS CROWN-IBP bound: an example reached no end of the trajectory graph")
    return out, bounds


def _select(rec: Any, rows: torch.Tensor) -> Any:
    """The rows ``rows`` of every box in a record (a box, or lists / dicts of them)."""
    if isinstance(rec, tuple):
        return tuple(t.index_select(0, rows) for t in rec)
    if isinstance(rec, list):
        return [_select(r, rows) for r in rec]
    return {key: _select(r, rows) for key, r in rec.items()}


class _Walk:
    """The backward walk from one final edge along each example's trajectory, as far as it is unique."""

    def __init__(self, graph: CASGraph, flow: Flow, field: tuple, stem: list) -> None:
        self.graph, self.flow, self.field, self.stem = graph, flow, field, stem

    def __call__(self, edge: int, rows: torch.Tensor, lin: Linear) -> torch.Tensor:
        """(len(rows), S) lower bounds of ``lin``, a linear bound on the state ``edge`` brings (rows ``rows``)."""
        out = torch.zeros((rows.numel(), lin[0].shape[1]), dtype=lin[0].dtype, device=lin[0].device)
        stack = [(edge, rows, torch.arange(rows.numel(), device=rows.device), lin)]
        while stack:
            e, r, pos, (A, bias) = stack.pop()  # pos: where the rows r sit in ``rows``
            ed = self.graph.edges[e]
            if ed.code != 0:  # an accepted step: back through its stages (a rejected one keeps the state)
                stages = _select(ed.stages, torch.searchsorted(ed.rows, r))
                A, bias = step_back(self.flow, Step(ed.t0, ed.dt, 1.0, self.field), (A, bias), stages)
            node_box, sources = self.graph.nodes[ed.src]
            reach = torch.stack([m.index_select(0, r) for _, m in sources])  # (sources, len(r))
            single = reach.sum(0) == 1
            # several incoming edges: the trajectories differ before this node, concretise on its box
            parts = [(~single, "box")] + [(single & reach[s], src) for s, (src, _) in enumerate(sources)]
            for sel, src in parts:
                take = sel.nonzero().squeeze(1)
                if take.numel() == 0:
                    continue
                sub_r, sub_pos = r.index_select(0, take), pos.index_select(0, take)
                sub = (A.index_select(0, take), bias.index_select(0, take))
                if isinstance(src, int):  # one incoming edge: the walk goes on through it
                    stack.append((src, sub_r, sub_pos, sub))
                    continue
                if src is None and self.graph.stem is not None:  # the root: through the stem to the input
                    value = concretize(backward_parts(self.stem, _select(self.graph.stem, sub_r), sub),
                                       _select(self.graph.input, sub_r))
                else:
                    value = concretize(sub, _select(node_box, sub_r))
                out = out.index_copy(0, sub_pos, value)
        return out


__all__ = ["cas_crown_ibp_margins"]
