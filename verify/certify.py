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

import dataclasses
import math
import time
from typing import Any

import torch
from torch import nn

from lipbound.norms import NORMS as NORMS
from lipbound.norms import UnknownNormError, canonical_norm

from ._errors import CertifyError as CertifyError
from ._errors import EngineError as EngineError
from ._lirpa import LIRPA_METHODS, Lirpa
from ._lower import COVERS_DEPLOYED, CASFlow, Lowered, LoweredModule, adaptive_refusal, is_adaptive, lower
from ._search import RadiusResult as RadiusResult
from ._search import search_radius
from ._spec import spec_matrix as spec_matrix
from .crown import GraphError
from ._bab import BranchAndBound
from ._lp_all import LpAll
from ._milp import Milp
from ._trajectory import TrajectoryGraph
from .engines import DenseAlphaCrown, DenseCrown, Engine, LipschitzMargin, Reference
from .unroll import Unrolled

#: certification methods: auto_LiRPA's four, the Lipschitz margin, branch and bound, the exact MILP and LP-all.
METHODS: tuple[str, ...] = (*LIRPA_METHODS, "lipschitz", "bab", "milp", "lp-all")
#: the methods ``all`` leaves out (each costs minutes to hours per bound on the zoo's larger nets).
EXPENSIVE: tuple[str, ...] = ("bab", "milp", "lp-all")
#: seconds per example and ε of branch and bound (``bab``) unless given.
BAB_TIME_LIMIT = 60.0
#: implementations of CROWN a :class:`Certifier` can use.
ENGINES: tuple[str, ...] = ("auto", "auto_lirpa")


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


class CertifyNormError(UnknownNormError, CertifyError):
    """A norm other than "inf" or "2" (see :mod:`lipbound.norms`)."""


def check_norm(norm: Any) -> str:
    """Canonical norm name; raises :class:`CertifyNormError` (a :class:`CertifyError`) otherwise."""
    return canonical_norm(norm, CertifyNormError)


