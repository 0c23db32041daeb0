"""Whole-network Lipschitz upper bounds: products along the composition.

* ``nn.Sequential``: the product of its layers' constants.
* a residual block h ← h + s·f(t, h): 1 + s·K_f.
* an ODE block: the solver's growth factor G (:mod:`lipbound.growth`) with K the vector
  field's Lipschitz constant in the state, for a fixed grid or a given step sequence.
* ODE-net: L ≤ L_head · G · L_stem; ResNet: L_head · ∏_k (1 + s K_k) · L_stem.

A network containing a layer without a global constant (GroupNorm) gets ``total=None``
and the reason, never a guess.

References:
    Szegedy et al., "Intriguing properties of neural networks", ICLR 2014 (product bound).
    Seed 003, Theorems 3.1 and 3.2 (solver growth factors).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from .growth import GrowthFactor, growth_factor
from .layers import LayerBound, LipschitzError, _check_norm, layer_bound

__all__ = ["NetworkBound", "network_bound", "sequential_bounds", "field_bound", "record_steps"]


@dataclasses.dataclass(frozen=True)
class NetworkBound:
    """Per-layer rows and the network's Lipschitz upper bound.

    Attributes:
        model: model class name.
        norm: ``"2"`` or ``"inf"`` (the same norm on input and output).
        rows: every layer row, including vector-field layers and composite rows
            (``ODEBlock`` growth factor, residual blocks).
        factors: names of the rows whose ``upper`` values multiply into ``total``.
        total: the network bound, None when unavailable.
        guaranteed: every factor is a guaranteed upper bound.
        reason: why ``total`` is None (else empty).
        growth: the ODE block's growth factor, if any.
        field_lipschitz: K of the ODE vector field, if any.
    """

    model: str
    norm: str
    rows: tuple[LayerBound, ...]
    factors: tuple[str, ...]
    total: float | None
    guaranteed: bool
    reason: str = ""
    growth: GrowthFactor | None = None
    field_lipschitz: float | None = None


def sequential_bounds(seq: nn.Module, input_shape: Sequence[int], norm: str = "2", prefix: str = "",
                      dense_limit: int = 10_000_000) -> tuple[list[LayerBound], tuple[int, ...]]:
    """Rows for each leaf layer of a (nested) ``nn.Sequential`` and its output shape."""
    rows: list[LayerBound] = []
    shape = tuple(int(s) for s in input_shape)
    children = list(seq.named_children()) if isinstance(seq, nn.Sequential) else [("", seq)]
    for name, child in children:
        full = f"{prefix}.{name}" if prefix and name else (prefix or name)
        if isinstance(child, nn.Sequential):
            sub, shape = sequential_bounds(child, shape, norm, full, dense_limit)
            rows += sub
            continue
        row = layer_bound(child, shape, norm, full, dense_limit)
        rows.append(row)
        shape = row.output_shape
    return rows, shape


def field_bound(field: nn.Module, state_shape: Sequence[int], norm: str = "2", prefix: str = "field",
                dense_limit: int = 10_000_000) -> tuple[list[LayerBound], float | None, str]:
    """Lipschitz constant K of a vector field f(t, h) in h, uniformly in t.

    Handles :class:`~models.fields.VerifiableField` (conv → ReLU → conv, time planes
    only shift by constants) and :class:`~models.fields.ChenField` (GroupNorm: no
    global constant).

    Returns:
        (rows, K or None, reason when None).

    Raises:
        LipschitzError: an unknown vector field type.
    """
    kind = getattr(field, "kind", "")
    shape = tuple(int(s) for s in state_shape)
    if kind == "verifiable":
        names = ("conv1", "act", "conv2")
    elif kind == "chen":
        names = ("norm1", "act", "conv1", "norm2", "act", "conv2", "norm3")
    else:
        raise LipschitzError(f"no Lipschitz rule for vector field {type(field).__name__}")
    rows: list[LayerBound] = []
    for name in names:
        row = layer_bound(getattr(field, name), shape, norm, f"{prefix}.{name}", dense_limit)
        rows.append(row)
        shape = row.output_shape
    missing = [r for r in rows if r.upper is None]
    if missing:
        return rows, None, missing[0].reason
    return rows, math.prod(r.upper for r in rows if r.upper is not None), ""


def _combine(model: nn.Module, norm: str, rows: list[LayerBound], factors: list[str],
             growth: GrowthFactor | None = None, field_k: float | None = None,
             extra_reason: str = "") -> NetworkBound:
    by_name = {r.name: r for r in rows}
    ups = [by_name[f].upper for f in factors]
    reason = extra_reason
    if not reason:
        missing = [by_name[f] for f in factors if by_name[f].upper is None]
        if missing:
            reason = f"{missing[0].name}: {missing[0].reason}"
    total = None if reason else math.prod(u for u in ups if u is not None)
    guaranteed = total is not None and all(by_name[f].guaranteed for f in factors)
    return NetworkBound(type(model).__name__, norm, tuple(rows), tuple(factors), total, guaranteed,
                        reason, growth, field_k)


def _ode_block_row(block: nn.Module, state_shape: tuple[int, ...], norm: str, dense_limit: int,
                   steps: Sequence[tuple[float, float]] | None,
                   x_state: torch.Tensor | None) -> tuple[list[LayerBound], GrowthFactor | None, float | None, str]:
    frows, k, reason = field_bound(block.field, state_shape, norm, "block.field", dense_limit)
    solver = block.solver
    growth = None
    if k is not None:
        if solver.is_fixed:
            growth = growth_factor(solver.method, k, n_steps=solver.n_steps, end_time=solver.T)
        else:
            if steps is None and x_state is not None:
                steps = record_steps(block, x_state)
            if steps is None:
                reason = (f"adaptive solver {solver.method}: the step sequence depends on the input; "
                          "pass steps= or x= to bound the map for one recorded sequence")
            else:
                growth = growth_factor(solver.method, k, steps=steps, end_time=solver.T)
    desc = f"{solver.method} growth, K={k:.6g}" if k is not None else f"{solver.method} growth"
    row = LayerBound("block", "ODEBlock", state_shape, state_shape, norm,
                     None if growth is None else growth.value, None, growth is not None, False, desc, reason)
    return frows + [row], growth, k, reason


def record_steps(block: nn.Module, h0: torch.Tensor) -> list[tuple[float, float]]:
    """The accepted (t0, dt) steps of an adaptive ODE block on input state ``h0`` (the block's
    own ``recording()``)."""
    with block.recording(), torch.no_grad():
        block(h0)
    return list(block.accepted_steps)


def _ode_net_bound(model: nn.Module, shape: tuple[int, ...], norm: str, steps: Sequence[tuple[float, float]] | None,
                   x: torch.Tensor | None, dense_limit: int) -> NetworkBound:
    """stem -> ODE block (the solver's growth factor) -> head."""
    rows, state = sequential_bounds(model.stem, shape, norm, "stem", dense_limit)
    x_state = None
    if x is not None:
        with torch.no_grad():
            x_state = model.stem(x)
    brows, growth, k, reason = _ode_block_row(model.block, state, norm, dense_limit, steps, x_state)
    hrows, _ = sequential_bounds(model.head, state, norm, "head", dense_limit)
    factors = [r.name for r in rows] + ["block"] + [r.name for r in hrows]
    return _combine(model, norm, rows + brows + hrows, factors, growth, k, reason)


def _resnet_bound(model: nn.Module, shape: tuple[int, ...], norm: str, dense_limit: int) -> NetworkBound:
    """stem -> residual blocks h + s·f_k(t, h), each 1 + s·K_k -> head."""
    rows, state = sequential_bounds(model.stem, shape, norm, "stem", dense_limit)
    factors = [r.name for r in rows]
    for k in range(model.n_blocks):
        idx = 0 if model.tied else k
        frows, kf, reason = field_bound(model.block_field(k), state, norm, f"fields.{idx}", dense_limit)
        if k == 0 or not model.tied:
            rows += frows
        rows.append(LayerBound(f"block{k}", "Residual", state, state, norm,
                               None if kf is None else 1.0 + model.step * kf, None, kf is not None,
                               False, f"1 + s*K_f, s={model.step:g}", reason))
        factors.append(f"block{k}")
    hrows, _ = sequential_bounds(model.head, state, norm, "head", dense_limit)
    return _combine(model, norm, rows + hrows, factors + [r.name for r in hrows])


def network_bound(model: nn.Module, norm: str = "2", input_shape: Sequence[int] | None = None,
                  steps: Sequence[tuple[float, float]] | None = None, x: torch.Tensor | None = None,
                  dense_limit: int = 10_000_000) -> NetworkBound:
    """Per-layer constants and the product bound of a whole network.

    Args:
        model: ODENet, ResNet, LeNet5, MLP (anything with ``.stem/.block/.head``,
            ``.stem/.fields/.head``, ``.features/.classifier`` or ``.net``) or an
            ``nn.Sequential``; in eval mode.
        norm: ``"2"`` or ``"inf"``.
        input_shape: (C, H, W); default the classifier's ``input_shape``.
        steps: recorded (t0, dt) steps for an adaptive ODE block.
        x: one input image (1, C, H, W) on which to record the adaptive steps instead.
        dense_limit: see :func:`lipbound.layers.conv2d_bound`.

    Returns:
        a :class:`NetworkBound`.

    Raises:
        LipschitzError: unknown layout, layer or norm.
    """
    norm = _check_norm(norm)
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise LipschitzError("input_shape is required for a model without .input_shape")
    shape = tuple(int(s) for s in input_shape)
    if hasattr(model, "stem") and hasattr(model, "block") and hasattr(model, "head"):
        return _ode_net_bound(model, shape, norm, steps, x, dense_limit)
    if hasattr(model, "stem") and hasattr(model, "fields") and hasattr(model, "head"):
        return _resnet_bound(model, shape, norm, dense_limit)
    if hasattr(model, "features") and hasattr(model, "classifier"):
        rows, mid = sequential_bounds(model.features, shape, norm, "features", dense_limit)
        crows, _ = sequential_bounds(model.classifier, mid, norm, "classifier", dense_limit)
        rows += crows
        return _combine(model, norm, rows, [r.name for r in rows])
    if hasattr(model, "net") and isinstance(model.net, nn.Sequential):
        rows, _ = sequential_bounds(model.net, shape, norm, "net", dense_limit)
        return _combine(model, norm, rows, [r.name for r in rows])
    if isinstance(model, nn.Sequential):
        rows, _ = sequential_bounds(model, shape, norm, "", dense_limit)
        return _combine(model, norm, rows, [r.name for r in rows])
    raise LipschitzError(f"no Lipschitz rule for model type {type(model).__name__}")
