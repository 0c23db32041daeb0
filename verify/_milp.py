"""Exact L∞ verification by mixed-integer programming: the :class:`Milp` engine and :func:`exact_radius`.

:class:`Milp` answers the engine protocol with the exact minimum of each margin over the
ε-box ∩ [0, 1] (HiGHS's dual bound: a valid lower bound, the minimum itself when the program
is solved to its gap). :func:`exact_radius` computes the minimal adversarial L∞ distance
``min {‖x' − x‖∞ : x' ∈ [0, 1]^d, max_{j≠y} f_j(x') ≥ f_y(x')}``, the ground truth every
certified radius must stay below and every attack radius above. The encoding, its big-M
bounds and the one-program-per-class disjunction are described in
:mod:`verify._milp_encoding`. A time limit turns an unfinished program into an "unknown"
status with the bounds proven so far, never into a guess.

References:
    Tjeng, Xiao and Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
    Programming" (MIPVerify), ICLR 2019.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from torch import nn

from ._dense_graph import DenseGraph
from ._errors import CertifyError
from ._lower import Lowered, lower
from ._milp_encoding import Encoder, Solution
from ._spec import spec_matrix

#: default time limit (seconds) of one margin program or one whole radius.
TIME_LIMIT = 60.0
#: a CROWN margin bound above this skips a class's program (float32 bounds: a little room).
SKIP_MARGIN = 1e-5
#: verdicts of :func:`exact_radius`.
STATUSES = ("optimal", "robust", "unknown", "misclassified")


@dataclasses.dataclass(frozen=True)
class ClassResult:
    """One wrong class j of an exact radius.

    Attributes:
        target: j.
        status: "optimal" (its minimal distance found), "infeasible" (none within the ceiling),
            "skipped" (CROWN certifies the margin at the ceiling), "timeout".
        ceiling: the ε ceiling of its program (the closest counterexample known before it).
        eps: the distance of its best counterexample, or None.
        lower: a proven lower bound on its minimal distance.
        binaries: unstable ReLUs encoded (0 when skipped).
        nodes: branch-and-bound nodes HiGHS explored.
        seconds: wall time.
    """

    target: int
    status: str
    ceiling: float
    eps: float | None
    lower: float
    binaries: int
    nodes: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class ExactRadius:
    """The minimal adversarial L∞ distance of one example.

    Attributes:
        radius: the distance of the closest counterexample found (inf: none within ``eps_max``);
            the exact radius when ``status == "optimal"`` (to HiGHS's relative gap).
        lower: a proven lower bound on the exact radius (``eps_max`` when robust).
        status: "optimal", "robust" (no counterexample within ``eps_max``), "unknown" (a time
            limit hit: ``lower ≤ exact ≤ radius``) or "misclassified" (radius 0).
        target: the class of the counterexample (None when none).
        counterexample: (1, C, H, W) the counterexample, or None.
        margin: f_y − f_target at the counterexample through the IR in float32 (≤ 0, or a tie
            within float rounding).
        eps_max: the search ceiling.
        seconds: wall time.
        classes: per wrong class, in the order tried.
    """

    radius: float
    lower: float
    status: str
    target: int | None
    counterexample: torch.Tensor | None
    margin: float | None
    eps_max: float
    seconds: float
    classes: tuple[ClassResult, ...]

    @property
    def exact(self) -> bool:
        """True when the radius is proven (optimal, robust beyond ``eps_max``, or misclassified)."""
        return self.status != "unknown"


class Milp:
    """Exact margins by mixed-integer programming on the IR's dense graph (L∞ only).

    Args:
        ir: the lowered model.
        norm: ``"inf"``.
        time_limit: seconds per margin program; an unfinished one returns its dual bound
            (or CROWN's bound when larger): still a valid lower bound.

    Raises:
        CertifyError: a norm other than ``"inf"``, a model with no dense affine–ReLU graph
            (e.g. max pooling), or a non-positive time limit.
    """

    name = "milp"
    search_reference = False

    def __init__(self, ir: Lowered, norm: str = "inf", time_limit: float = TIME_LIMIT) -> None:
        self.encoder = Encoder.for_engine("milp", ir, norm, time_limit)
        self.ir, self.time_limit = ir, float(time_limit)
        #: per-row HiGHS solutions of the last :meth:`margins` call (status, seconds, nodes).
        self.last_solutions: list[Solution] = []

    def margins(self, x: torch.Tensor, eps: torch.Tensor, C: torch.Tensor,
                reference: object | None = None) -> torch.Tensor:
        """(N, K') lower bounds on ``C @ logits`` over each example's ε-box ∩ [0, 1] (exact when solved)."""
        if reference is not None:
            raise CertifyError("the milp engine takes no reference bounds")
        out = torch.empty(C.shape[:2], dtype=x.dtype, device=x.device)
        self.last_solutions = []
        for i in range(x.shape[0]):
            e = float(eps[i])
            bounds, crown = self.encoder.bounds(x[i:i + 1], e, C[i])
            x0 = self.encoder.node_x(x[i])
            prog, logits, _, _ = self.encoder.encode(x0, bounds[0], bounds, None)
            for k in range(C.shape[1]):
                cost = np.zeros(prog.n_col)
                np.add.at(cost, logits, C[i, k].double().cpu().numpy())
                sol = prog.solve(cost, self.time_limit)
                self.last_solutions.append(sol)
                out[i, k] = max(float(crown[k]), sol.dual_bound if sol.status != "Infeasible" else -math.inf)
        return out

    def reference(self) -> None:
        return None

    def minimal_distance(self, x: torch.Tensor, y: int, eps_max: float, time_limit: float | None = None,
                         x_adv: torch.Tensor | None = None) -> ExactRadius:
        """The exact radius of one example; see :func:`exact_radius`."""
        start = time.perf_counter()
        limit = self.time_limit if time_limit is None else float(time_limit)
        enc, g = self.encoder, self.encoder.graph
        C = spec_matrix(torch.tensor([y]), self.ir.num_classes, x.dtype)[0].to(x.device)
        with torch.no_grad():
            logits = g.forward(x)[0]
        if int(logits.argmax()) != y:
            return ExactRadius(0.0, 0.0, "misclassified", int(logits.argmax()), x.clone(), 0.0, eps_max,
                               time.perf_counter() - start, ())
        others = [j for j in range(self.ir.num_classes) if j != y]
        best = _hint(g, x, y, x_adv, eps_max)
        ceiling = best[0] if best else eps_max
        x0 = enc.node_x(x)
        results: list[ClassResult] = []
        bounds_at: tuple[float, list, torch.Tensor] | None = None
        for j in sorted(others, key=lambda k: -float(logits[k])):
            t0, remaining = time.perf_counter(), limit - (time.perf_counter() - start)
            if bounds_at is None or bounds_at[0] != ceiling:
                bounds_at = (ceiling, *enc.bounds(x, ceiling, C))
            _, bounds, crown = bounds_at
            if float(crown[others.index(j)]) > SKIP_MARGIN:
                results.append(ClassResult(j, "skipped", ceiling, None, ceiling, 0, 0, time.perf_counter() - t0))
                continue
            if remaining <= 0:
                results.append(ClassResult(j, "timeout", ceiling, None, 0.0, 0, 0, 0.0))
                continue
            prog, out, eps_col, binaries = enc.encode(x0, bounds[0], bounds, ceiling)
            # f_j − f_y ≥ 0
            prog.add_rows(np.zeros(2, int), out[[j, y]], np.array([1.0, -1.0]), np.zeros(1), np.full(1, math.inf))
            cost = np.zeros(prog.n_col)
            cost[eps_col] = 1.0
            sol = prog.solve(cost, remaining)
            res, found = _class_result(j, ceiling, sol, binaries, time.perf_counter() - t0, enc, x, x0)
            results.append(res)
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], j, found[1])
                ceiling = found[0]
        return _radius_result(g, x, y, best, ceiling, eps_max, results, time.perf_counter() - start)


def _hint(g: DenseGraph, x: torch.Tensor, y: int, x_adv: torch.Tensor | None, eps_max: float
          ) -> tuple[float, int, torch.Tensor] | None:
    """(distance, class, point) of a given adversarial point that really is misclassified within eps_max."""
    if x_adv is None:
        return None
    x_adv = x_adv.reshape(x.shape).to(x)
    if bool((x_adv < 0).any() or (x_adv > 1).any()):
        return None
    with torch.no_grad():
        out = g.forward(x_adv)[0]
    pred = int(out.argmax())
    d = float((x_adv - x).abs().max())
    return (d, pred, x_adv.clone()) if pred != y and d <= eps_max else None


def _class_result(j: int, ceiling: float, sol: Solution, binaries: int, seconds: float, enc: Encoder,
                  x: torch.Tensor, x0: np.ndarray) -> tuple[ClassResult, tuple[float, torch.Tensor] | None]:
    """The class's record and its counterexample (distance, image), if one was found."""
    found = None
    if sol.x is not None:
        v = np.clip(sol.x[: x0.size], 0.0, 1.0)
        image = enc.image(v, x)
        found = (float((image - x).abs().max()), image)
    if sol.status == "Optimal":
        status, lower = "optimal", max(0.0, min(sol.dual_bound, found[0] if found else ceiling))
    elif sol.status == "Infeasible":
        status, lower = "infeasible", ceiling
    elif sol.status in ("Time limit reached", "Interrupted by user"):
        status, lower = "timeout", max(0.0, min(sol.dual_bound, ceiling))
    else:
        raise CertifyError(f"milp: HiGHS ended with status {sol.status!r} on class {j}")
    eps = found[0] if found else None
    return ClassResult(j, status, ceiling, eps, lower, binaries, sol.nodes, seconds), found


def _radius_result(g: DenseGraph, x: torch.Tensor, y: int, best: tuple[float, int, torch.Tensor] | None,
                   ceiling: float, eps_max: float, results: list[ClassResult], seconds: float) -> ExactRadius:
    lower = min([ceiling, *(r.lower for r in results)])
    timed_out = any(r.status == "timeout" for r in results)
    if best is None:
        status = "unknown" if timed_out else "robust"
        return ExactRadius(math.inf, lower, status, None, None, None, eps_max, seconds, tuple(results))
    with torch.no_grad():
        out = g.forward(best[2])[0]
    margin = float(out[y] - out[best[1]])
    return ExactRadius(best[0], min(lower, best[0]), "unknown" if timed_out else "optimal", best[1], best[2], margin,
                       eps_max, seconds, tuple(results))


def exact_radius(model: nn.Module | Lowered, x: torch.Tensor, y: int | torch.Tensor, eps_max: float = 0.5,
                 time_limit: float = TIME_LIMIT, x_adv: torch.Tensor | None = None) -> ExactRadius:
    """The minimal adversarial L∞ distance of one example, by mixed-integer programming.

    Args:
        model: a classifier the lowering accepts with a dense affine–ReLU graph (fully
            connected and convolutional ReLU nets, ODE-nets with fixed-step solvers), or its IR.
        x: (1, C, H, W) in [0, 1].
        y: its label.
        eps_max: the largest distance considered (the big-M bounds hold on its ball).
        time_limit: seconds for the whole radius.
        x_adv: an adversarial point found by an attack (optional): when misclassified it sets
            the first ceiling, so that every program starts from tight bounds.

    Returns:
        an :class:`ExactRadius` (status "unknown" when the time limit cut a program short).

    Raises:
        CertifyError: bad arguments, or a model with no dense graph.
    """
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[0] == 1):
        raise CertifyError(f"x must be one example of shape (1, C, H, W), got {getattr(x, 'shape', type(x))}")
    if not (isinstance(eps_max, (int, float)) and math.isfinite(eps_max) and eps_max > 0):
        raise CertifyError(f"eps_max must be a finite number > 0, got {eps_max!r}")
    ir = model if isinstance(model, Lowered) else lower(model.eval())
    label = int(y.flatten()[0]) if isinstance(y, torch.Tensor) else int(y)
    if not 0 <= label < ir.num_classes:
        raise CertifyError(f"label {label} outside 0..{ir.num_classes - 1}")
    return Milp(ir, "inf", time_limit).minimal_distance(x, label, float(eps_max), time_limit, x_adv)


__all__ = ["STATUSES", "TIME_LIMIT", "ClassResult", "ExactRadius", "Milp", "exact_radius"]
