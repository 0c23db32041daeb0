"""The static module auto_LiRPA traces, built from the lowered IR (:mod:`verify._lower`).

An explicit Runge–Kutta step of a field chain f(t, y) = L(... relu(W1 * y + β1(t)) ...) whose last
op is an affine map L(z) = W_L z + β_L(t), with stages ``Y_i = y + h Σ_j a_ij k_j`` and
``y' = y + h Σ_i b_i k_i``, is rewritten as

    z_i  = (the chain without its last op)(Y_i)
    Y_i  = y + Σ_j [h·a_ij·W_L](z_j) + h Σ_j a_ij β_L(t + c_j h)
    y'   = y + Σ_i [h·b_i·W_L](z_i)  + h Σ_i b_i β_L(t + c_i h)

so every step coefficient lives inside a convolution (or linear) weight (auto_LiRPA's
memory-saving ``patches`` mode rejects multiplication by scalar constants) and every constant
is a bias; a chain that ends with a ReLU or a pooling scales k_j by a 1x1 convolution. The time
plane ``t·1`` of a :class:`~models.fields.ConcatConv2d` passes through a zero-padded convolution
and becomes a fixed per-position bias map ``t·P``; without a time channel the biases are
per-channel and fold into the convolutions' own biases.

auto_LiRPA 0.3 bounds some layer options unsoundly or not at all; :func:`static_module`
refuses them, naming the layer (the dense CROWN engine handles them).

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

from models.fields import ConcatConv2d

from ._lower import COVERS_DEPLOYED as COVERS_DEPLOYED
from ._lower import COVERS_SURROGATE as COVERS_SURROGATE
from ._lower import SUPPORTED_LAYERS as SUPPORTED_LAYERS
from ._lower import AdaptiveSolverError as AdaptiveSolverError
from ._lower import Flow, Layers, Lowered, Op, Step, lower
from ._lower import UnsupportedLayerError as UnsupportedLayerError
from ._lower import adaptive_refusal as adaptive_refusal
from ._lower import is_adaptive as is_adaptive
from ._lower import surrogate_description as surrogate_description


@dataclasses.dataclass(frozen=True)
class Unrolled:
    """A static network equal to a model's forward pass, and how it was obtained.

    Attributes:
        module: the static ``nn.Module`` (logits out) for bound propagation.
        description: e.g. ``"rk4 4 steps, T=1"``.
        steps: the (t0, dt, θ) sequence of the unrolled solver (empty for models without an
            ODE block): each step from t0 of size dt, its output read at t0 + θ·dt (θ < 1
            only for the interpolated last step of an adaptive solve).
        adaptive: True for the fixed-step surrogate of an adaptive solver.
        adaptive_distance: max |logits| difference between the adaptive solve and the
            surrogate on its clean input (None otherwise).
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


def _time_map(conv: ConcatConv2d, shape: tuple[int, int]) -> torch.Tensor | None:
    """P with conv([t·1, h]) = conv_h(h) + t·P: the time plane through the zero-padded conv."""
    if not conv.time_channel:
        return None
    w = conv.conv.weight[:, :1]
    ones = torch.ones(1, 1, *shape, dtype=w.dtype, device=w.device)
    return F.conv2d(ones, w, None, conv.conv.stride, conv.conv.padding)


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


def _affine_op(op: nn.Module) -> bool:
    return isinstance(op, (ConcatConv2d, nn.Conv2d, nn.Linear))


def _scaled(op: nn.Module, scale: float, bias: torch.Tensor | None) -> nn.Module:
    """A copy of an affine op acting on the state alone (a time channel's weights dropped), its
    weights times ``scale`` and the given bias (or none)."""
    if isinstance(op, nn.Linear):
        out: nn.Module = nn.Linear(op.in_features, op.out_features, bias=bias is not None)
        w = op.weight * scale
    else:
        src = op.conv if isinstance(op, ConcatConv2d) else op
        w = src.weight[:, int(getattr(op, "time_channel", False)):] * scale
        out = nn.Conv2d(w.shape[1], w.shape[0], src.kernel_size, src.stride, src.padding, bias=bias is not None)
    out.weight.data.copy_(w.detach())
    if bias is not None:
        out.bias.data.copy_(bias.detach())
    return out.to(w.device)


