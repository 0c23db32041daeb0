"""α-CROWN on the dense graph: CROWN whose lower ReLU slopes are optimised by projected gradient.

Every lower line ``α·p`` with α ∈ [0, 1] is a valid lower relaxation of an unstable ReLU, so
any α gives a sound bound; α-CROWN picks, per bounded quantity, the slopes that maximise its
bound. Here:

1. CROWN runs first (:class:`verify.crown.Crown`); its margins are the floor of the result
   and its 0/1 slopes the warm start.
2. Intermediate bounds, layer by layer in topological order: the unstable neurons of a
   pre-activation are bounded from below and above as one batch of 2m rows, each row with its
   own slopes on every earlier ReLU (tensors (2m, dim)), maximised by Adam on the sum of the
   rows' bounds and projected onto [0, 1]; each neuron keeps the tightest bound seen
   (elementwise against CROWN's too), and later layers are relaxed with the tightened bounds.
3. The specification rows, each with its own slopes, the same way, stopping early when every
   margin is positive. The result is the elementwise maximum with CROWN's margins, so it is
   never below CROWN and is sound for every iterate.

auto_LiRPA 0.3's α-CROWN optimises the intermediate slopes only through the final margins'
gradient (all layers recomputed every iteration); step 2 gives every neuron its own objective
and is done once, which is both tighter per iteration and cheaper.

References:
    Xu et al., "Fast and Complete: Enabling Complete Neural Network Verification with Rapid
    and Massively Parallel Incomplete Verifiers" (α-CROWN), ICLR 2021.
    Zhang et al., "Efficient Neural Network Robustness Certification with General
    Activation Functions" (CROWN), NeurIPS 2018.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from .crown import Crown, DenseGraph, _Relax, relu_relaxation

#: auto_LiRPA 0.3's α-CROWN defaults: iterations, Adam learning rate, its per-iteration decay.
ITERATIONS, LR, LR_DECAY = 20, 0.5, 0.98
#: Adam steps per layer of intermediate bounds: on zoo `ode` a layer's summed bound gains most in
#: the first 3 steps, but the small gains after them still move the margins (worst margin bound of
#: one example at 1.1x its CROWN radius: -0.12 after 3 steps, -0.07 after 6, -0.06 after 10, for
#: 6, 12 and 20 s; a learning rate of 1 or 2 instead of 0.5 changes it by at most 0.013; measured with
#: runs/issue16-tight/prof_alpha.py).
INTERMEDIATE_ITERATIONS = 6
#: Adam's learning rate of split multipliers β (auto_LiRPA's ``lr_beta``).
LR_BETA = 0.05


@dataclasses.dataclass(frozen=True)
class _SplitRelax:
    """A relaxation plus split multipliers: back-substitution adds ``−β·sign`` on the split
    neurons of the pre-activation (β-CROWN's Lagrangian term)."""

    relax: Any
    idx: torch.Tensor
    beta_sign: torch.Tensor  # (rows, splits)

    def back(self, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coef, bias = self.relax.back(A)
        return coef.index_add(1, self.idx, -self.beta_sign), bias


def _constants(graph: DenseGraph) -> DenseGraph:
    """The graph with every tensor detached: a field's time-dependent bias is built from the
    model's parameters with their autograd history, which the slopes' gradient must not enter
    (a second step would backpropagate through the freed graph of the first)."""
    if not any(isinstance(v, torch.Tensor) and v.requires_grad
               for n in graph.nodes for v in (n.weight, n.bias, n.l2_dev)):
        return graph
    nodes = [dataclasses.replace(n, **{k: getattr(n, k).detach() for k in ("weight", "bias", "l2_dev")
                                       if getattr(n, k) is not None}) for n in graph.nodes]
    return DenseGraph(graph.input_shape, nodes, graph.description, graph.block)


class AlphaCrown(Crown):
    """α-CROWN bounds of one :class:`DenseGraph` for one example at a time.

    Args:
        graph: the network.
        norm: ``"inf"`` or ``"2"``.
        iterations: Adam steps on the specification's slopes (each one bound evaluation).
        intermediate_iterations: Adam steps per layer of intermediate bounds (0: CROWN's).
        lr, lr_decay: Adam's learning rate and its exponential decay per step.
        patience: stop a layer's (or the margins') optimisation after this many steps that
            improve the summed bound by less than ``1e-4`` relative (auto_LiRPA stops only after
            steps without any gain; on zoo `ode` this ends the margins' 20 steps about 4 early,
            at most 0.001 lower per margin; ``patience=iterations`` runs every step).
        early_stop: stop as soon as every margin is positive (CROWN's included): the bound then
            certifies and a radius search needs no more. False runs every iteration, as
            auto_LiRPA does (to compare bounds).
        warm_start: start each optimisation, row by row, from the better of CROWN's slopes and
            the slopes the previous call on the same example (input and specification) ended
            with (two more bound evaluations per layer; a neuron not unstable in that call starts
            from CROWN's). A radius search calls the engine at nearby ε, so its later bounds
            continue the earlier bounds' optimisation. Any slopes in [0, 1] give a sound bound.
            False: every call starts from CROWN's slopes (results independent of earlier calls).

    Raises:
        ValueError: negative iteration counts, a non-positive learning rate.
    """

    def __init__(self, graph: DenseGraph, norm: str = "inf", iterations: int = ITERATIONS,
                 intermediate_iterations: int = INTERMEDIATE_ITERATIONS, lr: float = LR, lr_decay: float = LR_DECAY,
                 patience: int = 10, early_stop: bool = True, warm_start: bool = False) -> None:
        if iterations < 0 or intermediate_iterations < 0 or patience < 1:
            raise ValueError("iterations must be >= 0 and patience >= 1")
        if not lr > 0 or not 0 < lr_decay <= 1:
            raise ValueError(f"lr must be > 0 and lr_decay in (0, 1], got {lr}, {lr_decay}")
        super().__init__(_constants(graph), norm)
        self.iterations, self.intermediate_iterations = iterations, intermediate_iterations
        self.lr, self.lr_decay, self.patience, self.early_stop = lr, lr_decay, patience, early_stop
        #: CROWN's margins of the last call (the floor of the α-CROWN result).
        self.crown_margins: torch.Tensor | None = None
        #: ``clock()`` value after which optimisation stops at its best bound so far (every
        #: iterate's bound is valid, so stopping early only loosens it); None: no limit.
        self.deadline: float | None = None
        #: the clock of ``deadline``: wall time, or ``time.process_time`` for CPU seconds.
        self.clock: Callable[[], float] = time.perf_counter
        self.warm_start = warm_start
        #: start node -> (row keys, relu node -> slopes (rows, dim)) of its last optimisation on the
        #: example ``_warm_of`` (input, specification); used when ``warm_start``.
        self._warm: dict[int, tuple[torch.Tensor, dict[int, torch.Tensor]]] = {}
        self._warm_of: tuple[torch.Tensor, torch.Tensor] | None = None

    def margins(self, x: torch.Tensor, eps: float, C: torch.Tensor,
                reference: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Lower bounds (K',) of ``C @ logits``, ≥ CROWN's elementwise (see :meth:`Crown.margins`)."""
        if self.warm_start and not self._same_example(x, C):
            self._warm, self._warm_of = {}, (x.detach().reshape(-1).clone(), C.detach().clone())
        with torch.no_grad():
            crown = super().margins(x, eps, C, reference)
        self.crown_margins = crown
        if (self.early_stop and bool((crown > 0).all())) or self.iterations == 0:
            return crown
        if self.intermediate_iterations:
            self.tighten_intermediate()
        best = self.optimise({self.graph.output: C.to(crown.dtype)}, C.shape[0], self.iterations,
                             stop=(lambda b: bool((b > 0).all())) if self.early_stop else None,
                             keys=torch.arange(C.shape[0]))
        return torch.maximum(best, crown)

    def _same_example(self, x: torch.Tensor, C: torch.Tensor) -> bool:
        if self._warm_of is None:
            return False
        x0, c0 = self._warm_of
        x = x.detach().reshape(-1)
        return x.shape == x0.shape and C.shape == c0.shape and torch.equal(x, x0) and torch.equal(C.detach(), c0)

    def tighten_intermediate(self) -> None:
        """Optimise the bounds of every unstable neuron, layer by layer (updates ``bounds``)."""
        g = self.graph
        for relu, p in g.relus:
            if self._past_deadline():
                break  # the remaining layers keep CROWN's bounds
            node = g.nodes[p]
            if node.kind == "affine" and node.src[0] == 0:
                continue  # exact interval bounds already
            lo, hi = self.bounds[p]
            unstable = ((lo < 0) & (hi > 0)).nonzero().flatten()
            m = int(unstable.numel())
            if m == 0:
                continue
            e = self._rows(unstable, node.dim, lo)
            best = self.optimise({p: torch.cat([e, -e])}, 2 * m, self.intermediate_iterations,
                                 keys=torch.cat([unstable, unstable + node.dim]))
            lo, hi = lo.clone(), hi.clone()
            lo[unstable] = torch.maximum(lo[unstable], best[:m])
            hi[unstable] = torch.minimum(hi[unstable], -best[m:])
            self.bounds[p] = (lo, hi)
            self._relax[relu] = relu_relaxation(lo, hi)

    def optimise(self, start: dict[int, torch.Tensor], rows: int, iterations: int,
                 stop: Callable[[torch.Tensor], bool] | None = None,
                 splits: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 keys: torch.Tensor | None = None) -> torch.Tensor:
        """Best lower bounds (rows,) of ``A @ v`` for the rows in ``start`` over slope choices.

        Args:
            start: node -> A (rows, dim), as for back-substitution.
            rows: number of rows.
            iterations: bound evaluations (the first is CROWN's slopes).
            stop: called on the best bounds so far; True ends the optimisation.
            splits: β-CROWN: relu node -> (neuron indices, signs ±1) of split constraints
                ``sign·p ≥ 0`` on its pre-activation; each row gets a multiplier β ≥ 0 per
                constraint, adding ``−β·sign·p`` (≤ 0 on the split domain) to its objective.
            keys: (rows,) a name per row that is the same across calls (with ``warm_start`` and no
                splits, rows whose key the last optimisation of this start node had begin at
                its final slopes, and this one's final slopes are kept for the next).

        Returns:
            (rows,) the elementwise best bound over the evaluated iterates.
        """
        slopes = self._slopes(start, rows)
        warm = self.warm_start and keys is not None and not splits
        betas = {i: (idx, sign.to(self._x.dtype), torch.zeros(rows, idx.numel(), dtype=self._x.dtype,
                                                              device=self._x.device, requires_grad=True))
                 for i, (idx, sign) in (splits or {}).items() if i < max(start) and idx.numel()}
        base = dict(self._relax)

        def relax() -> None:  # the relaxations of the current slopes and multipliers
            for i, s, mask in slopes:
                r = base[i]
                lower_d = torch.where(mask, s, r.lower_d)
                self._relax[i] = _Relax(lower_d, r.lower_d + r.gap - lower_d, r.upper_b)
            for i, (idx, sign, beta) in betas.items():
                inner = self._relax[i] if any(i == j for j, _, _ in slopes) else base[i]
                self._relax[i] = _SplitRelax(inner, idx, beta * sign)

        best: torch.Tensor | None = None
        try:
            if warm and max(start) in self._warm:
                # each row starts from the better of CROWN's slopes and the last call's final slopes
                cold = [s.detach().clone() for _, s, _ in slopes]
                with torch.no_grad():
                    relax()
                    from_cold = self._backward(dict(start), rows)
                    self._warm_slopes(max(start), keys, slopes)
                    relax()
                    from_warm = self._backward(dict(start), rows)
                    keep_cold = from_cold > from_warm
                    for (_, s, _), c in zip(slopes, cold):
                        s[keep_cold] = c[keep_cold]
                best = torch.maximum(from_cold, from_warm)
        finally:
            self._relax.update(base)
        groups = [{"params": [s for _, s, _ in slopes], "lr": self.lr},
                  {"params": [b for _, _, b in betas.values()], "lr": LR_BETA}]
        opt = torch.optim.Adam([grp for grp in groups if grp["params"]] or [{"params": [torch.zeros(1)]}])
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, self.lr_decay)
        stale, prev = 0, -float("inf")
        n = max(iterations, 1)
        try:
            for it in range(n):
                relax()
                last = it == n - 1
                with torch.set_grad_enabled(not last and bool(slopes or betas)):
                    bound = self._backward(dict(start), rows)
                best = bound.detach().clone() if best is None else torch.maximum(best, bound.detach())
                total = float(best.sum())
                stale = stale + 1 if total - prev <= 1e-4 * max(abs(prev), 1.0) else 0
                prev = max(prev, total)
                if (last or (stop is not None and stop(best)) or stale >= self.patience or not bound.requires_grad
                        or self._past_deadline()):
                    break
                opt.zero_grad()
                (-bound.sum()).backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    for _, s, _ in slopes:
                        s.clamp_(0.0, 1.0)
                    for _, _, beta in betas.values():
                        beta.clamp_(min=0.0)
        finally:
            self._relax.update(base)
        if warm:
            self._warm[max(start)] = (keys.clone(), {i: s.detach().clone() for i, s, _ in slopes})
        assert best is not None
        return best

    def _warm_slopes(self, top: int, keys: torch.Tensor,
                     slopes: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
        """Overwrite, in place, the unstable slopes of the rows whose key the last optimisation of
        start node ``top`` had with the slopes it ended with."""
        saved = self._warm.get(top)
        if saved is None:
            return
        old_keys, old = saved
        where = {int(k): r for r, k in enumerate(old_keys.tolist())}
        pairs = [(r, where[int(k)]) for r, k in enumerate(keys.tolist()) if int(k) in where]
        if not pairs:
            return
        new_rows, old_rows = (torch.tensor(v, device=keys.device) for v in zip(*pairs))
        with torch.no_grad():
            for i, s, mask in slopes:
                if i in old:
                    s[new_rows] = torch.where(mask, old[i][old_rows], s[new_rows])

    def _past_deadline(self) -> bool:
        return self.deadline is not None and self.clock() > self.deadline

    def _slopes(self, start: dict[int, torch.Tensor], rows: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(relu node, slopes (rows, dim) warm-started at CROWN's, unstable mask) for every ReLU
        before the start that has an unstable neuron."""
        top = max(start)
        out = []
        for i, p in self.graph.relus:
            if i >= top:
                break
            lo, hi = self.bounds[p]
            mask = (lo < 0) & (hi > 0)
            if bool(mask.any()):
                s = self._relax[i].lower_d.expand(rows, -1).clone().requires_grad_(True)
                out.append((i, s, mask))
        return out


__all__ = ["INTERMEDIATE_ITERATIONS", "ITERATIONS", "LR", "LR_DECAY", "AlphaCrown"]
