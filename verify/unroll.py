"""Unroll an ODE-net's solver into a static network that bound propagation can trace.

An explicit Runge–Kutta step of a conv–ReLU–conv field f(t, y) = W2 * relu(W1 * y + β1(t)) + β2(t)
with stages ``Y_i = y + h Σ_j a_ij k_j`` and ``y' = y + h Σ_i b_i k_i`` is rewritten as

    z_i  = relu(conv1(Y_i) + β1(t + c_i h))
    Y_i  = y + Σ_j conv[h·a_ij·W2](z_j) + h Σ_j a_ij β2(t + c_j h)
    y'   = y + Σ_i conv[h·b_i·W2](z_i)  + h Σ_i b_i β2(t + c_i h)

so every step coefficient lives inside a convolution weight (auto_LiRPA's memory-saving
``patches`` mode rejects multiplication by scalar constants) and every constant is a bias.
The time plane ``t·1`` of a :class:`~models.fields.ConcatConv2d` passes through a zero-padded
convolution and becomes a fixed per-position bias map ``t·P``; without a time channel the
biases are per-channel and fold into the convolutions' own biases.

An adaptive solver's step sequence changes inside an ε-ball, so no fixed graph is the
deployed model: :func:`unroll` refuses it unless asked for the *fixed-step surrogate*
(``fixed_steps=True``), which replays the steps accepted on one clean input, the last one
(which overshoots T) read from torchdiffeq's interpolant at T as the solver does (see
:mod:`verify._dense_output`). The :class:`Unrolled` record says which one it is and carries
the logit distance to the adaptive solve.

References:
    Butcher, "Numerical Methods for Ordinary Differential Equations", 2016.
    Xu et al., "Automatic Perturbation Analysis for Scalable Certified Robustness and
    Beyond", NeurIPS 2020.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lipbound.tableau import ButcherTableau, tableau_for_solver
from models.fields import ConcatConv2d, VectorField, VerifiableField
from models.lenet import MLP, LeNet5
from models.odenet import ODENet
from models.resnet import ResNet

from ._dense_output import dense_output_weights

#: what a certificate holds for: the model as it runs, or the fixed-step surrogate of an adaptive solve.
COVERS_DEPLOYED = "the deployed model"
COVERS_SURROGATE = "fixed-step surrogate, not the deployed solver"

#: layer types that pass into the static graph unchanged.
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.Linear, nn.ReLU, nn.Flatten, nn.AvgPool2d, nn.MaxPool2d, nn.Identity,
)


class UnsupportedLayerError(ValueError):
    """A layer (or model) the unroller cannot turn into a verifiable static graph."""


class AdaptiveSolverError(UnsupportedLayerError):
    """An adaptive solver, whose deployed step sequence no fixed graph reproduces on a whole ball."""


def is_adaptive(model: nn.Module) -> bool:
    """True for an ODE-net on an adaptive solver (no fixed graph is its deployed forward)."""
    solver = getattr(model, "solver", None)
    return solver is not None and not getattr(solver, "is_fixed", True)


def adaptive_refusal(solver: object) -> str:
    """The one-line reason an adaptive model is not certified (and what can be)."""
    describe = getattr(solver, "describe", None)
    name = describe() if callable(describe) else str(solver)
    return (f"{name} is an adaptive solver: its step sequence changes inside the perturbation ball, so a "
            "certificate of one step sequence says nothing about the deployed model; certify the fixed-step "
            "surrogate of the steps accepted on the clean input with fixed_steps=True (CLI: --fixed-steps), "
            "which covers that surrogate only")


@dataclasses.dataclass(frozen=True)
class Unrolled:
    """A static network equal to a model's forward pass, and how it was obtained.

    Attributes:
        module: the static ``nn.Module`` (logits out) for bound propagation.
        description: e.g. ``"rk4 4 fixed steps, T=1"``.
        steps: the (t0, dt, θ) sequence of the unrolled solver (empty for non-ODE models):
            each step from t0 of size dt, its output read at t0 + θ·dt (θ < 1 only for the
            interpolated last step of an adaptive solve).
        adaptive: True for the fixed-step surrogate of an adaptive solver (the steps it
            accepted on one input); a certificate then holds for that surrogate, not for
            the deployed adaptive solve.
        adaptive_distance: max |logits| difference between the adaptive solve and the
            unrolled graph on that input (None for fixed-step or non-ODE models).
        covers: :data:`COVERS_DEPLOYED` or :data:`COVERS_SURROGATE`.
    """

    module: nn.Module
    description: str
    steps: tuple[tuple[float, float, float], ...] = ()
    adaptive: bool = False
    adaptive_distance: float | None = None
    covers: str = COVERS_DEPLOYED


def _two(v: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _lirpa_unsupported(layer: nn.Module) -> str | None:
    """The option of ``layer`` auto_LiRPA 0.3 cannot bound soundly, or None.

    A non-zero padding mode is traced as an F.pad node it cannot bound (and a field conv's
    time plane is folded in assuming zero padding); a string padding ("same") exports without
    the pads its convolution reads (KeyError 'pads'); its pooling assumes no padding, no
    ceil_mode and count_include_pad; and the soundness campaign (benchmarks/soundness.py)
    beat its bounds through dilated or grouped convolutions and overlapping pooling windows.
    """
    if isinstance(layer, nn.Conv2d):
        if isinstance(layer.padding, str):  # exported without the "pads" its Conv node reads
            return f"padding={layer.padding!r} (give the padding as integers)"
        if layer.padding_mode != "zeros":
            return f"padding_mode={layer.padding_mode!r}"
        if _two(layer.dilation) != (1, 1) or layer.groups != 1:
            return f"dilation={layer.dilation}, groups={layer.groups}"
    if isinstance(layer, (nn.AvgPool2d, nn.MaxPool2d)):
        if any(_two(layer.padding)) or layer.ceil_mode:
            return f"padding={layer.padding}, ceil_mode={layer.ceil_mode}"
        if any(s < k for s, k in zip(_two(layer.stride or layer.kernel_size), _two(layer.kernel_size))):
            return f"kernel {layer.kernel_size}, stride {layer.stride}: overlapping windows"
    if isinstance(layer, nn.AvgPool2d) and (not layer.count_include_pad or layer.divisor_override):
        return f"count_include_pad={layer.count_include_pad}, divisor_override={layer.divisor_override}"
    if isinstance(layer, nn.MaxPool2d) and any(d != 1 for d in _two(layer.dilation)):
        return f"dilation={layer.dilation}"
    return None


def _check_options(layer: nn.Module, where: str) -> None:
    why = _lirpa_unsupported(layer)
    if why is not None:
        raise UnsupportedLayerError(
            f"cannot verify layer {where} ({type(layer).__name__}, {why}) with auto_LiRPA 0.3, which bounds it "
            "unsoundly or not at all; the dense CROWN engine (method crown, engine auto) handles every "
            "convolution and average pooling")


def _check_layers(seq: nn.Module, where: str) -> None:
    for name, layer in seq.named_children():
        if isinstance(layer, nn.Sequential):
            _check_layers(layer, f"{where}.{name}")
        elif not isinstance(layer, SUPPORTED_LAYERS):
            raise UnsupportedLayerError(
                f"cannot verify layer {where}.{name} ({type(layer).__name__}); supported layers: "
                + ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
            )
        else:
            _check_options(layer, f"{where}.{name}")


def _time_map(conv: ConcatConv2d, shape: tuple[int, int]) -> torch.Tensor | None:
    """P with conv([t·1, h]) = conv_h(h) + t·P: the time plane through the zero-padded conv."""
    if not conv.time_channel:
        return None
    w = conv.conv.weight[:, :1]
    ones = torch.ones(1, 1, *shape, dtype=w.dtype, device=w.device)
    return F.conv2d(ones, w, None, conv.conv.stride, conv.conv.padding)


def _scaled_conv(conv: ConcatConv2d, scale: float, bias: torch.Tensor | None) -> nn.Conv2d:
    """A plain conv of h with weights ``scale·W_h`` and the given per-channel bias (or none)."""
    src = conv.conv
    w = src.weight[:, int(conv.time_channel):] * scale
    out = nn.Conv2d(w.shape[1], w.shape[0], src.kernel_size, src.stride, src.padding, bias=bias is not None)
    out.weight.data.copy_(w.detach())
    if bias is not None:
        out.bias.data.copy_(bias.detach())
    return out.to(w.device)


class _BiasMap(nn.Module):
    """Adds a fixed per-position bias map (1, C, H, W).

    A buffer: auto_LiRPA 0.3 bounds an added parameter as a perturbable root and fails
    (an assertion in its broadcast of the bound matrix) where it adds a buffer as a constant.
    """

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bias", bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class _Affine(nn.Module):
    """``y + Σ_j convs[j](z[src[j]]) (+ bias map)``: a stage input or a step output."""

    def __init__(self, convs: Sequence[nn.Conv2d], sources: Sequence[int], bias: nn.Module | None) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.sources = tuple(sources)
        self.bias = bias

    def forward(self, y: torch.Tensor, zs: list[torch.Tensor]) -> torch.Tensor:
        for conv, j in zip(self.convs, self.sources):
            y = y + conv(zs[j])
        return y if self.bias is None else self.bias(y)


class _RKStep(nn.Module):
    """One explicit Runge–Kutta step of a conv–ReLU–conv field, coefficients folded into weights."""

    def __init__(self, field: VerifiableField, tab: ButcherTableau, t0: float, dt: float,
                 shape: tuple[int, int], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        a, c = tab.a_float, tab.c_float
        b = tuple(weights) if weights is not None else tab.b_float  # output row (dense output: w(θ))
        s = len(b)
        # Stages no later stage or the output uses are dropped (e.g. dopri5's FSAL stage).
        needed = [b[i] != 0.0 or any(a[k][i] != 0.0 for k in range(i + 1, s)) for i in range(s)]
        p1, p2 = _time_map(field.conv1, shape), _time_map(field.conv2, shape)
        b1, b2 = field.conv1.conv.bias, field.conv2.conv.bias
        self.stage_in = nn.ModuleList()
        self.stage_conv = nn.ModuleList()
        self.stages: list[int] = []
        for i in range(s):
            if not needed[i]:
                continue
            self.stages.append(i)
            self.stage_in.append(self._affine(field, [a[i][j] * dt for j in range(i)], b2, p2, t0, c, dt))
            ti = t0 + c[i] * dt
            if p1 is None:
                self.stage_conv.append(nn.Sequential(_scaled_conv(field.conv1, 1.0, b1), nn.ReLU()))
            else:
                bias = b1.detach().view(1, -1, 1, 1) + ti * p1
                self.stage_conv.append(nn.Sequential(_scaled_conv(field.conv1, 1.0, None), _BiasMap(bias), nn.ReLU()))
        self.out = self._affine(field, [b[i] * dt for i in range(s)], b2, p2, t0, c, dt)

    def _affine(self, field: VerifiableField, coef: Sequence[float], b2: torch.Tensor,
                p2: torch.Tensor | None, t0: float, c: Sequence[float], dt: float) -> _Affine:
        """Σ_j conv[coef_j·W2](z_j) + Σ_j coef_j β2(t0 + c_j dt), over stages with coef_j ≠ 0."""
        terms = [j for j, v in enumerate(coef) if v != 0.0]
        if not terms:
            return _Affine([], [], None)
        bias_ch = b2.detach() * sum(coef[j] for j in terms)
        convs = [_scaled_conv(field.conv2, coef[j], bias_ch if (p2 is None and k == 0) else None)
                 for k, j in enumerate(terms)]
        bias_map = None
        if p2 is not None:
            m = bias_ch.view(1, -1, 1, 1) + sum(coef[j] * (t0 + c[j] * dt) for j in terms) * p2
            bias_map = _BiasMap(m)
        return _Affine(convs, terms, bias_map)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        zs: list[torch.Tensor] = [y] * (max(self.stages) + 1)
        for i, stage_in, conv in zip(self.stages, self.stage_in, self.stage_conv):
            zs[i] = conv(stage_in(y, zs))
        return self.out(y, zs)


class StaticNet(nn.Module):
    """stem -> unrolled solver steps -> head, as one traceable module (logits out)."""

    def __init__(self, stem: nn.Module, steps: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.steps = nn.ModuleList(steps)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for step in self.steps:
            h = step(h)
        return self.head(h)


def _check_field(field: VectorField, where: str) -> VerifiableField:
    if not isinstance(field, VerifiableField):
        bad = next((f"{where}.{n} ({type(m).__name__})" for n, m in field.named_modules()
                    if n and not isinstance(m, (ConcatConv2d, *SUPPORTED_LAYERS))), None)
        raise UnsupportedLayerError(
            f"cannot verify vector field {where} ({type(field).__name__})"
            + (f": unsupported layer {bad}" if bad else "") + "; only the conv-ReLU-conv VerifiableField unrolls"
        )
    for name, conv in (("conv1", field.conv1), ("conv2", field.conv2)):
        _check_options(conv.conv, f"{where}.{name}")
    return field


def _state_shape(model: nn.Module, stem: nn.Module) -> tuple[int, int]:
    p = next(model.parameters())
    x = torch.zeros(1, *model.input_shape, dtype=p.dtype, device=p.device)
    with torch.no_grad():
        return tuple(stem(x).shape[2:])  # type: ignore[return-value]


def accepted_steps(model: ODENet, x: torch.Tensor) -> list[tuple[float, float, float]]:
    """(t0, dt, θ) of the steps an adaptive solve of one input accepted, θ = 1 but for the last.

    torchdiffeq steps until a step ends at or beyond T and reads y(T) from that step's
    interpolant at θ = (T − t0)/dt, so the last step keeps its size and carries θ.
    """
    block = model.block
    block.record_steps = True
    try:
        with torch.no_grad():
            model(x)
        steps = list(block.accepted_steps)
    finally:
        block.record_steps = False
    T = model.solver.T
    out: list[tuple[float, float, float]] = []
    for t0, dt in steps:
        t1 = t0 + dt
        out.append((t0, dt, 1.0 if t1 <= T else (T - t0) / (t1 - t0)))
        if t1 >= T:
            break
    return out


def rk_steps(field: VerifiableField, method: str, steps: Sequence[tuple[float, ...]], shape: tuple[int, int]
             ) -> list[_RKStep]:
    """One :class:`_RKStep` per (t0, dt[, θ]) step, θ < 1 read from the interpolant."""
    tab = tableau_for_solver(method)
    out = []
    for step in steps:
        t0, dt = step[0], step[1]
        theta = step[2] if len(step) > 2 else 1.0
        weights = dense_output_weights(method, tab, theta) if theta != 1.0 else None
        out.append(_RKStep(field, tab, t0, dt, shape, weights))
    return out


def surrogate_description(solver: object, n_steps: int) -> str:
    """How a fixed-step surrogate of an adaptive solve was built (it names what it covers)."""
    describe = getattr(solver, "describe", None)
    name = describe() if callable(describe) else str(solver)
    return (f"{COVERS_SURROGATE}: {name}, the {n_steps} steps accepted on the clean input replayed, "
            "the last read from the solver's interpolant at T")


def unroll(model: nn.Module, x: torch.Tensor | None = None, fixed_steps: bool = False) -> Unrolled:
    """A static, traceable network computing the same logits as ``model``.

    Args:
        model: an :class:`~models.odenet.ODENet` with the verifiable field, a
            :class:`~models.resnet.ResNet` with verifiable fields, a
            :class:`~models.lenet.LeNet5`, an :class:`~models.lenet.MLP`, or an
            ``nn.Sequential`` of supported layers.
        x: one clean input (1, C, H, W); required for the surrogate of an adaptive solver,
            whose accepted step sequence on ``x`` is unrolled.
        fixed_steps: for an adaptive solver, unroll its fixed-step surrogate (otherwise refused).

    Returns:
        the :class:`Unrolled` network and its description.

    Raises:
        AdaptiveSolverError: an adaptive solver without ``fixed_steps``.
        UnsupportedLayerError: a layer or model type that cannot be unrolled, named.
        ValueError: the surrogate of an adaptive solver without a single input ``x``.
    """
    if isinstance(model, ODENet):
        _check_layers(model.stem, "stem")
        _check_layers(model.head, "head")
        field = _check_field(model.block.field, "block.field")
        shape = _state_shape(model, model.stem)
        solver = model.solver
        if solver.is_fixed:
            n, dt = solver.n_steps, solver.T / solver.n_steps
            steps = [(k * dt, dt, 1.0) for k in range(n)]
            body = rk_steps(field, solver.method, steps, shape)
            return Unrolled(StaticNet(model.stem, body, model.head), f"{solver.method} {n} fixed steps, T={solver.T:g}",
                            tuple(steps))
        if not fixed_steps:
            raise AdaptiveSolverError(adaptive_refusal(solver))
        if x is None or x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(
                f"adaptive solver {solver.describe()}: its fixed-step surrogate needs one clean input x of shape "
                "(1, C, H, W)"
            )
        steps = accepted_steps(model, x)
        net = StaticNet(model.stem, rk_steps(field, solver.method, steps, shape), model.head).eval()
        with torch.no_grad():
            dist = float((net(x) - model(x)).abs().max())
        return Unrolled(net, surrogate_description(solver, len(steps)), tuple(steps), True, dist, COVERS_SURROGATE)
    if isinstance(model, ResNet):
        _check_layers(model.stem, "stem")
        _check_layers(model.head, "head")
        shape = _state_shape(model, model.stem)
        euler = tableau_for_solver("euler")
        body = []
        for k in range(model.n_blocks):
            field = _check_field(model.block_field(k), f"fields.{0 if model.tied else k}")
            body.append(_RKStep(field, euler, k * model.step, model.step, shape))
        steps = tuple((k * model.step, model.step, 1.0) for k in range(model.n_blocks))
        return Unrolled(StaticNet(model.stem, body, model.head), f"resnet {model.n_blocks} blocks, step {model.step:g}", steps)
    if isinstance(model, LeNet5):
        _check_layers(model.features, "features")
        _check_layers(model.classifier, "classifier")
        return Unrolled(nn.Sequential(model.features, model.classifier), "lenet5")
    if isinstance(model, MLP):
        _check_layers(model.net, "net")
        return Unrolled(model.net, "mlp")
    if isinstance(model, nn.Sequential):
        _check_layers(model, "model")
        return Unrolled(model, "sequential")
    raise UnsupportedLayerError(
        f"cannot verify model type {type(model).__name__}; supported: ODENet, ResNet, LeNet5, MLP, nn.Sequential"
    )
