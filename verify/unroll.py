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

Adaptive solvers are unrolled along the step sequence they accepted on one clean input
(the last step clipped to end at T), which is what :func:`unroll` certifies then; the
:class:`Unrolled` record says so and carries the logit distance to the adaptive solve.

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

#: layer types that pass into the static graph unchanged.
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.Linear, nn.ReLU, nn.Flatten, nn.AvgPool2d, nn.MaxPool2d, nn.Identity,
)


class UnsupportedLayerError(ValueError):
    """A layer (or model) the unroller cannot turn into a verifiable static graph."""


@dataclasses.dataclass(frozen=True)
class Unrolled:
    """A static network equal to a model's forward pass, and how it was obtained.

    Attributes:
        module: the static ``nn.Module`` (logits out) for bound propagation.
        description: e.g. ``"rk4 4 fixed steps, T=1"``.
        steps: the (t0, dt) sequence of the unrolled solver (empty for non-ODE models).
        adaptive: True when the steps are those an adaptive solver accepted on one input;
            the certificate then holds for that fixed step sequence, not for the adaptive solve.
        adaptive_distance: max |logits| difference between the adaptive solve and the
            unrolled graph on that input (None for fixed-step or non-ODE models).
    """

    module: nn.Module
    description: str
    steps: tuple[tuple[float, float], ...] = ()
    adaptive: bool = False
    adaptive_distance: float | None = None


def _check_layers(seq: nn.Module, where: str) -> None:
    for name, layer in seq.named_children():
        if isinstance(layer, nn.Sequential):
            _check_layers(layer, f"{where}.{name}")
        elif not isinstance(layer, SUPPORTED_LAYERS):
            raise UnsupportedLayerError(
                f"cannot verify layer {where}.{name} ({type(layer).__name__}); supported layers: "
                + ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
            )


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
    """Adds a fixed per-position bias map (1, C, H, W)."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

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
                 shape: tuple[int, int]) -> None:
        super().__init__()
        a, b, c = tab.a_float, tab.b_float, tab.c_float
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
    return field


def _state_shape(model: nn.Module, stem: nn.Module) -> tuple[int, int]:
    p = next(model.parameters())
    x = torch.zeros(1, *model.input_shape, dtype=p.dtype, device=p.device)
    with torch.no_grad():
        return tuple(stem(x).shape[2:])  # type: ignore[return-value]


def _accepted_steps(model: ODENet, x: torch.Tensor) -> list[tuple[float, float]]:
    block = model.block
    block.record_steps = True
    try:
        with torch.no_grad():
            model(x)
        steps = list(block.accepted_steps)
    finally:
        block.record_steps = False
    T = model.solver.T
    out = []
    for t0, dt in steps:
        if t0 >= T - 1e-12:
            break
        out.append((t0, min(dt, T - t0)))
    return out


def unroll(model: nn.Module, x: torch.Tensor | None = None) -> Unrolled:
    """A static, traceable network computing the same logits as ``model``.

    Args:
        model: an :class:`~models.odenet.ODENet` with the verifiable field (fixed-step or
            adaptive solver), a :class:`~models.resnet.ResNet` with verifiable fields, a
            :class:`~models.lenet.LeNet5`, an :class:`~models.lenet.MLP`, or an
            ``nn.Sequential`` of supported layers.
        x: one clean input (1, C, H, W); required for adaptive solvers, whose accepted
            step sequence on ``x`` is unrolled.

    Returns:
        the :class:`Unrolled` network and its description.

    Raises:
        UnsupportedLayerError: a layer or model type that cannot be unrolled, named.
        ValueError: an adaptive solver without a single input ``x``.
    """
    if isinstance(model, ODENet):
        _check_layers(model.stem, "stem")
        _check_layers(model.head, "head")
        field = _check_field(model.block.field, "block.field")
        shape = _state_shape(model, model.stem)
        solver = model.solver
        tab = tableau_for_solver(solver.method)
        if solver.is_fixed:
            n, dt = solver.n_steps, solver.T / solver.n_steps
            steps = [(k * dt, dt) for k in range(n)]
            body = [_RKStep(field, tab, t0, h, shape) for t0, h in steps]
            return Unrolled(StaticNet(model.stem, body, model.head), f"{solver.method} {n} fixed steps, T={solver.T:g}",
                            tuple(steps))
        if x is None or x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(
                f"adaptive solver {solver.describe()}: unrolling needs one clean input x of shape (1, C, H, W)"
            )
        steps = _accepted_steps(model, x)
        body = [_RKStep(field, tab, t0, h, shape) for t0, h in steps]
        net = StaticNet(model.stem, body, model.head).eval()
        with torch.no_grad():
            dist = float((net(x) - model(x)).abs().max())
        return Unrolled(net, f"{solver.describe()}: the {len(steps)} steps accepted on the clean input, "
                        "unrolled (certificate holds for this fixed step sequence)", tuple(steps), True, dist)
    if isinstance(model, ResNet):
        _check_layers(model.stem, "stem")
        _check_layers(model.head, "head")
        shape = _state_shape(model, model.stem)
        euler = tableau_for_solver("euler")
        body = []
        for k in range(model.n_blocks):
            field = _check_field(model.block_field(k), f"fields.{0 if model.tied else k}")
            body.append(_RKStep(field, euler, k * model.step, model.step, shape))
        steps = tuple((k * model.step, model.step) for k in range(model.n_blocks))
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
