"""Certified margin lower bounds and certified radii with auto_LiRPA (and the Lipschitz margin).

The specification is ``C = e_y − e_j`` for every class j ≠ y, so each bound is a lower
bound on a logit margin f_y − f_j over the perturbation set; all margins positive means
certified. The perturbation set for ``norm="inf"`` is the ε-ball **intersected with the
image box [0, 1]** (the set attacks search too), for ``norm="2"`` the ε-ball intersected
with [0, 1]: the linear bounds are concretised over the whole ε-ball (auto_LiRPA's ℓ2
perturbation takes no box), a superset, while anything other than an affine map applied to
the input sees the box [max(0, x−ε), min(1, x+ε)] (the dense engine; auto_LiRPA 0.3 would see
the point x there, so its ℓ2 path refuses such models). The ℓ2 certificate is therefore
slightly conservative.

A certificate names what it covers (``CertResult.covers``, ``RadiusResult.covers``): the
deployed model, or, for an adaptive ODE solver, only the fixed-step surrogate that replays
the steps accepted on the clean input (``fixed_steps=True``; refused otherwise, because the
deployed step sequence changes inside the ball).

A certified radius is the largest ε whose bound certifies, found by a bracketing search on
the worst margin lower bound m(ε) that models the bound's drop m(0) − m(ε) as a power of ε
(fitted through the evaluations nearest the radius, see ``_next_eps``) and bisects when
the bracket stalls, to the tolerance ``hi − lo ≤ atol + rtol·lo``: ``lo`` is certified
by a bound computed at ε = lo, ``hi`` is not certified. Dense-engine CROWN evaluations
below a failed ε reuse that failed bound's intermediate bounds, valid for every smaller ε
(the ball is nested), only to skip neurons they prove stable (auto_LiRPA's
``aux_reference_bounds``), never to tighten.

References:
    Xu et al., "Automatic Perturbation Analysis for Scalable Certified Robustness and
    Beyond", NeurIPS 2020. Zhang et al., "Efficient Neural Network Robustness
    Certification with General Activation Functions" (CROWN), NeurIPS 2018.
    Gowal et al., "On the Effectiveness of Interval Bound Propagation", 2018.
    Xu et al., "Fast and Complete" (α-CROWN), ICLR 2021.
    Tsuzuku et al., "Lipschitz-margin training", NeurIPS 2018.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ._lirpa_compat import import_auto_lirpa, patches_safe
from .crown import Crown, DenseGraph, GraphError
from .unroll import COVERS_DEPLOYED, COVERS_SURROGATE, UnsupportedLayerError, Unrolled, accepted_steps, adaptive_refusal, is_adaptive, unroll

#: CLI name -> auto_LiRPA method ("lipschitz" is handled by lipbound).
METHODS: dict[str, str] = {"ibp": "IBP", "crown": "backward", "alpha-crown": "CROWN-Optimized",
                           "forward": "forward", "lipschitz": "lipschitz"}
NORMS: tuple[str, ...] = ("inf", "2")
#: implementations of CROWN a :class:`Certifier` can use.
ENGINES: tuple[str, ...] = ("auto", "auto_lirpa")
#: exponent p assumed for the bound's drop m0 − m(ε) ∝ ε^p before a certified ε brackets the radius
#: (measured on the zoo ODE-net: p ≈ 1.8 far below the radius, 3–4 around it).
DROP_EXPONENT = 3.0


class CertifyError(ValueError):
    """Bad arguments to a certification call."""


class EngineError(CertifyError):
    """auto_LiRPA 0.3 failed inside its own code on a model it accepted (a shape it mishandles);
    the message names its error. No bound is returned, so nothing unsound comes out."""


@contextlib.contextmanager
def _in_auto_lirpa() -> Iterator[None]:
    """Turns a failure inside auto_LiRPA into one :class:`EngineError` (our own errors pass)."""
    try:
        yield
    except (CertifyError, UnsupportedLayerError):
        raise
    except NotImplementedError as err:  # its own "not supported yet": a refusal, named
        first = str(err).strip().split(". ")[0]
        raise UnsupportedLayerError(f"auto_LiRPA 0.3 cannot bound this model: {first[:200]}") from err
    except Exception as err:  # noqa: BLE001 - re-raised as EngineError with the original chained
        first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise EngineError(
            f"auto_LiRPA 0.3 could not bound this model ({type(err).__name__}: {first[:200]}); "
            "method crown with engine auto uses the dense engine where the model has a dense graph"
        ) from err


@dataclasses.dataclass(frozen=True)
class CertResult:
    """Margin lower bounds of a batch at one ε.

    Attributes:
        method, norm, eps: what was bounded.
        lower: (N, K-1) lower bounds on f_y − f_j for j ≠ y (in class order).
        certified: (N,) all margins positive.
        seconds: wall time.
        description: how the model was lowered (a fixed-step surrogate says so).
        covers: what the certificate holds for: :data:`~verify.unroll.COVERS_DEPLOYED` or
            :data:`~verify.unroll.COVERS_SURROGATE`.
    """

    method: str
    norm: str
    eps: float
    lower: torch.Tensor
    certified: torch.Tensor
    seconds: float
    description: str = ""
    covers: str = COVERS_DEPLOYED


@dataclasses.dataclass(frozen=True)
class RadiusResult:
    """A certified radius of one example.

    Attributes:
        radius: the largest ε certified by a bound evaluated at ε (0: none).
        upper: smallest ε that failed (inf when the search hit ``eps_max`` certified).
        evaluations: bounds computed.
        seconds: wall time.
        margins: [(ε, worst margin lower bound)] in evaluation order.
        covers: what the radius holds for (see :class:`CertResult`).
    """

    radius: float
    upper: float
    evaluations: int
    seconds: float
    margins: tuple[tuple[float, float], ...]
    covers: str = COVERS_DEPLOYED


def check_norm(norm: Any) -> str:
    """Canonical norm name; raises :class:`CertifyError` otherwise."""
    name = {"inf": "inf", "linf": "inf", "2": "2", "l2": "2"}.get(str(norm).lower())
    if name is None and isinstance(norm, (int, float)) and not isinstance(norm, bool):
        name = "inf" if math.isinf(norm) else ("2" if norm == 2 else None)
    if name is None:
        raise CertifyError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return name


def check_method(method: str) -> str:
    """Validate a method name; raises :class:`CertifyError` otherwise."""
    if method not in METHODS:
        raise CertifyError(f"unknown certification method {method!r}; choose one of {', '.join(METHODS)}")
    return method


#: auto_LiRPA nodes that bound an ℓ2-perturbed input soundly (center ± ‖row‖₂·ε), and the
#: shape-only nodes that pass the input on unchanged.
_L2_INPUT_CONSUMERS: tuple[str, ...] = ("BoundLinear", "BoundConv")
_SHAPE_NODES: tuple[str, ...] = ("BoundFlatten", "BoundReshape")


def _check_l2_input(bm: Any) -> None:
    """Refuse an ℓ2 ball that auto_LiRPA 0.3 would bound as a point.

    Its ℓ2 input interval is the point (x, x); only a linear or convolution node reading
    the input turns it into a sound interval (center ± ‖row‖₂·ε). Any other node applied to
    the input (a ReLU, a pooling, a sum in an unrolled solver step) would propagate the
    point and certify what an attack breaks.

    Raises:
        CertifyError: naming the node.
    """
    todo = [n for n in bm.root_name if type(bm[n]).__name__ == "BoundInput"]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        for out in bm[name].output_name:
            kind = type(bm[out]).__name__
            if kind in _SHAPE_NODES and out not in seen:
                seen.add(out)
                todo.append(out)
            elif kind not in _L2_INPUT_CONSUMERS and kind not in _SHAPE_NODES:
                raise CertifyError(
                    f"norm 2: auto_LiRPA 0.3 bounds the L2 ball as a point through {kind[5:] or kind} applied to "
                    "the input (unsound); use method crown with the dense engine (engine auto), or norm inf")


def check_adaptive(model: nn.Module, method: str, fixed_steps: bool) -> None:
    """Refuse to certify an adaptive solver, unless its fixed-step surrogate is asked for.

    Raises:
        CertifyError: an adaptive solver without ``fixed_steps``, or with ``lipschitz``
            (lipbound has no bound of the surrogate).
    """
    if not is_adaptive(model):
        return
    if not fixed_steps:
        raise CertifyError(adaptive_refusal(model.solver))
    if method == "lipschitz":
        raise CertifyError("lipschitz: lipbound has no bound of an adaptive solver's fixed-step surrogate; "
                           "use ibp, crown, alpha-crown or forward")


def spec_matrix(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C of shape (N, K-1, K): rows e_y − e_j for j ≠ y."""
    eye = torch.eye(num_classes, dtype=torch.float32, device=y.device)
    rows = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    keep = ~torch.eye(num_classes, dtype=torch.bool, device=y.device)[y]
    return rows[keep].view(y.shape[0], num_classes - 1, num_classes)