def _own_bias(op: nn.Module) -> torch.Tensor:
    src = op.conv if isinstance(op, ConcatConv2d) else op
    if src.bias is not None:
        return src.bias.detach()
    return torch.zeros(src.weight.shape[0], dtype=src.weight.dtype, device=src.weight.device)


def _at_time(op: nn.Module, t: float, shape: tuple[int, ...]) -> nn.Module:
    """A field op with the time fixed at t, for inputs of ``shape`` (C, H, W)."""
    if not isinstance(op, ConcatConv2d):
        return op
    p = _time_map(op, tuple(shape[1:]))
    if p is None:
        return _scaled(op, 1.0, _own_bias(op))
    return nn.Sequential(_scaled(op, 1.0, None), _BiasMap(_own_bias(op).view(1, -1, 1, 1) + t * p))


def _shapes(ops: Sequence[Op], h: torch.Tensor) -> list[tuple[int, ...]]:
    """Input shape (C, H, W) of every op of a field chain on states like ``h``, the output's last."""
    out = [tuple(h.shape[1:])]
    h = torch.zeros_like(h[:1])
    with torch.no_grad():
        for _, op in ops:
            h = op(torch.zeros((), dtype=h.dtype, device=h.device), h) if isinstance(op, ConcatConv2d) else op(h)
            out.append(tuple(h.shape[1:]))
    return out


class _Scale(nn.Module):
    """``coef · z`` as a 1x1 convolution (images) or a diagonal linear map (vectors): auto_LiRPA's
    patches mode takes no multiplication by a scalar constant."""

    def __init__(self, coef: float, shape: tuple[int, ...], like: torch.Tensor) -> None:
        super().__init__()
        c = shape[0]
        eye = torch.eye(c, dtype=like.dtype, device=like.device) * coef
        self.map: nn.Module = (nn.Conv2d(c, c, 1, bias=False) if len(shape) == 3 else nn.Linear(c, c, bias=False))
        self.map.weight.data.copy_(eye.view(c, c, 1, 1) if len(shape) == 3 else eye)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.map(z)


class _RKStep(nn.Module):
    """One explicit Runge–Kutta step of a field chain, coefficients folded into weights."""

    def __init__(self, flow: Flow, step: Step, state: torch.Tensor) -> None:
        super().__init__()
        a, c, dt = flow.tableau.a_float, flow.tableau.c_float, step.dt
        b = flow.output_row(step)
        ops = list(step.field)
        shapes = _shapes(ops, state)
        self._last = ops[-1][1] if _affine_op(ops[-1][1]) else None
        pre = ops[:-1] if self._last is not None else ops
        self._z_shape = shapes[len(pre)]
        self._like = state
        self.stages: list[int] = []
        self.stage_in = nn.ModuleList()
        self.stage_body = nn.ModuleList()
        for i, use in enumerate(flow.needed(b)):
            if not use:
                continue
            self.stages.append(i)
            self.stage_in.append(self._combine([dt * a[i][j] for j in range(i)], step.t0, c, dt))
            ti = step.t0 + c[i] * dt
            self.stage_body.append(nn.Sequential(*(_at_time(op, ti, shapes[k]) for k, (_, op) in enumerate(pre))))
        self.out = self._combine([dt * bi for bi in b], step.t0, c, dt)

    def _combine(self, coef: Sequence[float], t0: float, c: Sequence[float], dt: float) -> _Affine:
        """y + Σ_j coef_j k_j with k_j = last(z_j): the coefficients inside copies of the last op."""
        terms = [j for j, v in enumerate(coef) if v != 0.0]
        if not terms:
            return _Affine([], [], None)
        if self._last is None:
            return _Affine([_Scale(coef[j], self._z_shape, self._like) for j in terms], terms, None)
        total = sum(coef[j] for j in terms)
        p = _time_map(self._last, tuple(self._z_shape[1:])) if isinstance(self._last, ConcatConv2d) else None
        bias = _own_bias(self._last) * total
        maps = [_scaled(self._last, coef[j], bias if (p is None and k == 0) else None) for k, j in enumerate(terms)]
        bias_map = None
        if p is not None:
            bias_map = _BiasMap(bias.view(1, -1, 1, 1) + sum(coef[j] * (t0 + c[j] * dt) for j in terms) * p)
        return _Affine(maps, terms, bias_map)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        zs: list[torch.Tensor] = [y] * (max(self.stages) + 1)
        for i, stage_in, body in zip(self.stages, self.stage_in, self.stage_body):
            zs[i] = body(stage_in(y, zs))
        return self.out(y, zs)


