"""CROWN-IBP margin bounds through the IR: IBP forward, one CROWN backward pass from the margins.

Zhang et al. (2020) bound every intermediate layer with IBP and the output with one CROWN
backward pass from the specification down to the input. Here the backward pass runs through
the IR's layers and through every Runge–Kutta stage of every flow step
(``y' = y + Σ_i dt·b_i·k_i``, ``k_i = f(t_i, y_i)``, ``y_i = y + Σ_j dt·a_ij·k_j``: the
coefficient of each stage is accumulated in reverse stage order), with the IBP boxes of the
forward pass as pre-activation bounds of every ReLU. Each ReLU is relaxed as in CROWN-IBP:
the upper line through (l, 0) and (u, u), the lower slope 1 where u > −l and 0 elsewhere.
An affine op is transposed by a vector–Jacobian product at 0 (its constant term, which holds a
time plane's contribution and the bias, is ⟨A, op(0)⟩), with ``create_graph`` so that the
bound stays differentiable in the weights.

Max-pooling has no linear relaxation here: the backward pass stops after the last max-pool
layer and is concretised on its IBP box there (LeNet-5: the CROWN pass covers the dense
layers). The bound is sound either way: a linear bound concretised on a box that contains
its inputs.

References:
    Zhang et al., "Towards Stable and Efficient Training of Verifiably Robust Neural
    Networks", ICLR 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.fields import ConcatConv2d

from ._ibp import Box, interval_sum, input_box, op_box
from ._lower import Flow, Layers, Lowered, Op, Step, UnsupportedLayerError
from ._spec import spec_matrix
from .crown import relu_relaxation

Linear = tuple[torch.Tensor, torch.Tensor]  # (A: (N, S, *shape), bias: (N, S))


def split_at_maxpool(ir: Lowered) -> tuple[list, list]:
    """(parts up to and including the last max-pool layer, the rest) of the IR."""
    parts = list(ir.parts)
    for k in range(len(parts) - 1, -1, -1):
        p = parts[k]
        if isinstance(p, Layers):
            idx = [i for i, (_, op) in enumerate(p.ops) if isinstance(op, nn.MaxPool2d)]
            if idx:
                i = idx[-1] + 1
                head = parts[:k] + [Layers(p.ops[:i])]
                rest = ([Layers(p.ops[i:])] if i < len(p.ops) else []) + parts[k + 1:]
                return head, rest
    return [], parts


# ---- forward: IBP boxes in front of every op -----------------------------------------------------
def ops_forward(ops: Sequence[Op], box: Box, t: float | None, rec: list[Box]) -> Box:
    for _, op in ops:
        rec.append(box)
        box = op_box(op, box, t)
    return box


def _step_forward(flow: Flow, step: Step, box: Box) -> tuple[Box, dict[int, list[Box]]]:
    a, c = flow.tableau.a_float, flow.tableau.c_float
    b = flow.output_row(step)
    ks: dict[int, Box] = {}
    recs: dict[int, list[Box]] = {}
    for i, use in enumerate(flow.needed(b)):
        if use:
            yi = interval_sum(box, [(step.dt * a[i][j], ks[j]) for j in range(i) if a[i][j] != 0.0])
            recs[i] = []
            ks[i] = ops_forward(step.field, yi, step.t0 + c[i] * step.dt, recs[i])
    return interval_sum(box, [(step.dt * b[i], ks[i]) for i in ks if b[i] != 0.0]), recs


# ---- backward: the linear bound A·h + bias of the margins, pushed towards the input ------------
def _op_back(op: nn.Module, lin: Linear, pre: Box, t: float | None) -> Linear:
    A, bias = lin
    n, s = A.shape[:2]
    shape = pre[0].shape[1:]
    if isinstance(op, nn.ReLU):
        r = relu_relaxation(*pre)  # the dense CROWN engine's relaxation, differentiable in the bounds
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        bias = bias + (neg * r.upper_b.unsqueeze(1)).flatten(2).sum(2)
        return pos * r.lower_d.unsqueeze(1) + neg * (r.lower_d + r.gap).unsqueeze(1), bias
    if isinstance(op, (nn.Flatten, nn.Identity)):
        return A.reshape(n, s, *shape), bias
    if not isinstance(op, (ConcatConv2d, nn.Conv2d, nn.Linear, nn.AvgPool2d)):
        raise UnsupportedLayerError(f"CROWN-IBP has no backward rule for {type(op).__name__}")
    with torch.enable_grad():
        z = torch.zeros((n * s, *shape), dtype=A.dtype, device=A.device, requires_grad=True)
        out = op(torch.tensor(float(t or 0.0), dtype=A.dtype, device=A.device), z) if isinstance(op, ConcatConv2d) \
            else op(z)
        Af = A.reshape(n * s, *out.shape[1:])
        bias = bias + (Af * out).flatten(1).sum(1).view(n, s)  # the op's constant term op(0)
        (g,) = torch.autograd.grad(out, z, Af, create_graph=True)
    return g.view(n, s, *shape), bias


def _ops_back(ops: Sequence[Op], lin: Linear, rec: Sequence[Box], t: float | None) -> Linear:
    for (_, op), pre in zip(reversed(ops), reversed(rec)):
        lin = _op_back(op, lin, pre, t)
    return lin


def step_back(flow: Flow, step: Step, lin: Linear, recs: dict[int, list[Box]]) -> Linear:
    """One Runge–Kutta step of ``flow`` transposed: ``lin`` on its output pushed back to its input
    (``recs``: per stage, the boxes in front of each field op)."""
    a, c = flow.tableau.a_float, flow.tableau.c_float
    b = flow.output_row(step)
    A_out, bias = lin
    coef: dict[int, torch.Tensor] = {i: step.dt * b[i] * A_out for i in recs if b[i] != 0.0}
    A_y = A_out
    for i in sorted(recs, reverse=True):
        if i not in coef:
            continue
        A_i, bias = _ops_back(step.field, (coef.pop(i), bias), recs[i], step.t0 + c[i] * step.dt)
        A_y = A_y + A_i
        for j in range(i):
            if a[i][j] != 0.0:
                coef[j] = coef[j] + step.dt * a[i][j] * A_i if j in coef else step.dt * a[i][j] * A_i
    return A_y, bias


def crown_ibp_margins(ir: Lowered, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """CROWN-IBP lower bounds (N, K-1) on f_y − f_j, j ≠ y, over the L∞ ball ∩ [0, 1];
    differentiable in the model's parameters.

    Args:
        ir: the lowered model.
        x: (N, C, H, W) inputs.
        y: (N,) labels.
        eps: L∞ radius (a float or (N,) radii).

    Raises:
        UnsupportedLayerError: a max-pool layer inside an ODE field.
    """
    head, rest = split_at_maxpool(ir)
    box: Box = input_box(x, eps)
    for part in head:
        for _, op in part.ops:
            box = op_box(op, box)
    _, records = forward_parts(rest, box)
    C = spec_matrix(y, ir.num_classes, x.dtype)  # (N, S, K)
    lin = backward_parts(rest, records, (C, torch.zeros(C.shape[:2], dtype=x.dtype, device=x.device)))
    return concretize(lin, box)


def forward_parts(parts: Sequence[Layers | Flow], box: Box) -> tuple[Box, list]:
    """IBP through ``parts`` (layer runs and fixed-step flows): the output box and, per part, the
    boxes in front of every op (per step and stage for a flow), for :func:`backward_parts`."""
    records: list = []
    for part in parts:
        if isinstance(part, Layers):
            rec: list[Box] = []
            box = ops_forward(part.ops, box, None, rec)
            records.append(rec)
        elif isinstance(part, Flow):
            steps = []
            for step in part.steps:
                box, recs = _step_forward(part, step, box)
                steps.append(recs)
            records.append(steps)
        else:
            raise UnsupportedLayerError(f"CROWN-IBP through {type(part).__name__} needs its own pass")
    return box, records


def backward_parts(parts: Sequence[Layers | Flow], records: list, lin: Linear) -> Linear:
    """The linear bound ``lin`` on the output of ``parts`` pushed back to their input, the ReLUs
    relaxed on the boxes of :func:`forward_parts`."""
    for part, rec in zip(reversed(parts), reversed(records)):
        if isinstance(part, Layers):
            lin = _ops_back(part.ops, lin, rec, None)
        else:
            for step, recs in zip(reversed(part.steps), reversed(rec)):
                lin = step_back(part, step, lin, recs)
    return lin


def concretize(lin: Linear, box: Box) -> torch.Tensor:
    """(N, S) lower bound of ``A·h + bias`` over the box of h."""
    A, bias = lin
    lo, hi = box
    c, r = ((hi + lo) / 2).unsqueeze(1), ((hi - lo) / 2).unsqueeze(1)
    return (A * c).flatten(2).sum(2) - (A.abs() * r).flatten(2).sum(2) + bias
