"""The auto_LiRPA engine: IBP, CROWN, α-CROWN and the forward mode of auto_LiRPA 0.3 on the IR.

The IR becomes the static module of :mod:`verify.unroll` (which refuses the layer options
auto_LiRPA bounds unsoundly), traced once per batch shape on first use. Two more guards keep
its answers sound or clear: an L2 ball that reaches anything but a linear or convolution
node is refused (auto_LiRPA bounds it as the point x there), and a failure inside
auto_LiRPA's own code becomes one :class:`EngineError` naming it.

References:
    Xu et al., "Automatic Perturbation Analysis for Scalable Certified Robustness and
    Beyond", NeurIPS 2020.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ._errors import CertifyError, EngineError
from ._lirpa_compat import import_auto_lirpa, patches_safe
from ._lower import Lowered, UnsupportedLayerError
from .engines import Reference, _own
from .unroll import Unrolled, unrolled

#: auto_LiRPA's name of each method it computes.
LIRPA_METHODS: dict[str, str] = {"ibp": "IBP", "crown": "backward", "alpha-crown": "CROWN-Optimized",
                                 "forward": "forward"}

#: auto_LiRPA nodes that bound an ℓ2-perturbed input soundly (center ± ‖row‖₂·ε), and the
#: shape-only nodes that pass the input on unchanged.
_L2_INPUT_CONSUMERS: tuple[str, ...] = ("BoundLinear", "BoundConv")
_SHAPE_NODES: tuple[str, ...] = ("BoundFlatten", "BoundReshape")


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


def check_l2_input(bm: Any) -> None:
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


def default_bound_opts(method: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """auto_LiRPA options: ``{"conv_mode": "patches"}``, or for α-CROWN dense matrices and slopes.

    auto_LiRPA 0.3's α-CROWN fails in "patches" mode (an assertion through max-pooling,
    "'Patches' object has no attribute 'size'" on ResNets) and its sparse slope tensors fail
    to scatter back ("shape mismatch" in reconstruct_full_alpha) when a later call has another
    unstable set: dense matrices and dense slopes give the same bounds, and one traced module
    then serves every call (measured on `resnet`: the bound after three other calls equals a
    fresh module's to the last digit). The given options override these.
    """
    if method == "alpha-crown":
        return {"conv_mode": "matrix", "sparse_features_alpha": False, "sparse_spec_alpha": False, **(given or {})}
    return dict(given) if given is not None else {"conv_mode": "patches"}


class Lirpa:
    """One auto_LiRPA method on the IR, for batches of ``batch_size``.

    Raises (on first use):
        UnsupportedLayerError: a layer option auto_LiRPA 0.3 cannot bound soundly, named.
        CertifyError: an L2 ball through a non-affine input node.
        EngineError: auto_LiRPA failed inside its own code.
    """

    name = "auto_LiRPA"
    # auto_LiRPA 0.3 also bounds MaxPool with reference bounds, which loosens its CROWN bounds
    # below IBP's (LeNet-5: no radius at all): a search does not pass them on.
    search_reference = False

    def __init__(self, ir: Lowered, norm: str, method: str, batch_size: int = 1,
                 bound_opts: dict[str, Any] | None = None) -> None:
        if method not in LIRPA_METHODS:
            raise CertifyError(f"auto_LiRPA computes {', '.join(LIRPA_METHODS)}, not {method!r}")
        self.ir, self.norm, self.method, self.batch_size = ir, norm, method, batch_size
        self._default_opts = bound_opts is None
        self.bound_opts = default_bound_opts(method, bound_opts)
        self._unrolled: Unrolled | None = None
        self._bm: Any = None

    @property
    def unrolled(self) -> Unrolled:
        """The static module auto_LiRPA traces (built on first use)."""
        if self._unrolled is None:
            self._unrolled = unrolled(self.ir)
        return self._unrolled

    @property
    def bounded_module(self) -> Any:
        """The auto_LiRPA ``BoundedModule`` (traced on first use)."""
        if self._bm is None:
            lirpa = import_auto_lirpa()
            module = self.unrolled.module
            dummy = torch.zeros(self.batch_size, *self.ir.input_shape, dtype=self.ir.dtype, device=self.ir.device)
            if self._default_opts and not patches_safe(module):
                self.bound_opts = {**self.bound_opts, "conv_mode": "matrix"}
            with _in_auto_lirpa():
                bm = lirpa.BoundedModule(module, dummy, bound_opts=self.bound_opts, device=str(self.ir.device))
            if self.norm == "2":
                check_l2_input(bm)
            self._bm = bm
        return self._bm

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

    def margins(self, x: torch.Tensor, eps: torch.Tensor, C: torch.Tensor,
                reference: Reference | None = None, fixed_intermediate: bool = False) -> torch.Tensor:
        """Lower bounds (N, K') of ``C·f`` over the ball.

        Args:
            x, eps, C: the batch, its radii (N,) and the specification (N, K', K).
            reference: bounds of the same ball from another of this engine's calls (its CROWN, say),
                passed to auto_LiRPA as ``aux_reference_bounds`` (a node's bound is the tighter of the two).
            fixed_intermediate: also take the reference as the fixed intermediate bounds
                (``intermediate_layer_bounds``): α-CROWN then optimises the margins' slopes only.

        Raises:
            CertifyError: a batch of another size than traced; ``fixed_intermediate`` without a
                reference of this engine, or with node names this traced module lacks.
        """
        if x.shape[0] != self.batch_size:
            raise CertifyError(f"this certifier was traced for batches of {self.batch_size}, got {x.shape[0]}")
        kwargs: dict[str, Any] = {"C": C, "method": LIRPA_METHODS[self.method], "bound_upper": False}
        ref = _own(reference, self.name)
        bm = self.bounded_module
        if fixed_intermediate:
            missing = [k for k in (ref or {}) if k not in bm._modules]
            if not ref or missing:
                raise CertifyError("fixed intermediate bounds need a reference from this engine on the same "
                                   f"traced model (missing nodes: {missing[:3]})")
            kwargs["intermediate_layer_bounds"] = ref
        if ref:
            kwargs["aux_reference_bounds"] = ref
        grad = contextlib.nullcontext() if self.method == "alpha-crown" else torch.no_grad()
        with _in_auto_lirpa(), grad:
            lower, _ = bm.compute_bounds(x=(self._input(x, eps),), **kwargs)
        return lower.detach()

    def reference(self) -> Reference:
        out = {}
        for relu in self.bounded_module.relus:
            node = relu.inputs[0]
            if getattr(node, "lower", None) is not None:
                out[node.name] = (node.lower.detach().clone(), node.upper.detach().clone())
        return Reference(self.name, out)