class StaticNet(nn.Module):
    """stem -> unrolled solver steps -> head, as one traceable module (logits out).

    ``stem`` holds the layers before the first ODE block, ``steps`` its steps (and, for a
    chain of several blocks, the later blocks' steps with the layers between them), ``head``
    the layers after the last block.
    """

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


def _check_ops(ops: Sequence[Op]) -> None:
    for where, op in ops:
        _check_options(op.conv if isinstance(op, ConcatConv2d) else op, where)


def static_module(ir: Lowered) -> nn.Module:
    """The IR as one traceable module for auto_LiRPA.

    Raises:
        UnsupportedLayerError: a layer option auto_LiRPA 0.3 bounds unsoundly or not at all.
    """
    modules: list[nn.Module] = []
    first_flow = next((k for k, p in enumerate(ir.parts) if isinstance(p, Flow)), None)
    h = torch.zeros(1, *ir.input_shape, dtype=ir.dtype, device=ir.device)
    for part in ir.parts:
        if isinstance(part, Layers):
            _check_ops(part.ops)
            modules.append(nn.Sequential(*(op for _, op in part.ops)))
            with torch.no_grad():
                h = modules[-1](h)
        else:
            for step in part.steps:
                _check_ops(step.field)
                modules.append(_RKStep(part, step, h))
    if first_flow is None:
        return nn.Sequential(*modules)
    last_flow = max(k for k, p in enumerate(ir.parts) if isinstance(p, Flow))
    n_pre = 1 if first_flow == 1 else 0
    n_post = 1 if last_flow == len(ir.parts) - 2 else 0
    stem = modules[0] if n_pre else nn.Identity()
    head = modules[-1] if n_post else nn.Identity()
    return StaticNet(stem, modules[n_pre:len(modules) - n_post], head)


def unroll(model: nn.Module, x: torch.Tensor | None = None, fixed_steps: bool = False) -> Unrolled:
    """A static, traceable network computing the same logits as ``model``.

    Args:
        model: a model :func:`verify._lower.lower` accepts (chains of supported layers and
            ODE blocks, ResNets), in eval mode.
        x: one clean input (1, C, H, W); required for the surrogate of an adaptive solver.
        fixed_steps: for an adaptive solver, unroll its fixed-step surrogate (otherwise refused).

    Raises:
        AdaptiveSolverError: an adaptive solver without ``fixed_steps``.
        UnsupportedLayerError: a layer or model type that cannot be unrolled, named.
        ValueError: the surrogate of an adaptive solver without a single input ``x``.
    """
    return unrolled(lower(model, x, fixed_steps))


def unrolled(ir: Lowered) -> Unrolled:
    """The :class:`Unrolled` record of an IR."""
    return Unrolled(static_module(ir), ir.description, ir.steps, ir.adaptive, ir.adaptive_distance, ir.covers)