def check_method(method: str) -> str:
    """Validate a method name; raises :class:`CertifyError` otherwise."""
    if method not in METHODS:
        raise CertifyError(f"unknown certification method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def check_engine(engine: str) -> str:
    """Validate an engine name; raises :class:`CertifyError` otherwise."""
    if engine not in ENGINES:
        raise CertifyError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return engine


def check_adaptive(model: nn.Module, method: str, fixed_steps: bool) -> None:
    """Refuse to certify an adaptive solver, unless its fixed-step surrogate is asked for.

    Raises:
        CertifyError: an adaptive solver without ``fixed_steps``, or with ``lipschitz``
            (lipbound has no bound of the surrogate).
    """
    if not is_adaptive(model):
        return
    if not fixed_steps:
        solver = next(m.solver for m in model.modules() if hasattr(m, "solver") and not m.solver.is_fixed)
        raise CertifyError(adaptive_refusal(solver))
    if method == "lipschitz":
        raise CertifyError("lipschitz: lipbound has no bound of an adaptive solver's fixed-step surrogate; "
                           "use ibp, crown, alpha-crown or forward")


def make_engine(ir: Lowered, norm: str, method: str, batch_size: int = 1,
                bound_opts: dict[str, Any] | None = None, engine: str = "auto",
                time_limit: float = BAB_TIME_LIMIT) -> Engine:
    """The engine that computes ``method`` on the IR.

    ``crown`` and ``alpha-crown`` with ``engine="auto"`` are the dense engines (:class:`DenseCrown`,
    :class:`DenseAlphaCrown`) wherever the IR has a dense graph (no max pooling), else auto_LiRPA;
    ``engine="auto_lirpa"`` always uses auto_LiRPA. The other methods: auto_LiRPA, or the
    Lipschitz margin. ``bab``: :class:`BranchAndBound` (dense graph, L∞ only), ``time_limit``
    seconds per example and ε. ``milp``: :class:`verify._milp.Milp`, the exact margins by mixed-integer
    programming (dense graph, L∞ only), ``time_limit`` seconds per margin program. ``lp-all``:
    :class:`verify._lp_all.LpAll`, every neuron bounded by its own triangle-relaxation LP (α-CROWN's
    ceiling; dense graph, L∞ only), ``time_limit`` seconds per example. A model with a
    controlled adaptive solver (:class:`~verify._lower.CASFlow`) is certified as deployed by
    :class:`~verify._trajectory.TrajectoryGraph` (``crown``, the default, only).

    Raises:
        CertifyError: an unknown engine; auto_LiRPA options for the dense engine; ``bab`` on a
            model without a dense graph or with norm 2; a CAS model with another method.
    """
    check_engine(engine)
    if any(isinstance(p, CASFlow) for p in ir.parts):
        if method != "crown" or engine != "auto" or bound_opts is not None:
            raise CertifyError(f"{ir.description}: a controlled adaptive solver is certified as deployed by the "
                               f"trajectory graph of its step decisions (method crown, engine auto); got method "
                               f"{method!r}, engine {engine!r}")
        return TrajectoryGraph(ir, norm)
    if method == "lipschitz":
        return LipschitzMargin(ir, norm)
    if method in ("milp", "lp-all"):
        if engine != "auto" or bound_opts is not None:
            raise CertifyError(f"{method} runs on the dense graph only (engine auto, no auto_LiRPA options)")
        return Milp(ir, norm, time_limit) if method == "milp" else LpAll(ir, norm, time_limit)
    if method == "bab":
        if engine != "auto" or bound_opts is not None:
            raise CertifyError("bab runs on the dense engine only (engine auto, no auto_LiRPA options)")
        try:
            return BranchAndBound(ir, norm, time_limit)
        except GraphError as err:
            raise CertifyError(f"bab needs a dense affine–ReLU graph: {err}") from err
    if method in ("crown", "alpha-crown") and engine == "auto":
        if bound_opts is not None:
            raise CertifyError(f"bound_opts are auto_LiRPA options: pass engine='auto_lirpa' to bound {method} "
                               "with auto_LiRPA")
        try:
            return DenseCrown(ir, norm) if method == "crown" else DenseAlphaCrown(ir, norm)
        except GraphError:
            pass
    return Lirpa(ir, norm, method, batch_size, bound_opts)


class Certifier:
    """Bounds one model with one engine, for a fixed batch shape.

    The model is lowered once (:func:`verify._lower.lower`); the engine is built from the IR.

    Args:
        model: a classifier the lowering accepts (chains of supported layers and ODE blocks,
            ResNets), in eval mode.
        norm: ``"inf"`` or ``"2"``.
        method: one of :data:`METHODS`.
        batch_size: examples per bound call (auto_LiRPA's traced shape).
        x_clean: one clean input (1, C, H, W), needed for the fixed-step surrogate of an
            adaptive solver (the steps accepted on it are replayed).
        bound_opts: auto_LiRPA options (default ``{"conv_mode": "patches"}``; α-CROWN:
            matrix mode and dense slopes, which the given options override).
        engine: ``"auto"`` or ``"auto_lirpa"`` (see :func:`make_engine`).
        fixed_steps: for an adaptive ODE solver, certify its fixed-step surrogate on
            ``x_clean`` (every result then says :data:`~verify.unroll.COVERS_SURROGATE`);
            without it an adaptive solver is refused.
        ir: the model's IR when the caller has lowered it already (``lower(model, x_clean,
            fixed_steps)``), so that several methods share one lowering.
        time_limit: ``bab``: seconds per example and ε (then its verdict is unknown).

    Raises:
        CertifyError: unknown norm, method or engine; an adaptive solver without ``fixed_steps``.
        UnsupportedLayerError: a layer that cannot be verified.
    """

    def __init__(self, model: nn.Module, norm: str = "inf", method: str = "crown", batch_size: int = 1,
                 x_clean: torch.Tensor | None = None, bound_opts: dict[str, Any] | None = None,
                 engine: str = "auto", fixed_steps: bool = False, *, ir: Lowered | None = None,
                 time_limit: float = BAB_TIME_LIMIT) -> None:
        self.norm, self.method = check_norm(norm), check_method(method)
        check_engine(engine)
        self.model = model.eval()
        check_adaptive(model, self.method, fixed_steps)
        #: True when this certifies the fixed-step surrogate of an adaptive solver.
        self.adaptive = is_adaptive(model)
        if self.adaptive and (x_clean is None or x_clean.dim() != 4 or x_clean.shape[0] != 1):
            raise CertifyError("the fixed-step surrogate of an adaptive solver needs one clean input x_clean "
                               "of shape (1, C, H, W)")
        #: the lowered model every bound is computed on (given: the caller's, e.g. shared by methods).
        self.ir = ir if ir is not None else lower(model, x_clean, fixed_steps)
        self.bounds: Engine = make_engine(self.ir, self.norm, self.method, batch_size, bound_opts, engine, time_limit)
        #: what the certificates hold for.
        self.covers = self.ir.covers
        self.num_classes = self.ir.num_classes
        self.input_shape = self.ir.input_shape
        self.batch_size = batch_size
        #: radius / clean margin of the examples searched so far (the search's starting point).
        self.search_ratios: list[float] = []
        #: which implementation computes the bounds: "dense" (verify.crown), "auto_LiRPA" or "lipbound".
        self.engine = self.bounds.name
        #: how the model was lowered (the surrogate's description says what it covers).
        self.description = self.ir.description

    @property
    def unrolled(self) -> Unrolled:
        """The static module auto_LiRPA traces (auto_LiRPA engine only)."""
        if not isinstance(self.bounds, Lirpa):
            raise CertifyError(f"the {self.engine} engine traces no static module")
        return self.bounds.unrolled

    @property
    def bounded_module(self) -> Any:
        """The auto_LiRPA ``BoundedModule`` (auto_LiRPA engine only; traced on first use)."""
        if not isinstance(self.bounds, Lirpa):
            raise CertifyError(f"the {self.engine} engine has no auto_LiRPA module")
        return self.bounds.bounded_module

    def covered_model(self) -> nn.Module:
        """The function the certificates hold for: the model itself, or (an adaptive solver with
        ``fixed_steps``) its fixed-step surrogate, which attacks must target to check them."""
        return LoweredModule(self.ir, self.model).eval() if self.adaptive else self.model

    def lipschitz(self) -> float:
        """The model's Lipschitz bound (the Lipschitz margin engine's constant)."""
        if not isinstance(self.bounds, LipschitzMargin):
            raise CertifyError("lipschitz() belongs to method lipschitz")
        return self.bounds.constant

    def reference(self) -> Reference | None:
        """Pre-activation bounds of the last call (of one example): pass them as ``reference``
        to a later call on a subset of the perturbation set (a smaller ε)."""
        return self.bounds.reference()

    def margins(self, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
                reference: Reference | None = None) -> torch.Tensor:
        """Lower bounds (N, K-1) on f_y − f_j over the perturbation set of radius ``eps``.

        Args:
            x: (N, C, H, W) in [0, 1], N = ``batch_size`` (auto_LiRPA).
            y: (N,) labels.
            eps: radius, a float or a (N,) tensor (one per example).
            reference: bounds valid on a superset, used to skip provably stable neurons.

        Raises:
            CertifyError: wrong batch size, negative ε, a reference of another engine.
        """
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).flatten()
        if eps_t.numel() == 1:
            eps_t = eps_t.expand(x.shape[0]).clone()
        if (eps_t < 0).any() or not torch.isfinite(eps_t).all():
            raise CertifyError(f"eps must be finite and >= 0, got {eps_t.tolist()}")
        return self.bounds.margins(x, eps_t, spec_matrix(y, self.num_classes), reference)

    def radius(self, x: torch.Tensor, y: torch.Tensor, eps_max: float, guess: float | None = None,
               rtol: float = 0.02, atol: float = 1e-4, max_evals: int = 30) -> RadiusResult:
        """Certified radius of one example (``x`` of shape (1, C, H, W)); see :func:`search_radius`.

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
        C = spec_matrix(y, self.num_classes)
        with torch.no_grad():
            m0 = float((C[0] @ self.model(x)[0]).min())
        if m0 <= 0:
            return RadiusResult(0.0, 0.0, 0, time.perf_counter() - start, ((0.0, m0),), self.covers)
        if not (guess and guess > 0):
            ratios = sorted(self.search_ratios)
            guess = 1.25 * m0 * ratios[len(ratios) // 2] if ratios else eps_max / 8
        res = search_radius(self.bounds, x, C, m0, eps_max, guess, rtol, atol, max_evals, self.covers)
        if 0 < res.radius and math.isfinite(res.upper) and res.evaluations:
            self.search_ratios.append(res.radius / m0)
        return dataclasses.replace(res, seconds=time.perf_counter() - start)


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
