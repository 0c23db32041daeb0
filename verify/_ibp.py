"""Differentiable interval bound propagation (IBP) through the verification IR.

Every bound is a pair ``(lo, hi)`` of tensors of the layer's shape, computed with ordinary
differentiable torch operations on the IR's live modules, so a loss of the bounds trains the
model (Gowal et al. 2018). An affine op maps the box by its centre and radius
(``W c + b``, ``|W| r``); ReLU, max-pooling, average-pooling and flatten are monotone and map
the two corners. A time-channel convolution (:class:`models.ConcatConv2d`) gets the constant
time plane on both corners (radius 0), which folds the time into the bias. A Runge–Kutta
stage ``y + Σ_j dt·a_ij·k_j`` is bounded as the sum of the intervals of its terms (each
coefficient's sign decides which corner it takes), exactly as IBP on the unrolled graph does.

The margins ``f_y − f_j`` are bounded with the last linear layer merged into the
specification (``C W``, ``C b``), the "elision" of Gowal et al. that auto_LiRPA's IBP applies
too, so the bound equals :func:`verify.certify` with ``method="ibp"``.

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", 2018.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.fields import ConcatConv2d

from ._lower import Flow, Layers, Lowered, Op, Step, UnsupportedLayerError
from ._spec import spec_matrix

Box = tuple[torch.Tensor, torch.Tensor]


def input_box(x: torch.Tensor, eps: float | torch.Tensor) -> Box:
    """The L∞ ball of radius ``eps`` around ``x`` intersected with [0, 1].

    Args:
        x: (N, C, H, W) inputs in [0, 1].
        eps: a radius, or (N,) radii.
    """
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if e.dim() == 1:
        e = e.view(-1, *([1] * (x.dim() - 1)))
    return (x - e).clamp(0.0, 1.0), (x + e).clamp(0.0, 1.0)


def _affine(box: Box, weight_fn: Callable[[torch.Tensor], torch.Tensor],
            abs_fn: Callable[[torch.Tensor], torch.Tensor]) -> Box:
    """Centre/radius form of an affine map: (W c + b) ∓ |W| r."""
    lo, hi = box
    c, r = (hi + lo) / 2, (hi - lo) / 2
    mid, rad = weight_fn(c), abs_fn(r)
    return mid - rad, mid + rad


def _conv(conv: nn.Conv2d, box: Box) -> Box:
    def w(z: torch.Tensor) -> torch.Tensor:
        return conv(z)

    def a(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, conv.weight.abs(), None, conv.stride, conv.padding, conv.dilation, conv.groups)

    return _affine(box, w, a)


def _linear(lin: nn.Linear, box: Box) -> Box:
    return _affine(box, lin, lambda z: F.linear(z, lin.weight.abs()))


def op_box(op: nn.Module, box: Box, t: float | None = None) -> Box:
    """The interval image of one supported op (a field's ConcatConv2d at time ``t``).

    Raises:
        UnsupportedLayerError: an op IBP does not bound.
    """
    lo, hi = box
    if isinstance(op, ConcatConv2d):
        if op.time_channel:
            plane = torch.full_like(lo[:, :1], float(t if t is not None else 0.0))
            lo, hi = torch.cat([plane, lo], 1), torch.cat([plane, hi], 1)
        return _conv(op.conv, (lo, hi))
    if isinstance(op, nn.Conv2d):
        return _conv(op, box)
    if isinstance(op, nn.Linear):
        return _linear(op, box)
    if isinstance(op, (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Identity)):
        return op(lo), op(hi)  # monotone (average pooling: non-negative weights)
    raise UnsupportedLayerError(f"interval propagation has no rule for {type(op).__name__}")


def field_box(field: Sequence[Op], t: float, box: Box) -> Box:
    """Interval of f(t, h) over the box of h."""
    for _, op in field:
        box = op_box(op, box, t)
    return box


def interval_sum(base: Box, terms: Sequence[tuple[float, Box]]) -> Box:
    """Interval of ``base + Σ c·k`` for intervals k and constants c."""
    lo, hi = base
    for c, (klo, khi) in terms:
        if c >= 0:
            lo, hi = lo + c * klo, hi + c * khi
        else:
            lo, hi = lo + c * khi, hi + c * klo
    return lo, hi


def step_box(flow: Flow, step: Step, box: Box) -> Box:
    """Interval of one Runge–Kutta step of ``flow`` (any explicit tableau, any θ), as
    :meth:`verify._lower.Flow.step` computes the step itself."""
    a, c = flow.tableau.a_float, flow.tableau.c_float
    b = flow.output_row(step)
    ks: dict[int, Box] = {}
    for i, use in enumerate(flow.needed(b)):
        if use:
            yi = interval_sum(box, [(step.dt * a[i][j], ks[j]) for j in range(i) if a[i][j] != 0.0])
            ks[i] = field_box(step.field, step.t0 + c[i] * step.dt, yi)
    return interval_sum(box, [(step.dt * b[i], ks[i]) for i in ks if b[i] != 0.0])


def part_box(part: Layers | Flow, box: Box) -> Box:
    """Interval image of one IR part."""
    if isinstance(part, Layers):
        for _, op in part.ops:
            box = op_box(op, box)
        return box
    for step in part.steps:
        box = step_box(part, step, box)
    return box


def split_last_linear(ir: Lowered) -> tuple[list[Layers | Flow], nn.Linear | None]:
    """The IR's parts without its final Linear op (returned apart), or all parts and None."""
    parts = list(ir.parts)
    last = parts[-1] if parts else None
    if isinstance(last, Layers) and isinstance(last.ops[-1][1], nn.Linear):
        rest = last.ops[:-1]
        parts = parts[:-1] + ([Layers(rest)] if rest else [])
        return parts, last.ops[-1][1]
    return parts, None


def spec_box(lin: nn.Linear | None, box: Box, C: torch.Tensor) -> Box:
    """Interval of ``C · lin(h)`` (``C · h`` without a linear layer) over the box of h: the last
    layer merged into the specification."""
    lo, hi = box
    c, r = ((hi + lo) / 2).flatten(1), ((hi - lo) / 2).flatten(1)
    if lin is None:
        W, bias = C, torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device)
    else:
        W = C @ lin.weight  # (N, K-1, F)
        bias = C @ lin.bias if lin.bias is not None else torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device)
    mid = torch.einsum("nkf,nf->nk", W, c) + bias
    rad = torch.einsum("nkf,nf->nk", W.abs(), r)
    return mid - rad, mid + rad


def ibp_margins(ir: Lowered, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """IBP lower bounds (N, K-1) on f_y − f_j, j ≠ y, over the L∞ ball ∩ [0, 1]; differentiable
    in the model's parameters.

    Args:
        ir: the lowered model (its ops are the live modules).
        x: (N, C, H, W) inputs.
        y: (N,) labels.
        eps: L∞ radius (a float or (N,) radii).
    """
    parts, lin = split_last_linear(ir)
    box = input_box(x, eps)
    for part in parts:
        box = part_box(part, box)
    return spec_box(lin, box, spec_matrix(y, ir.num_classes, x.dtype))[0]

