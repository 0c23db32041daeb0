"""Bound engines: one protocol over the lowered IR (:mod:`verify._lower`).

Every engine answers ``margins(x, eps, C, reference=None)``: lower bounds (N, K') on
``C @ logits`` over the perturbation set of radius ``eps`` around each input of ``x`` (the
L∞ ball ∩ [0, 1], or the whole L2 ball), where ``C`` is (N, K', K). After a call of one
example, ``reference()`` returns its pre-activation bounds as a :class:`Reference`, valid on
every smaller set; passing it to a later call on a smaller ε lets the engine skip provably
stable neurons. A reference belongs to the engine that made it.

* :class:`DenseCrown` — CROWN on the dense affine–ReLU graph (:mod:`verify.crown`), the
  default wherever the IR has one (no max pooling).
* :class:`DenseAlphaCrown` — α-CROWN (optimised lower ReLU slopes) on the same graph
  (:mod:`verify._alpha`), the default of ``alpha-crown`` wherever the IR has a dense graph.
* :class:`Lirpa` — auto_LiRPA 0.3's ``ibp``, ``crown``, ``alpha-crown`` and ``forward``
  (:mod:`verify._lirpa`), traced on first use.
* :class:`verify._milp.Milp` — the exact margins by mixed-integer programming (HiGHS) on the
  same graph, big-M from CROWN's bounds; L∞ only, small networks.
* :class:`verify._lp_all.LpAll` — LP-all: every unstable neuron bounded by its own
  triangle-relaxation LP, then the margins' LPs (HiGHS); the ceiling of every α-CROWN bound;
  L∞ only, small networks.
* :class:`TrajectoryGraph` — a controlled adaptive solver as deployed: every step decision
  of the ball followed, merged states' box hulls, CROWN through the graph (:mod:`verify._trajectory`).
* :class:`LipschitzMargin` — margin − ε·c·L with L the product bound of the IR
  (lipbound's per-layer constants and the solver's growth factor).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import torch

from lipbound import growth_factor, layer_bound
from lipbound.layers import LipschitzError

from ._dense_graph import DenseGraph
from ._errors import CertifyError
from ._lower import Flow, Layers, Lowered, Op
from ._alpha import ITERATIONS as ALPHA_ITERATIONS
from ._alpha import INTERMEDIATE_ITERATIONS as ALPHA_INTERMEDIATE
from ._alpha import AlphaCrown
from .crown import Crown
from ._trajectory import TrajectoryGraph as TrajectoryGraph


@dataclasses.dataclass(frozen=True)
class Reference:
    """Pre-activation bounds of one example from one engine (keyed by that engine's node ids)."""

    engine: str
    bounds: dict[Any, tuple[torch.Tensor, torch.Tensor]]


class Engine(Protocol):
    """What every bound engine offers."""

    #: "dense", "auto_LiRPA" or "lipbound".
    name: str
    #: whether a radius search should pass the bounds of a failed ε to the next, smaller one.
    search_reference: bool

    def margins(self, x: torch.Tensor, eps: torch.Tensor, C: torch.Tensor,
                reference: Reference | None = None) -> torch.Tensor:
        """(N, K') lower bounds on C @ logits; ``eps`` has one radius per example."""
        ...

    def reference(self) -> Reference | None:
        """Pre-activation bounds of the last call (one example), or None."""
        ...


def _own(reference: Reference | None, name: str) -> dict[Any, tuple[torch.Tensor, torch.Tensor]] | None:
    if reference is None:
        return None
    if reference.engine != name:
        raise CertifyError(f"a reference of the {reference.engine} engine cannot be used by the {name} engine")
    return reference.bounds


class DenseCrown:
    """CROWN on the IR's dense graph, one example at a time.

    Raises:
        GraphError: the IR has no dense affine–ReLU form (e.g. max pooling).
    """

    name = "dense"
    search_reference = True

    def __init__(self, ir: Lowered, norm: str) -> None:
        self.graph = DenseGraph.from_lowered(ir)
        self._crown = Crown(self.graph, norm)

    def margins(self, x: torch.Tensor, eps: torch.Tensor, C: torch.Tensor,
                reference: Reference | None = None) -> torch.Tensor:
        ref = _own(reference, self.name)
        if ref and x.shape[0] != 1:
            raise CertifyError("reference bounds belong to one example: pass a batch of one")
        with torch.no_grad():
            return torch.stack([self._crown.margins(x[i], float(eps[i]), C[i], ref) for i in range(x.shape[0])])

    def reference(self) -> Reference:
        return Reference(self.name, {k: (lo.clone(), hi.clone()) for k, (lo, hi) in self._crown.bounds.items()})


class DenseAlphaCrown(DenseCrown):
    """α-CROWN on the IR's dense graph (:mod:`verify._alpha`), one example at a time; never
    below :class:`DenseCrown`'s margins. Its references (α-tightened pre-activation bounds)
    are interchangeable with DenseCrown's.

    Args:
        ir: the lowered model.
        norm: ``"inf"`` or ``"2"``.
        iterations: slope-optimisation steps of the margins (auto_LiRPA's default 20).
        intermediate_iterations: steps per layer of intermediate bounds.
        early_stop: stop optimising once every margin is positive (False: every iteration).
        warm_start: each call on the example of the previous call starts from the slopes that call
            ended with (a radius search's later bounds continue its earlier ones' optimisation);
            False: every call from CROWN's slopes.

    Raises:
        GraphError: the IR has no dense affine–ReLU form (e.g. max pooling).
    """

    def __init__(self, ir: Lowered, norm: str, iterations: int = ALPHA_ITERATIONS,
                 intermediate_iterations: int = ALPHA_INTERMEDIATE, early_stop: bool = True,
                 warm_start: bool = True) -> None:
        self.graph = DenseGraph.from_lowered(ir)
        self._crown = AlphaCrown(self.graph, norm, iterations, intermediate_iterations, early_stop=early_stop,
                                 warm_start=warm_start)

    @property
    def warm_start(self) -> bool:
        """Whether a call on the previous call's example starts from its slopes (see ``__init__``)."""
        return self._crown.warm_start

    @warm_start.setter
    def warm_start(self, on: bool) -> None:
        self._crown.warm_start = bool(on)

    def margins(self, x: torch.Tensor, eps: torch.Tensor, C: torch.Tensor,
                reference: Reference | None = None) -> torch.Tensor:
        ref = _own(reference, self.name)
        if ref and x.shape[0] != 1:
            raise CertifyError("reference bounds belong to one example: pass a batch of one")
        return torch.stack([self._crown.margins(x[i], float(eps[i]), C[i], ref).detach()
                            for i in range(x.shape[0])])


class LipschitzMargin:
    """``C @ logits(x) − ε·‖c‖·L``: the margin's drop bounded by the IR's Lipschitz constant L.

    A margin c·f with c = e_y − e_j changes by at most √2·L·‖δ‖ (ℓ2 output norm) or 2·L·‖δ‖
    (ℓ∞), the output norm being the input's.

    Raises:
        CertifyError: the IR has a layer without a global Lipschitz constant, or is the
            surrogate of an adaptive solver.
    """

    name = "lipbound"
    search_reference = False

    def __init__(self, ir: Lowered, norm: str) -> None:
        if ir.adaptive:
            raise CertifyError("lipschitz: lipbound has no bound of an adaptive solver's fixed-step surrogate; "
                               "use ibp, crown, alpha-crown or forward")
        self.ir, self.norm = ir, norm
        self.constant = lipschitz_constant(ir, norm)
        self._scale = (math.sqrt(2.0) if norm == "2" else 2.0) * self.constant

    def exact_radius(self, m0: float) -> float:
        """The ε at which a clean margin m0 > 0 stops being certified (the bound is linear in ε)."""
        return m0 / self._scale

    def margins(self, x: torch.Tensor, eps: torch.Tensor, C: torch.Tensor,
                reference: Reference | None = None) -> torch.Tensor:
        with torch.no_grad():
            margins = torch.einsum("nkc,nc->nk", C, self.ir.forward(x))
        return margins - eps.view(-1, 1) * self._scale

    def reference(self) -> None:
        return None


def _chain_constant(ops: tuple[Op, ...], shape: tuple[int, ...], norm: str) -> tuple[float, tuple[int, ...]]:
    """Product of the ops' constants (a time channel only shifts by a constant) and the output shape."""
    total = 1.0
    for where, op in ops:
        row = layer_bound(op, shape, norm, where)
        if row.upper is None:
            raise CertifyError(f"no Lipschitz bound for this model: {where}: {row.reason}")
        total *= row.upper
        shape = row.output_shape
    return total, shape


def _flow_constant(flow: Flow, shape: tuple[int, ...], norm: str) -> float:
    """The solver's growth factor over the flow's steps (one field: lipbound's growth factor of its
    step sequence; a field per step, as in an untied ResNet: the product of the steps' factors)."""
    ks = [_chain_constant(step.field, shape, norm)[0] for step in flow.steps]
    same = all(step.field == flow.steps[0].field for step in flow.steps)
    if same:
        steps = [(s.t0, s.dt) for s in flow.steps]
        end = flow.steps[-1].t0 + flow.steps[-1].dt * flow.steps[-1].theta
        return growth_factor(flow.tableau, ks[0], steps=steps, end_time=end).value
    return math.prod(growth_factor(flow.tableau, k, steps=[(s.t0, s.dt)], end_time=s.t0 + s.dt).value
                     for k, s in zip(ks, flow.steps))


def lipschitz_constant(ir: Lowered, norm: str) -> float:
    """L with ‖f(x) − f(x')‖ ≤ L‖x − x'‖ (the same norm on input and output), from the IR.

    Raises:
        CertifyError: a layer without a global constant (the message names it).
    """
    total, shape = 1.0, tuple(ir.input_shape)
    try:
        for part in ir.parts:
            if isinstance(part, Layers):
                k, shape = _chain_constant(part.ops, shape, norm)
            else:
                k = _flow_constant(part, shape, norm)
            total *= k
    except LipschitzError as err:
        raise CertifyError(f"no Lipschitz bound for this model: {err}") from err
    return total
