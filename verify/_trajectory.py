"""The trajectory graph of a controlled adaptive solver: every step decision of a whole ε-ball.

A controlled adaptive solver (CAS, :mod:`models.cas`) tries steps whose sizes lie on a grid
h₀·2ᵏ and, from the error ratio r of the embedded pair, rejects (r > 1: halve), accepts
(r ≤ 1) or accepts and doubles the next step (r ≤ 2^−order). Inside an ε-ball r is an
interval, so several decisions can be feasible; this module follows every feasible one. The
solver's state after any history is a node (t, h, …) of a finite grid, and the states that
reach one node by different paths are merged by their box hull (GAINS's *trajectory graph*),
so the work grows with the grid, not with the number of paths.

Bounds (:mod:`verify._graph_crown`): the whole graph is one growing dense affine–sum–ReLU
graph (:mod:`verify._dense_graph`) whose nodes are the stem, every tried Runge–Kutta step (all
stages, the new state and the error estimate ``h Σ (b − b̂)_i k_i``), a *box node* for every
merge and a head for every way to reach T.

* Forward, in topological order (t ascending, h descending): interval bounds of every node (the
  stem's pre-activations from the best of three CROWN back-substitutions to the input), the
  ReLU relaxations from them, and the feasible decisions from the error ratio's interval (its
  rule widens it against rounding, :class:`verify._cas_rule.CASGraphRule`); on the first steps
  reached from the ODE block's input by a single path, the error estimate is also
  back-substituted to that input, which can remove decisions.
* Backward: the margins' linear bounds go from every head back through the graph, three lower
  slopes at once (adaptive, 0, 1); where the bounds of several successors of one state meet
  (the branches of a decision, or a head and a step), they are aggregated into one valid bound
  of their minimum over the state's box (:func:`aggregate`); a merged node passes its bound to
  every incoming edge; at the ODE block's input the bound continues through the stem to the
  input. The margin is the larger of this and the interval bound, minimised over the heads.

Soundness: the box of a merged node holds every state any input of the ball has there (the
hull of sound bounds of every incoming edge); every relaxation holds on those boxes; a decision
left out is infeasible for every input of the ball; so every step sequence the deployed solver
takes on a point of the ball is a path of the graph, and the backward bound holds along each.

References:
    Zeqiri, Müller, Fischer, Vechev, "Efficient Certified Training and Robustness Verification
    of Neural ODEs" (GAINS), ICLR 2023.
    Zhang et al., "Efficient Neural Network Robustness Certification with General Activation
    Functions" (CROWN), NeurIPS 2018.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Hashable, Sequence
from typing import Protocol

import torch

from lipbound.tableau import ButcherTableau

from models.fields import ConcatConv2d

from ._dense_graph import DenseGraph, _Builder, _LayoutError, _leading_block, _Node
from ._lower import Layers, Lowered, Op
from ._graph_crown import Expr, _box_min, _GraphCrown
from ._graph_crown import aggregate as aggregate

#: steps of single paths from the ODE block's input whose error estimate is also bounded by
#: back-substitution to that input (at most this many such states).
CHAIN_CROWN = 8
#: ... and only while the interval bound of the error ratio is below this (back-substitution tightens
#: it by a factor of about 4 on GAINS's models: far above, no decision can be removed).
CHAIN_RATIO = 16.0
#: trajectory-graph nodes above which an example is given up (its margins are −∞: not certified).
MAX_NODES = 400


class Rule(Protocol):
    """A CAS's step decisions on its grid of nodes (see :mod:`verify._cas_rule`)."""

    def root(self) -> Hashable:
        """The node of the first step."""
        ...

    def attempt(self, node: Hashable) -> tuple[float, float]:
        """(t0, dt) of the step tried at ``node``."""
        ...

    def forced(self, node: Hashable) -> bool:
        """True when the step is accepted whatever its error (the minimum-step rule)."""
        ...

    def decisions(self, lo: float, hi: float) -> tuple[int, ...]:
        """Codes (0 reject, 1 accept, 2 accept and double) some ratio in [lo, hi] takes."""
        ...

    def after(self, node: Hashable, code: int) -> Hashable | None:
        """The next node after ``code`` at ``node`` (None: the accepted step reached T)."""
        ...

    def sort_key(self, node: Hashable) -> tuple[float, ...]:
        """A topological order of the nodes (t ascending, h descending)."""
        ...

    @property
    def needs_states(self) -> bool:
        """Whether :meth:`ratio_bounds` reads the state boxes."""
        ...

    def ratio_bounds(self, err: tuple[torch.Tensor, torch.Tensor], y0: tuple[torch.Tensor, torch.Tensor] | None,
                     y1: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[float, float]:
        """Interval of the error ratio given boxes of the error (and of the state and the new state)."""
        ...


@dataclasses.dataclass(frozen=True)
class CASFlowSpec:
    """What the graph needs of a CAS-integrated ODE block: its tableau, field and rule."""

    tableau: ButcherTableau
    field: tuple[Op, ...]
    rule: Rule


@dataclasses.dataclass(frozen=True)
class GraphStats:
    """The trajectory graph of one example at one ε.

    Attributes:
        nodes: (t, h) nodes visited (steps tried).
        merges: nodes reached by more than one edge (box hulls).
        branch_nodes: nodes where more than one decision is feasible.
        finals: edges that reach T.
        paths: complete step sequences the graph holds (counted, never enumerated).
        gave_up: the graph exceeded :data:`MAX_NODES` (nothing certified).
    """

    nodes: int
    merges: int
    branch_nodes: int
    finals: int
    paths: int
    gave_up: bool = False


def _needed_stages(tab: ButcherTableau) -> list[bool]:
    """Stages the new state, the error estimate or a later needed stage uses."""
    a, b, e = tab.a_float, tab.b_float, _err_weights(tab)
    s = len(b)
    need = [False] * s
    for i in range(s - 1, -1, -1):
        need[i] = b[i] != 0.0 or e[i] != 0.0 or any(need[k] and a[k][i] != 0.0 for k in range(i + 1, s))
    return need


def _err_weights(tab: ButcherTableau) -> tuple[float, ...]:
    """b − b̂: the error estimate is h Σ (b − b̂)_i k_i (torchdiffeq's ``c_error``)."""
    if tab.b_err is None:
        raise ValueError(f"tableau {tab.name!r} has no embedded pair: a CAS needs one")
    return tuple(float(p - q) for p, q in zip(tab.b, tab.b_err))


class _StepBuilder(_Builder):
    """The dense builder, its field convolutions' row norms kept once (every stage of every step
    reuses the same matrices; copies of the builder share the caches)."""

    def field_conv(self, conv: ConcatConv2d, t: float) -> None:
        norms = self.__dict__.setdefault("_norms", {})
        key = (id(conv), self.shape)
        if key not in self._field_cache or key not in norms:
            super().field_conv(conv, t)
            norms[key] = self._pending[2]
            return
        w, b0, slope, conv_t, out_shape = self._field_cache[key]
        src = self.flush()
        self._pending = (w, b0 if slope is None else b0 + t * slope, norms[key], src, conv_t)
        self.shape = out_shape


class _Graph:
    """The growing dense graph of one example: stem, tried steps, merges and heads."""

    def __init__(self, ir: Lowered, flow_index: int, like: torch.Tensor) -> None:
        self.ir, self.like = ir, like
        stem = [p for p in ir.parts[:flow_index] if isinstance(p, Layers)]
        self.head: tuple[Op, ...] = tuple(op for p in ir.parts[flow_index + 1:] for op in p.ops)
        block = _leading_block(ir)
        try:
            self.builder, self.state = self._stem(stem, block)
        except _LayoutError:
            self.builder, self.state = self._stem(stem, 1)
        self.state_shape = self.builder.shape
        self.dense = DenseGraph(ir.input_shape, [], ir.description, self.builder.input_block)
        self.dense.nodes = self.builder.nodes  # one list, grown in place
        self.heads: dict[int, int] = {}
        self._coef: tuple | None = None
        #: what every copy of this graph shares: the head's nodes as built after one state.
        self._shared: dict[str, tuple] = {}

    def copy(self) -> _Graph:
        """A graph with this one's stem, ready for another example (matrices shared)."""
        g = copy.copy(self)
        g.builder = copy.copy(self.builder)
        g.builder.nodes = list(self.builder.nodes)
        g.dense = DenseGraph(self.ir.input_shape, [], self.ir.description, self.builder.input_block)
        g.dense.nodes = g.builder.nodes
        g.heads = {}
        return g

    def _stem(self, stem: Sequence[Layers], block: int) -> tuple[_Builder, int]:
        b = _StepBuilder(self.ir.input_shape, self.like, block)
        for part in stem:
            b.sequential(part.ops)
        state = b.flush()
        if b.block != 1:
            raise _LayoutError("space-to-depth layout not undone before the ODE block")
        return b, state

    def _at(self, node: int) -> _Builder:
        b = self.builder
        b.cur, b.shape, b._pending, b.block = node, self.state_shape, None, 1
        return b

    def step(self, spec: CASFlowSpec, y: int, t0: float, dt: float) -> tuple[int, int]:
        """Append one tried step from state node ``y``; returns (new state node, error node)."""
        if self._coef is None:
            tab = spec.tableau
            self._coef = (tab.a_float, tab.c_float, tab.b_float, _err_weights(tab), _needed_stages(tab))
        a, c, bw, e, needed = self._coef
        ks: dict[int, int] = {}
        dim = self.builder.nodes[y].dim
        for i, use in enumerate(needed):
            if not use:
                continue
            terms = [j for j in range(i) if a[i][j] != 0.0]
            b = self._at(y)
            if terms:
                b.cur = b._append(_Node("sum", (y, *(ks[j] for j in terms)),
                                        coef=(1.0, *(dt * a[i][j] for j in terms)), dim=dim))
            b.sequential(spec.field, t0 + c[i] * dt)
            ks[i] = b.flush()
            if b.shape != self.state_shape:
                raise ValueError(f"the vector field maps states {self.state_shape} to {b.shape}")
        out = [i for i in ks if bw[i] != 0.0]
        y1 = self.builder._append(_Node("sum", (y, *(ks[i] for i in out)), coef=(1.0, *(dt * bw[i] for i in out)),
                                        dim=dim))
        errs = [i for i in ks if e[i] != 0.0]
        err = self.builder._append(_Node("sum", tuple(ks[i] for i in errs), coef=tuple(dt * e[i] for i in errs),
                                         dim=dim))
        return y1, err

    def box(self) -> int:
        """Append a box node (a merged state; its interval is kept by the CROWN object)."""
        return self.builder._append(_Node("box", dim=self.builder.nodes[self.state].dim))

    def head_of(self, y: int) -> int:
        """The logits node of the head after state node ``y`` (appended once per state; the head's
        nodes are built once per template, then copied with their sources moved)."""
        if y in self.heads:
            return self.heads[y]
        nodes = self.builder.nodes
        first = len(nodes)
        if "head" not in self._shared:
            b = self._at(y)
            b.sequential(self.head)
            out = b.flush()
            self._shared["head"] = (y, first, tuple(nodes[first:]))
            self.heads[y] = out
            return out
        y0, first0, template = self._shared["head"]
        for n in template:
            nodes.append(dataclasses.replace(n, src=tuple(y if s == y0 else s - first0 + first for s in n.src)))
        self.heads[y] = len(nodes) - 1 if template else y
        return self.heads[y]


@dataclasses.dataclass
class _Visit:
    """One graph node as visited: its state node, the sources merged into it, its step's output."""

    state: int
    sources: tuple[int, ...]
    y1: int


def _forward(graph: _Graph, crown: _GraphCrown, spec: CASFlowSpec, max_nodes: int
             ) -> tuple[list[_Visit], list[int], GraphStats]:
    """Visit every node any input of the ball reaches (interval bounds; the relaxations of every
    ReLU set); returns the visits in topological order, the states that reach T and statistics."""
    rule = spec.rule
    pending: dict[Hashable, list[int]] = {rule.root(): [graph.state]}
    paths: dict[Hashable, int] = {rule.root(): 1}
    visits: list[_Visit] = []
    finals: list[int] = []
    chain = {graph.state}  # states reached from the input by one path: their steps back-substitute to it
    tighten = True
    merges = branches = n_paths = 0
    while pending:
        node = min(pending, key=rule.sort_key)
        sources = tuple(dict.fromkeys(pending.pop(node)))
        count = paths.pop(node)
        if len(visits) >= max_nodes:
            return visits, finals, GraphStats(len(visits) + 1, merges, branches, len(finals), 0, gave_up=True)
        if len(sources) == 1:
            y = sources[0]
        else:
            merges += 1
            boxes = [crown._interval(i) for i in sources]
            y = graph.box()
            crown.boxes[y] = (torch.stack([b[0] for b in boxes]).amin(0), torch.stack([b[1] for b in boxes]).amax(0))
        t0, dt = rule.attempt(node)
        first = len(graph.builder.nodes)
        y1, err = graph.step(spec, y, t0, dt)
        crown.bound_relus(first, crown=False)
        visits.append(_Visit(y, sources, y1))
        if rule.forced(node):
            codes: tuple[int, ...] = (1,)
        else:
            states = (crown._interval(y), crown._interval(y1)) if rule.needs_states else (None, None)
            ratio = rule.ratio_bounds(crown._interval(err), *states)
            codes = rule.decisions(*ratio)
            if len(codes) > 1 and y in chain and len(chain) <= CHAIN_CROWN and tighten and ratio[1] < CHAIN_RATIO:
                tight = rule.decisions(*rule.ratio_bounds(crown.bounds_over(err, graph.state), *states))
                tighten = len(tight) < len(codes)  # later steps are bounded no better: stop when this one gains nothing
                codes = tight
        if y in chain:
            chain.add(y1)
        branches += len(codes) > 1
        for code in codes:
            nxt = rule.after(node, code)
            src = y if code == 0 else y1
            if nxt is None:
                finals.append(src)
                n_paths += count
            else:
                pending.setdefault(nxt, []).append(src)
                paths[nxt] = paths.get(nxt, 0) + count
    return visits, finals, GraphStats(len(visits), merges, branches, len(finals), n_paths)


def _backward(graph: _Graph, crown: _GraphCrown, visits: Sequence[_Visit], finals: Sequence[int],
              C: torch.Tensor) -> torch.Tensor:
    """Lower bounds of ``C @ logits`` for every path: from each head back through the graph, the
    expressions of a state's users aggregated (:func:`aggregate`) before each step back."""
    exprs: dict[int, list[Expr]] = {}
    for y in dict.fromkeys(finals):
        first = len(graph.builder.nodes)
        logits = graph.head_of(y)
        crown.bound_relus(first, crown=False)
        exprs.setdefault(y, []).append(crown.back_to(logits, C, y))
    for v in reversed(visits):
        if v.y1 in exprs:
            A, c = aggregate(exprs.pop(v.y1), crown._interval(v.y1))
            A0, c0 = crown.back_to(v.y1, A, v.state)
            exprs.setdefault(v.state, []).append((A0, c0 + c))
        if len(v.sources) > 1 and v.state in exprs:
            merged = aggregate(exprs.pop(v.state), crown._interval(v.state))
            for s in v.sources:
                exprs.setdefault(s, []).append(merged)
    A, c = aggregate(exprs.pop(graph.state), crown._interval(graph.state))
    if exprs:
        raise ValueError(f"trajectory graph: expressions left at nodes {sorted(exprs)}")
    return crown._backward({graph.state: A}, A.shape[0]) + c


def _interval_margins(graph: _Graph, crown: _GraphCrown, finals: Sequence[int], C: torch.Tensor) -> torch.Tensor:
    """Interval (IBP) lower bounds of ``C @ logits``, the last affine map merged into C, min over the heads."""
    out = None
    for y in dict.fromkeys(finals):
        first = len(graph.builder.nodes)
        logits = graph.head_of(y)
        crown.bound_relus(first, crown=False)
        node = graph.builder.nodes[logits]
        if node.kind == "affine":
            lb = _box_min(C @ node.weight, crown._interval(node.src[0])) + C @ node.bias
        else:
            lb = _box_min(C, crown._interval(logits))
        out = lb if out is None else torch.minimum(out, lb)
    return out


def trajectory_margins(ir: Lowered, flow_index: int, spec: CASFlowSpec, x: torch.Tensor, eps: float,
                       C: torch.Tensor, max_nodes: int = MAX_NODES, template: _Graph | None = None
                       ) -> tuple[torch.Tensor, GraphStats]:
    """Lower bounds (K',) on ``C @ logits`` over the L∞ ball ∩ [0, 1] for every trajectory the CAS takes.

    Args:
        ir: the lowered model; ``ir.parts[flow_index]`` is the CAS block.
        flow_index: position of the CAS block in ``ir.parts``.
        spec: the block's tableau, field and decision rule.
        x: one input (1, C, H, W) or (C, H, W).
        eps: L∞ radius.
        C: (K', K) specification.
        max_nodes: give up (−∞ bounds) above this many graph nodes.
        template: a graph of the same IR built before (its stem and matrices are reused).

    Returns:
        (bounds, statistics of the graph).
    """
    graph = (template or _Graph(ir, flow_index, torch.zeros((), dtype=ir.dtype, device=ir.device))).copy()
    crown = _GraphCrown(graph.dense, "inf")
    crown.start(x, eps)
    crown.bound_relus(1, crown=True)
    visits, finals, stats = _forward(graph, crown, spec, max_nodes)
    if stats.gave_up:
        return torch.full((C.shape[0],), -float("inf"), dtype=C.dtype, device=C.device), stats
    C = C.to(ir.dtype)
    ibp = _interval_margins(graph, crown, finals, C)
    crown.slope_variants(C.shape[0])
    lb = _backward(graph, crown, visits, finals, C.repeat(3, 1)).view(3, -1).amax(0)
    return torch.maximum(lb, ibp), stats


#: templates of the graphs built so far (their stems' dense matrices), by the identity and version
#: of every layer's parameters: an engine built again for the same model skips the stem's matrices.
_TEMPLATES: dict[tuple, _Graph] = {}
#: templates kept at most (the oldest is dropped).
_MAX_TEMPLATES = 4


def _template(ir: Lowered, flow_index: int) -> _Graph:
    """The stem-only graph of the IR, reused while no parameter of any of its layers has changed."""
    layers = [layer for part in ir.parts for _, layer in getattr(part, "ops", getattr(part, "field", ()))]
    tensors = [t for layer in layers for t in (*layer.parameters(), *layer.buffers())]
    key = (flow_index, tuple(ir.input_shape), str(ir.dtype), str(ir.device), tuple(map(id, layers)),
           tuple((id(t), t.data_ptr(), t._version) for t in tensors))
    if key not in _TEMPLATES:
        while len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.pop(next(iter(_TEMPLATES)))
        _TEMPLATES[key] = _Graph(ir, flow_index, torch.zeros((), dtype=ir.dtype, device=ir.device))
    return _TEMPLATES[key]


class TrajectoryGraph:
    """The engine of a model with a controlled adaptive solver: margins over every trajectory.

    Implements the :class:`verify.engines.Engine` protocol for the L∞ ball ∩ [0, 1]. Engines of one
    model share its stem's dense matrices (:func:`_template`) while no parameter has changed.

    Args:
        ir: a lowered model with exactly one :class:`verify._lower.CASFlow` and no other flow.
        norm: ``"inf"``.
        max_nodes: graph nodes above which an example is given up (not certified).

    Attributes:
        last_stats: per example of the last :meth:`margins` call, its :class:`GraphStats`.

    Raises:
        CertifyError: another norm, or not exactly one CAS block.
    """

    name = "trajectory"
    search_reference = False

    def __init__(self, ir: Lowered, norm: str, max_nodes: int = MAX_NODES) -> None:
        from ._cas_rule import CASGraphRule
        from ._errors import CertifyError
        from ._lower import CASFlow, Flow

        if norm != "inf":
            raise CertifyError(f"the trajectory graph of a controlled adaptive solver certifies L∞ balls; "
                               f"got norm {norm!r}")
        cas = [k for k, p in enumerate(ir.parts) if isinstance(p, CASFlow)]
        if len(cas) != 1 or any(isinstance(p, Flow) for p in ir.parts):
            raise CertifyError("the trajectory graph certifies a model with one controlled-adaptive ODE block "
                               f"and no other ODE block; {ir.description} has {len(cas)}")
        flow = ir.parts[cas[0]]
        self.ir, self.index, self.max_nodes = ir, cas[0], max_nodes
        self.spec = CASFlowSpec(flow.tableau, flow.field, CASGraphRule(flow.rule, flow.h0))
        self._template = _template(ir, self.index)
        self.last_stats: list[GraphStats] = []
        #: (ε, nodes) of every example bounded so far, in order (the run layer reads and clears it).
        self.history: list[tuple[float, int]] = []

    def margins(self, x: torch.Tensor, eps: torch.Tensor, C: torch.Tensor,
                reference: object | None = None) -> torch.Tensor:
        """(N, K') lower bounds on ``C @ logits`` for every trajectory of each example's ball."""
        out, self.last_stats = [], []
        with torch.no_grad():
            for i in range(x.shape[0]):
                lb, stats = trajectory_margins(self.ir, self.index, self.spec, x[i:i + 1], float(eps[i]), C[i],
                                               self.max_nodes, self._template)
                out.append(lb)
                self.last_stats.append(stats)
                self.history.append((float(eps[i]), stats.nodes))
        return torch.stack(out)

    def reference(self) -> None:
        return None
