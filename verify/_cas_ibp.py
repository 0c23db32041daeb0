"""Differentiable interval bounds through the trajectory graph of a controlled adaptive solver.

The certified-training bound of an ODE-net deployed with a controlled adaptive solver (CAS,
:mod:`models.cas`): interval bound propagation (Gowal et al. 2018) along *every* step decision
any input of the ε-ball can cause, the states that reach one solver node merged by their box
hull, as GAINS's trajectory graph does (:mod:`verify._trajectory`), but for a whole batch at
once and differentiable in the weights.

* **Nodes.** A node is the solver's state between two steps, ``(t, h, clips, forced)``, and its
  successors are :meth:`verify._cas_rule.CASGraphRule.after` (the deployed solver's own
  :func:`models.cas.next_step`), so the nodes are bit for bit those the verifier visits.
* **Batch.** Every node holds one box per example and a mask of the examples that reach it;
  a step is computed on the examples of its mask only. A node reached by several edges takes,
  per example, the hull of the boxes of the edges that example can take.
* **Decisions.** Per example, the error ratio ``Σ|err_i| / atol`` (rtol > 0:
  :func:`models.cas.error_ratio`'s scale) is bounded from the interval of the error estimate
  ``h Σ (b − b̂)_i k_i``; every decision of :meth:`CASGraphRule.decisions` feasible for it is
  followed. Decisions are discrete (no gradient); the boxes are differentiable.
* **Margins.** Each edge that reaches T is bounded through the head, the last linear layer
  merged into the specification (:func:`verify._ibp.spec_box`), and an example's margin is the
  minimum over the ends it reaches, as :func:`verify._trajectory.trajectory_margins` takes the
  interval part of its bound.

This is GAINS's trajectory graph with Box bounds and no sampling of trajectories: GAINS trains
on at most κ sampled trajectories (its ``allowed_trajectories``), a bound of part of the
graph; here every feasible trajectory is kept, so the training bound is itself sound for the
deployed model; its cost is kept small by choosing a CAS whose graph stays small (few undecided
decisions) and bounded by a node budget (:data:`MAX_NODES`).

Soundness: every box holds the states of every input of the ball that reach the node (IBP of
each op, hulls of sound boxes); a decision left out is infeasible for every such input; so each
step sequence the deployed solver takes on a point of the ball is a path here and its logits'
margins are at least the bound.

References:
    Zeqiri, Müller, Fischer, Vechev, "Efficient Certified Training and Robustness Verification
    of Neural ODEs" (GAINS), ICLR 2023.
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", 2018.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

import torch

from ._cas_rule import CASGraphRule
from ._crown_ibp import forward_parts, ops_forward, split_at_maxpool
from ._ibp import Box, field_box, input_box, interval_sum, part_box, spec_box, split_last_linear
from ._lower import CASFlow, Lowered
from ._spec import spec_matrix
from ._trajectory import _err_weights, _needed_stages

#: solver nodes above which the remaining examples of a batch are given up (their margins are
#: :data:`GIVE_UP_MARGIN`, without gradient); it also bounds the memory of the autograd graph (a
#: node of a 128-image batch of `ode-cas-cert-0.1` keeps ~30 MB; 200 nodes reached 19 GB).
MAX_NODES = 32
#: the margin of a given-up example (a large, constant loss).
GIVE_UP_MARGIN = -30.0


@dataclasses.dataclass(frozen=True)
class CASIBPStats:
    """The batch's trajectory graph.

    Attributes:
        nodes: solver nodes visited (steps tried, all examples together).
        branch_nodes: nodes where some example has more than one feasible decision.
        mean_nodes: nodes per example, averaged over the batch.
        max_nodes: nodes of the example with the most.
        gave_up: examples given up (the graph exceeded its node budget).
    """

    nodes: int
    branch_nodes: int
    mean_nodes: float
    max_nodes: int
    gave_up: int


@dataclasses.dataclass(frozen=True)
class Edge:
    """One step decision taken from a node, as recorded for a backward pass.

    Attributes:
        src: the node it leaves.
        code: 0 reject (the state is unchanged), 1 accept, 2 accept and double.
        t0, dt: the step tried (the new state of an accepted step is its output).
        rows: (M,) batch rows the step was computed on (the node's examples), ascending.
        stages: per Runge–Kutta stage, the boxes (rows ``rows``) in front of each field op.
    """

    src: Hashable
    code: int
    t0: float
    dt: float
    rows: torch.Tensor
    stages: dict[int, list[Box]]


@dataclasses.dataclass
class CASGraph:
    """The forward pass of :func:`cas_ibp_bounds` kept for a backward (CROWN-IBP) pass.

    Attributes:
        input: the input box.
        stem: the records of :func:`verify._crown_ibp.forward_parts` through the parts before the
            CAS block, or None when they hold a max-pool (a backward pass then stops at the root).
        nodes: node -> (its box, the hull over its incoming edges; [(edge id, or None for the
            root's stem output, mask of the examples that edge can bring)]).
        edges: every decision followed.
        finals: (edge id, mask of the examples it brings) of every edge that reaches T.
        final_boxes: the state box each of those edges brings (all batch rows), in the same order.
    """

    input: Box
    stem: list | None
    nodes: dict[Hashable, tuple[Box, list[tuple[int | None, torch.Tensor]]]] = dataclasses.field(default_factory=dict)
    edges: list[Edge] = dataclasses.field(default_factory=list)
    finals: list[tuple[int, torch.Tensor]] = dataclasses.field(default_factory=list)
    final_boxes: list[Box] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class CASBounds:
    """Interval margins of a batch through its trajectory graph.

    Attributes:
        margins: (N, K-1) lower bounds on ``f_y − f_j``, differentiable in the weights.
        ratios: per visited node that decides, the (N,) upper bound of the error ratio (0 for an
            example that does not reach the node), differentiable.
        stats: the graph's size.
        gave_up: (N,) examples given up (their margins are :data:`GIVE_UP_MARGIN`).
        graph: the recorded forward pass (``record=True`` only).
    """

    margins: torch.Tensor
    ratios: list[torch.Tensor]
    stats: CASIBPStats
    gave_up: torch.Tensor
    graph: CASGraph | None = None


def cas_index(ir: Lowered) -> int | None:
    """Position of the one CAS block of ``ir`` (None without one).

    Raises:
        ValueError: more than one CAS block.
    """
    idx = [k for k, p in enumerate(ir.parts) if isinstance(p, CASFlow)]
    if len(idx) > 1:
        raise ValueError(f"the CAS training bound handles one controlled-adaptive ODE block; {ir.description} "
                         f"has {len(idx)}")
    return idx[0] if idx else None


def _step(flow: CASFlow, box: Box, t0: float, dt: float, stages: dict[int, list[Box]] | None = None
          ) -> tuple[Box, Box]:
    """Intervals of the new state and of the error estimate of one step from ``box`` (``stages``:
    filled with the boxes in front of each field op, per stage)."""
    tab = flow.tableau
    a, c, b, e = tab.a_float, tab.c_float, tab.b_float, _err_weights(tab)
    ks: dict[int, Box] = {}
    for i, use in enumerate(_needed_stages(tab)):
        if use:
            yi = interval_sum(box, [(dt * a[i][j], ks[j]) for j in range(i) if a[i][j] != 0.0])
            t = t0 + c[i] * dt
            ks[i] = field_box(flow.field, t, yi) if stages is None else ops_forward(flow.field, yi, t,
                                                                                   stages.setdefault(i, []))
    y1 = interval_sum(box, [(dt * b[i], ks[i]) for i in ks if b[i] != 0.0])
    zero = torch.zeros_like(box[0])
    err = interval_sum((zero, zero), [(dt * e[i], ks[i]) for i in ks if e[i] != 0.0])
    return y1, err


def _abs_bounds(box: Box) -> Box:
    """Interval of |v| for v in the box, elementwise."""
    lo, hi = box
    lower = torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo)))
    return lower, torch.maximum(lo.abs(), hi.abs())


def ratio_interval(rule: CASGraphRule, err: Box, y0: Box, y1: Box) -> Box:
    """Per-example interval (N,), (N,) of the error ratio over the boxes (the verifier's
    :meth:`CASGraphRule.ratio_bounds`, one example per row)."""
    elo, ehi = _abs_bounds(err)
    atol, rtol = rule.rule.atol, rule.rule.rtol
    if not rtol:
        return elo.flatten(1).sum(1) / atol, ehi.flatten(1).sum(1) / atol
    a0, a1 = _abs_bounds(y0), _abs_bounds(y1)
    small = atol + rtol * torch.maximum(a0[0], a1[0])
    large = atol + rtol * torch.maximum(a0[1], a1[1])
    return (elo / large).flatten(1).sum(1), (ehi / small).flatten(1).sum(1)


def _hull(sources: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None]]
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example, the hull of the boxes of the sources (lo, hi, mask, edge) it reaches; (lo, hi, mask)."""
    if len(sources) == 1:
        return sources[0][:3]
    masks = torch.stack([s[2] for s in sources])
    reach = masks.any(0)
    shape = (len(sources), masks.shape[1]) + (1,) * (sources[0][0].dim() - 1)
    m = masks.view(shape)
    inf = torch.tensor(float("inf"), dtype=sources[0][0].dtype, device=masks.device)
    lo = torch.where(m, torch.stack([s[0] for s in sources]), inf).amin(0)
    hi = torch.where(m, torch.stack([s[1] for s in sources]), -inf).amax(0)
    keep = reach.view((-1,) + shape[2:])
    return torch.where(keep, lo, 0.0), torch.where(keep, hi, 0.0), reach


def _scatter(sub: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Rows ``idx`` of an (n, ...) zero tensor set to ``sub`` (differentiable in ``sub``)."""
    return torch.zeros((n, *sub.shape[1:]), dtype=sub.dtype, device=sub.device).index_copy(0, idx, sub)


def _feasible(rule: CASGraphRule, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(3, n) masks of the decisions (reject, accept, accept-double) each example's ratio allows."""
    out = torch.zeros((3, lo.shape[0]), dtype=torch.bool, device=lo.device)
    for i, (a, b) in enumerate(zip(lo.tolist(), hi.tolist())):
        for code in rule.decisions(a, b):
            out[code, i] = True
    return out


def cas_ibp_bounds(ir: Lowered, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
                   max_nodes: int = MAX_NODES, record: bool = False) -> CASBounds:
    """IBP margins over the L∞ ball ∩ [0, 1] for every step sequence the deployed CAS takes.

    Args:
        ir: a lowered model with one :class:`verify._lower.CASFlow` (its ops are the live modules).
        x: (N, C, H, W) inputs.
        y: (N,) labels.
        eps: L∞ radius (a float or (N,) radii).
        max_nodes: nodes after which the examples still in the graph are given up.
        record: keep the forward pass (:class:`CASGraph`) for a backward pass.

    Returns:
        the margins, the error ratios' upper bounds, the graph's statistics (and record).

    Raises:
        ValueError: ``ir`` has no CAS block (or several).
    """
    k = cas_index(ir)
    if k is None:
        raise ValueError(f"{ir.description}: no controlled-adaptive ODE block (use verify._ibp.ibp_margins)")
    flow = ir.parts[k]
    rule = CASGraphRule(flow.rule, flow.h0)
    box = input_box(x, eps)
    graph = None
    if record:
        stem = list(ir.parts[:k])
        recordable = not split_at_maxpool(dataclasses.replace(ir, parts=tuple(stem)))[0]
        graph = CASGraph(box, None)
        if recordable:
            box, graph.stem = forward_parts(stem, box)
    if graph is None or graph.stem is None:
        for part in ir.parts[:k]:
            box = part_box(part, box)
    n = x.shape[0]
    pending: dict[Hashable, list] = {rule.root(): [(box[0], box[1], torch.ones(n, dtype=torch.bool, device=x.device),
                                                    None)]}
    finals: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    ratios: list[torch.Tensor] = []
    gave_up = torch.zeros(n, dtype=torch.bool, device=x.device)
    per_example = torch.zeros(n, dtype=torch.long, device=x.device)
    visited = branches = 0
    while pending:
        if visited >= max_nodes:
            for sources in pending.values():
                for _, _, m, _ in sources:
                    gave_up |= m
            break
        node = min(pending, key=rule.sort_key)
        sources = pending.pop(node)
        lo, hi, mask = _hull(sources)
        if graph is not None:
            graph.nodes[node] = ((lo, hi), [(s[3], s[2]) for s in sources])
        visited += 1
        per_example += mask.long()
        idx = mask.nonzero().squeeze(1)
        sub = (lo.index_select(0, idx), hi.index_select(0, idx))
        t0, dt = rule.attempt(node)
        stages: dict[int, list[Box]] | None = {} if graph is not None else None
        y1, err = _step(flow, sub, t0, dt, stages)
        if rule.forced(node):
            feasible = torch.zeros((3, idx.numel()), dtype=torch.bool, device=x.device)
            feasible[1] = True
        else:
            r_lo, r_hi = ratio_interval(rule, err, sub, y1)
            ratios.append(_scatter(r_hi, idx, n))
            feasible = _feasible(rule, r_lo.detach(), r_hi.detach())
        branches += bool((feasible.sum(0) > 1).any())
        full_y1 = (_scatter(y1[0], idx, n), _scatter(y1[1], idx, n))
        for code in range(3):
            if not feasible[code].any():
                continue
            code_mask = torch.zeros(n, dtype=torch.bool, device=x.device).index_copy(0, idx, feasible[code])
            src = (lo, hi) if code == 0 else full_y1
            nxt = rule.after(node, code)
            edge = None
            if graph is not None:
                graph.edges.append(Edge(node, code, t0, dt, idx, stages or {}))
                edge = len(graph.edges) - 1
            (finals if nxt is None else pending.setdefault(nxt, [])).append((src[0], src[1], code_mask, edge))
    margins = _final_margins(ir, k, finals, y, gave_up)
    stats = CASIBPStats(visited, branches, float(per_example.float().mean()), int(per_example.max()),
                        int(gave_up.sum()))
    if graph is not None:
        graph.finals = [(e, m) for _, _, m, e in finals]
        graph.final_boxes = [(lo, hi) for lo, hi, _, _ in finals]
    return CASBounds(margins, ratios, stats, gave_up, graph)


def _final_margins(ir: Lowered, k: int, finals: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None]],
                   y: torch.Tensor, gave_up: torch.Tensor) -> torch.Tensor:
    """Per example, the minimum over the ends it reaches of the head's interval margins."""
    head, lin = split_last_linear(dataclasses.replace(ir, parts=ir.parts[k + 1:]))
    C = spec_matrix(y, ir.num_classes, finals[0][0].dtype if finals else ir.dtype)
    out = torch.full((y.shape[0], ir.num_classes - 1), float("inf"), dtype=C.dtype, device=y.device)
    for lo, hi, mask, _ in finals:
        box = (lo, hi)
        for part in head:
            box = part_box(part, box)
        m = spec_box(lin, box, C)[0]
        out = torch.where(mask.view(-1, 1), torch.minimum(out, m), out)
    out = torch.where(gave_up.view(-1, 1), torch.full_like(out, GIVE_UP_MARGIN), out)
    if not torch.isfinite(out).all():
        raise RuntimeError("CAS interval bound: an example reached no end of the trajectory graph")
    return out


__all__ = ["CASBounds", "CASGraph", "CASIBPStats", "Edge", "GIVE_UP_MARGIN", "MAX_NODES", "cas_index",
           "cas_ibp_bounds", "ratio_interval"]