class _GraphModule(nn.Module):
    """A :class:`~verify.crown.DenseGraph` as a differentiable module (logits out)."""

    def __init__(self, graph: DenseGraph) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph.forward(x)


class Certifier:
    """Bounds one model for a fixed batch shape with one traced auto_LiRPA module.

    Args:
        model: a classifier :func:`~verify.unroll.unroll` accepts, in eval mode.
        norm: ``"inf"`` or ``"2"``.
        method: a key of :data:`METHODS`.
        batch_size: examples per bound call (the traced shape).
        x_clean: one clean input (1, C, H, W), needed for the fixed-step surrogate of an
            adaptive solver (the steps accepted on it are replayed).
        bound_opts: auto_LiRPA options (default ``{"conv_mode": "patches"}``; α-CROWN:
            matrix mode and dense slopes, which the given options override).
        engine: for ``crown``: ``"auto"`` uses :mod:`verify.crown` (the same bounds as
            auto_LiRPA's CROWN, computed on a dense graph, several times faster) whenever
            the model has a dense affine–ReLU form and auto_LiRPA otherwise (e.g. max
            pooling); ``"auto_lirpa"`` always uses auto_LiRPA. Other methods always use
            auto_LiRPA (or lipbound).
        fixed_steps: for an adaptive ODE solver, certify its fixed-step surrogate on
            ``x_clean`` (every result then says :data:`~verify.unroll.COVERS_SURROGATE`);
            without it an adaptive solver is refused.

    Raises:
        CertifyError: unknown norm or method; an adaptive solver without ``fixed_steps``.
        UnsupportedLayerError: a layer that cannot be verified.
    """

    def __init__(self, model: nn.Module, norm: str = "inf", method: str = "crown", batch_size: int = 1,
                 x_clean: torch.Tensor | None = None, bound_opts: dict[str, Any] | None = None,
                 engine: str = "auto", fixed_steps: bool = False) -> None:
        self.norm, self.method = check_norm(norm), check_method(method)
        if engine not in ENGINES:
            raise CertifyError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self.model = model.eval()
        check_adaptive(model, self.method, fixed_steps)
        #: True when this certifies the fixed-step surrogate of an adaptive solver.
        self.adaptive = is_adaptive(model)
        steps = None
        if self.adaptive:
            if x_clean is None or x_clean.dim() != 4 or x_clean.shape[0] != 1:
                raise CertifyError("the fixed-step surrogate of an adaptive solver needs one clean input x_clean "
                                   "of shape (1, C, H, W)")
            steps = accepted_steps(model, x_clean)
        #: what the certificates hold for.
        self.covers = COVERS_SURROGATE if self.adaptive else COVERS_DEPLOYED
        self._x_clean, self._fixed_steps = x_clean, fixed_steps
        self._unrolled: Unrolled | None = None
        self.num_classes = int(getattr(model, "num_classes", 10))
        self.input_shape = tuple(getattr(model, "input_shape", (1, 28, 28)))
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self._lipschitz: float | None = None
        self._bm: Any = None
        #: radius / clean margin of the examples searched so far (the search's starting point).
        self.search_ratios: list[float] = []
        self._default_opts = bound_opts is None
        self.bound_opts = dict(bound_opts) if bound_opts is not None else {"conv_mode": "patches"}
        if self.method == "alpha-crown":
            # auto_LiRPA 0.3's α-CROWN fails in "patches" mode (an assertion through max-pooling,
            # "'Patches' object has no attribute 'size'" on ResNets) and its sparse slope tensors fail
            # to scatter back ("shape mismatch" in reconstruct_full_alpha) when a later call has another
            # unstable set: dense matrices and dense slopes give the same bounds, and one traced module
            # then serves every call (measured on `resnet`: the bound after three other calls equals a
            # fresh module's to the last digit).
            self.bound_opts = {"conv_mode": "matrix", "sparse_features_alpha": False, "sparse_spec_alpha": False,
                               **(bound_opts or {})}
        self._crown: Crown | None = None
        if self.method == "crown" and engine == "auto" and bound_opts is None:
            try:
                graph = DenseGraph.from_model(self.model, steps)
            except GraphError:
                graph = None
            if graph is not None:
                self._crown = Crown(graph, self.norm)
        #: which implementation computes the bounds: "dense" (verify.crown), "auto_LiRPA" or "lipbound".
        self.engine = "dense" if self._crown is not None else ("lipbound" if self.method == "lipschitz"
                                                                else "auto_LiRPA")
        #: how the model was lowered (the surrogate's description says what it covers).
        self.description = self._crown.graph.description if self._crown is not None else self.unrolled.description

    @property
    def unrolled(self) -> Unrolled:
        """The static module auto_LiRPA traces (built on first use; the dense engine needs none).

        Raises:
            UnsupportedLayerError: a layer auto_LiRPA cannot bound.
        """
        if self._unrolled is None:
            self._unrolled = unroll(self.model, self._x_clean, self._fixed_steps)
        return self._unrolled

    def covered_model(self) -> nn.Module:
        """The function the certificates hold for: the model itself, or (an adaptive solver with
        ``fixed_steps``) its fixed-step surrogate, which attacks must target to check them."""
        if not self.adaptive:
            return self.model
        if self._crown is not None:
            return _GraphModule(self._crown.graph).eval()
        return self.unrolled.module.eval()

    @property
    def bounded_module(self) -> Any:
        """The auto_LiRPA ``BoundedModule`` (traced on first use)."""
        if self._bm is None:
            lirpa = import_auto_lirpa()
            dummy = torch.zeros(self.batch_size, *self.input_shape, device=self.device)
            if self._default_opts and not patches_safe(self.unrolled.module):
                self.bound_opts = {**self.bound_opts, "conv_mode": "matrix"}
            with _in_auto_lirpa():
                bm = lirpa.BoundedModule(self.unrolled.module, dummy, bound_opts=self.bound_opts,
                                         device=str(self.device))
            if self.norm == "2":
                _check_l2_input(bm)
            self._bm = bm
        return self._bm

    def lipschitz(self) -> float:
        """Network Lipschitz bound from lipbound (cached)."""
        if self._lipschitz is None:
            from lipbound import network_bound

            nb = network_bound(self.model, self.norm)
            if nb.total is None:
                raise CertifyError(f"no Lipschitz bound for this model: {nb.reason}")
            self._lipschitz = float(nb.total)
        return self._lipschitz

    def _input(self, x: torch.Tensor, eps: torch.Tensor) -> Any:
        lirpa = import_auto_lirpa()
        e = eps.view(-1, *([1] * (x.dim() - 1)))
        if self.norm == "inf":
            ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=e, x_L=(x - e).clamp(0, 1), x_U=(x + e).clamp(0, 1))
        else:
            # auto_LiRPA's ℓ2 IBP through a convolution needs a scalar ε.
            if not bool((eps == eps[0]).all()):
                raise CertifyError("norm 2: one ε per bound call (batch examples with equal ε)")
            ptb = lirpa.PerturbationLpNorm(norm=2.0, eps=float(eps[0]))
        return lirpa.BoundedTensor(x, ptb)

    def reference(self) -> dict[Any, tuple[torch.Tensor, torch.Tensor]]:
        """Pre-activation bounds of the last call (of one example), keyed by node: pass them as
        ``reference`` to a later call on a subset of the perturbation set (a smaller ε)."""
        if self._crown is not None:
            return {k: (lo.clone(), hi.clone()) for k, (lo, hi) in self._crown.bounds.items()}
        out = {}
        for relu in self.bounded_module.relus:
            node = relu.inputs[0]
            if getattr(node, "lower", None) is not None:
                out[node.name] = (node.lower.detach().clone(), node.upper.detach().clone())
        return out

    def margins(self, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
                reference: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Lower bounds (N, K-1) on f_y − f_j over the perturbation set of radius ``eps``.

        Args:
            x: (N, C, H, W) in [0, 1], N = ``batch_size`` (except for ``lipschitz``).
            y: (N,) labels.
            eps: radius, a float or a (N,) tensor (one per example).
            reference: bounds valid on a superset, used to skip provably stable neurons.

        Raises:
            CertifyError: wrong batch size, negative ε.
        """
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).flatten()
        if eps_t.numel() == 1:
            eps_t = eps_t.expand(x.shape[0]).clone()
        if (eps_t < 0).any() or not torch.isfinite(eps_t).all():
            raise CertifyError(f"eps must be finite and >= 0, got {eps_t.tolist()}")
        C = spec_matrix(y, self.num_classes)
        if self.method == "lipschitz":
            with torch.no_grad():
                margins = torch.einsum("nkc,nc->nk", C, self.model(x))
            return margins - eps_t.view(-1, 1) * self._lipschitz_constant()
        if self._crown is not None:
            if reference and x.shape[0] != 1:
                raise CertifyError("reference bounds belong to one example: pass a batch of one")
            with torch.no_grad():
                return torch.stack([self._crown.margins(x[i], float(eps_t[i]), C[i], reference)
                                    for i in range(x.shape[0])])
        if x.shape[0] != self.batch_size:
            raise CertifyError(f"this certifier was traced for batches of {self.batch_size}, got {x.shape[0]}")
        kwargs: dict[str, Any] = {"C": C, "method": METHODS[self.method], "bound_upper": False}
        if reference:
            kwargs["aux_reference_bounds"] = reference
        bm = self.bounded_module
        with _in_auto_lirpa(), (contextlib.nullcontext() if self.method == "alpha-crown" else torch.no_grad()):
            lower, _ = bm.compute_bounds(x=(self._input(x, eps_t),), **kwargs)
        return lower.detach()

    def _lipschitz_constant(self) -> float:
        # f_y − f_j changes by at most c·L·‖δ‖ (c = √2 for ℓ2 output, 2 for ℓ∞ output).
        return (math.sqrt(2.0) if self.norm == "2" else 2.0) * self.lipschitz()

    def radius(self, x: torch.Tensor, y: torch.Tensor, eps_max: float, guess: float | None = None,
               rtol: float = 0.02, atol: float = 1e-4, max_evals: int = 30) -> RadiusResult:
        """Certified radius of one example (``x`` of shape (1, C, H, W)).

        Args:
            x, y: one example and its label.
            eps_max: search ceiling.
            guess: first ε to try. Default: 1.25 × (clean margin) × (median radius-to-margin
                ratio of the examples this certifier has searched), just above the expected
                radius so that the first bound fails and every later one reuses its
                intermediate bounds; eps_max / 8 for the first example.
            rtol, atol: stop when hi − lo ≤ atol + rtol·lo.
            max_evals: cap on bound evaluations.

        Returns:
            a :class:`RadiusResult` (``covers`` says what it holds for); radius 0 for a
        misclassified example.
        """
        start = time.perf_counter()
        with torch.no_grad():
            logits = self.model(x)
        m0 = float((spec_matrix(y, self.num_classes)[0] @ logits[0]).min())
        if m0 <= 0:
            return RadiusResult(0.0, 0.0, 0, time.perf_counter() - start, ((0.0, m0),), self.covers)
        if self.method == "lipschitz":
            r = min(m0 / self._lipschitz_constant(), eps_max)
            return RadiusResult(r, r if r < eps_max else math.inf, 0, time.perf_counter() - start, ((0.0, m0),),
                                self.covers)
        lo, hi = 0.0, math.inf
        ref: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        history: list[tuple[float, float]] = [(0.0, m0)]
        if not (guess and guess > 0):
            ratios = sorted(self.search_ratios)
            guess = 1.25 * m0 * ratios[len(ratios) // 2] if ratios else eps_max / 8
        eps = min(guess, eps_max)
        while len(history) - 1 < max_evals:
            m = float(self.margins(x, y, eps, ref if eps < hi else None).min())
            history.append((eps, m))
            if m > 0:
                lo = eps
            else:
                hi = eps
                if self._crown is not None:
                    # Only the dense engine uses reference bounds purely to pick the neurons to
                    # bound; auto_LiRPA 0.3 also bounds MaxPool with them, which loosens its CROWN
                    # bounds below IBP's (LeNet-5: no radius at all).
                    ref = self.reference()
            if lo >= eps_max or hi - lo <= atol + rtol * lo:
                break
            eps = _next_eps(history, lo, hi, rtol, atol, eps_max)
            same = [e for e, _ in history[-3:]]
            if math.isfinite(hi) and len(history) > 3 and (all(e <= lo for e in same) or all(e >= hi for e in same)):
                # three evaluations in a row on one side of the radius: the model misleads, bisect
                eps = math.sqrt(lo * hi) if lo > 0 else hi / 2
        if lo > 0 and math.isfinite(hi):
            self.search_ratios.append(lo / m0)
        return RadiusResult(lo, hi, len(history) - 1, time.perf_counter() - start, tuple(history), self.covers)


def _next_eps(history: list[tuple[float, float]], lo: float, hi: float, rtol: float, atol: float,
              eps_max: float) -> float:
    """The next ε of the radius search, from the (ε, worst margin bound) pairs so far.

    The bound's drop d(ε) = m(0) − m(ε) grows like a power of ε (exponent ~2–4 near the
    radius, where neurons turn unstable), so log d is close to linear in log ε. The line
    through the two evaluated points nearest the radius (the bracket's ends when there is
    one; slope ``DROP_EXPONENT`` through a single point) predicts the radius r where
    d(r) = m(0). The next ε lies 0.4·tol beside r, on the side that lets the following
    evaluation close the bracket to the tolerance tol = atol + rtol·r.
    """
    m0 = history[0][1]
    points = history[1:]
    ok = sorted(p for p in points if p[1] > 0)
    bad = sorted(p for p in points if p[1] <= 0)
    if ok and bad:
        a, b = ok[-1], bad[0]
    elif bad:
        a, b = (bad[1] if len(bad) > 1 else None), bad[0]
    else:
        a, b = (ok[-2] if len(ok) > 1 else None), ok[-1]

    def log_drop(m: float) -> float:
        return math.log(max(m0 - m, 1e-12 * m0))

    p = DROP_EXPONENT
    if a is not None and a[0] != b[0]:
        p = min(max((log_drop(b[1]) - log_drop(a[1])) / math.log(b[0] / a[0]), 1.0), 8.0)
    r = b[0] * math.exp((math.log(m0) - log_drop(b[1])) / p)
    tol = atol + rtol * r
    if math.isinf(hi):
        return min(r + 0.4 * tol, 10 * lo, eps_max)  # above r: a failure there brings reference bounds
    below = lo == 0 or hi - r <= r - lo  # the radius looks closer to the failed end: land just below it
    eps = r - 0.4 * tol if below else r + 0.4 * tol
    margin = 0.1 * (atol + rtol * lo)
    return min(max(eps, lo + margin), hi - margin)


def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "inf",
            method: str = "crown", bound_opts: dict[str, Any] | None = None, engine: str = "auto",
            fixed_steps: bool = False) -> CertResult:
    """Margin lower bounds for a batch at one ε.

    Args:
        model: classifier (see :func:`~verify.unroll.unroll`), eval mode.
        x: (N, C, H, W) in [0, 1].
        y: (N,) labels.
        eps: radius (pixel units), ≥ 0.
        norm: ``"inf"`` (ε-ball ∩ [0, 1]) or ``"2"`` (whole ε-ball).
        method: ``ibp``, ``crown``, ``alpha-crown``, ``forward`` or ``lipschitz``.
        bound_opts: auto_LiRPA options (given: auto_LiRPA computes every method).
        engine: ``"auto"`` or ``"auto_lirpa"`` (see :class:`Certifier`).
        fixed_steps: for an adaptive ODE solver, certify the fixed-step surrogate of the
            steps accepted on ``x`` (one example; not the deployed solver).

    Returns:
        a :class:`CertResult`.

    Raises:
        CertifyError: bad norm, method, ε or shapes; an adaptive solver without ``fixed_steps``.
        UnsupportedLayerError: a layer that cannot be verified.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise CertifyError(f"x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if y.shape != x.shape[:1]:
        raise CertifyError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise CertifyError(f"eps must be a finite number >= 0, got {eps!r}")
    start = time.perf_counter()
    if is_adaptive(model) and fixed_steps and x.shape[0] > 1:
        raise CertifyError("the fixed-step surrogate replays one input's steps: certify one example at a time")
    cert = Certifier(model, norm, method, x.shape[0], x[:1], bound_opts, engine, fixed_steps)
    lower = cert.margins(x, y, eps)
    return CertResult(method, cert.norm, float(eps), lower, (lower > 0).all(dim=1),
                      time.perf_counter() - start, cert.description, cert.covers)
