"""Lipschitz constants of single layers, for the operator the layer applies to a given input shape.

Norms are the induced ``"2"`` (spectral) and ``"inf"`` (max row abs-sum) norms of the
map on flattened tensors. Every :class:`LayerBound` says whether its ``upper`` value is a
guaranteed upper bound and, separately, gives an ``estimate`` from power iteration (a
lower estimate of the true constant, never used as a bound).

Guarantees:
    * Linear, L2: the largest singular value from a float64 SVD, inflated by 1e-9
      relative for rounding. L∞: the max row abs-sum (exact).
    * Conv2d, L2: when the dense matrix of the operator on the given input shape fits in
      ``dense_limit`` entries, the largest singular value of that matrix (float64,
      inflated by 1e-9); otherwise min(FFT bound, √(‖A‖₁‖A‖∞)). The FFT bound is the
      largest singular value over frequencies of the kernel's DFT on a grid large enough
      that circular convolution contains the zero-padded one; the padded, strided,
      dilated operator is a restriction of that circulant operator to a subspace
      followed by a coordinate projection, so its norm is no larger.
      L∞: max over output positions of the abs-sum of the weights that meet in-bounds
      inputs (a convolution of the all-ones input with |W|), exact.
    * The state part of a :class:`~models.fields.ConcatConv2d`: the time plane t·1 is an
      additive constant, so the constant is that of the convolution without channel 0.
    * GroupNorm / LayerNorm / InstanceNorm divide by the input's own standard deviation
      and have no global Lipschitz constant: ``upper=None`` with the reason.

References:
    Sedghi, Gupta, Long, "The singular values of convolutional layers", ICLR 2019.
    Delattre et al., "Efficient bound of Lipschitz constant for convolutional layers by
    Gram iteration", ICML 2023.
    Tsuzuku, Sato, Sugiyama, "Lipschitz-margin training", NeurIPS 2018.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .norms import NORMS, UnknownNormError, canonical_norm

__all__ = [
    "LayerBound", "LipschitzError", "LipschitzNormError", "NORMS",
    "linear_bound", "conv2d_bound", "conv2d_fft_bound", "dense_matrix", "layer_bound",
]

_ROUNDING = 1.0 + 1e-9
_NO_GLOBAL = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LocalResponseNorm)


class LipschitzError(ValueError):
    """A layer type, norm or shape the Lipschitz machinery does not handle."""


class LipschitzNormError(UnknownNormError, LipschitzError):
    """A norm other than ``"inf"`` or ``"2"`` given to lipbound (see :mod:`lipbound.norms`)."""


@dataclasses.dataclass(frozen=True)
class LayerBound:
    """Lipschitz constant of one layer on one input shape.

    Attributes:
        name: dotted module name.
        kind: layer type name.
        input_shape: input shape without the batch dimension.
        output_shape: output shape without the batch dimension.
        norm: ``"2"`` or ``"inf"``.
        upper: upper bound on the Lipschitz constant, None when none exists.
        estimate: power-iteration (or exact) value; a lower estimate of the true constant.
        guaranteed: ``upper`` is provably ≥ the true constant.
        exact: ``upper`` equals the true constant (up to float64 rounding).
        method: how ``upper`` was obtained.
        reason: why ``upper`` is None (else empty).
    """

    name: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    norm: str
    upper: float | None
    estimate: float | None
    guaranteed: bool
    exact: bool
    method: str
    reason: str = ""


def _check_norm(norm: str) -> str:
    """The canonical norm name; raises :class:`LipschitzNormError` otherwise."""
    return canonical_norm(norm, LipschitzNormError)


def dense_matrix(fn: Callable[[torch.Tensor], torch.Tensor], input_shape: Sequence[int],
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The matrix of a linear map by pushing the standard basis through it.

    Args:
        fn: linear map on a batch (B, *input_shape).
        input_shape: shape of one input.

    Returns:
        (n_out, n_in) matrix.
    """
    n_in = math.prod(input_shape)
    basis = torch.eye(n_in, dtype=dtype).reshape(n_in, *input_shape)
    return fn(basis).reshape(n_in, -1).T.contiguous()


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run small dense/conv work on one thread (restored afterwards): these tensors are
    at most a few thousand wide, where threads only add contention on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _spectral(matrix: torch.Tensor) -> float:
    """Largest singular value: top eigenvalue of the smaller float64 Gram matrix."""
    m = matrix.detach().to(torch.float64)
    with _single_thread():
        gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
        top = float(torch.linalg.eigvalsh(gram)[-1])
    return math.sqrt(max(top, 0.0))


def _power_iteration(apply: Callable[[torch.Tensor], torch.Tensor],
                     apply_t: Callable[[torch.Tensor], torch.Tensor], input_shape: Sequence[int],
                     iters: int, seed: int) -> float:
    """σ_max estimate by power iteration on AᵀA (a lower estimate: ‖Av‖ for a unit v)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, *input_shape, generator=g, dtype=torch.float64)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(iters):
        u = apply(v)
        sigma = float(u.norm())
        if sigma == 0.0:
            return 0.0
        v = apply_t(u)
        v = v / v.norm()
    return float(apply(v).norm())


def linear_bound(layer: nn.Linear, norm: str = "2", name: str = "") -> LayerBound:
    """Exact Lipschitz constant of ``nn.Linear`` (bias irrelevant)."""
    norm = _check_norm(norm)
    w = layer.weight.detach().to(torch.float64)
    if norm == "2":
        value = float(torch.linalg.matrix_norm(w, 2))
        upper, method = value * _ROUNDING, "svd"
    else:
        value = float(w.abs().sum(dim=1).max())
        upper, method = value, "max row abs-sum"
    return LayerBound(name, "Linear", (w.shape[1],), (w.shape[0],), norm, upper, value, True, True, method)


def _conv_parts(conv: nn.Conv2d, weight: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    if conv.padding_mode != "zeros":
        raise LipschitzError(f"conv padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
    if isinstance(conv.padding, str):
        raise LipschitzError("string padding ('same'/'valid') is not supported; use integers")
    w = (conv.weight if weight is None else weight).detach().to(torch.float64)
    kw = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation, "groups": conv.groups}
    return w, kw


def conv2d_fft_bound(weight: torch.Tensor, input_hw: Sequence[int], dilation: Sequence[int] = (1, 1),
                     groups: int = 1) -> float:
    """Guaranteed upper bound on the spectral norm of a zero-padded 2-D convolution.

    The kernel (dilated) is zero-padded to an N_h x N_w grid with N ≥ input size +
    dilated kernel size − 1; circular convolution on that grid contains the linear
    convolution, whose padded/strided outputs are a coordinate subset. The circulant
    operator's norm is max_ω σ_max(Ŵ(ω)) over the 2-D DFT frequencies.

    Args:
        weight: (C_out, C_in/groups, k_h, k_w).
        input_hw: (H, W) of the input.
        dilation: kernel dilation.
        groups: convolution groups.

    Returns:
        the bound (float).
    """
    w = weight.detach().to(torch.float64)
    c_out, c_in_g, kh, kw = w.shape
    eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    nh, nw = input_hw[0] + eh - 1, input_hw[1] + ew - 1
    best = 0.0
    per_group = c_out // groups
    for gi in range(groups):
        wg = w[gi * per_group:(gi + 1) * per_group]
        grid = torch.zeros(per_group, c_in_g, nh, nw, dtype=torch.float64)
        grid[:, :, 0:eh:dilation[0], 0:ew:dilation[1]] = wg
        spec = torch.fft.fft2(grid).permute(2, 3, 0, 1)
        sv = torch.linalg.matrix_norm(spec, 2)
        best = max(best, float(sv.max()))
    return best * _ROUNDING


def _conv2d_bound(conv: nn.Conv2d, input_shape: Sequence[int], norm: str = "2", name: str = "",
                 weight: torch.Tensor | None = None, dense_limit: int = 10_000_000,
                 power_iters: int = 50, seed: int = 0, kind: str = "Conv2d") -> LayerBound:
    """See :func:`conv2d_bound`."""
    norm = _check_norm(norm)
    w, kw = _conv_parts(conv, weight)
    c, hgt, wid = (int(s) for s in input_shape)
    if c != w.shape[1] * kw["groups"]:
        raise LipschitzError(f"{name or kind}: input has {c} channels, weight expects {w.shape[1] * kw['groups']}")

    def apply(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, **kw)

    out_shape = tuple(apply(torch.zeros(1, c, hgt, wid, dtype=torch.float64)).shape[1:])
    n_in, n_out = c * hgt * wid, math.prod(out_shape)
    if norm == "inf":
        rows = F.conv2d(torch.ones(1, c, hgt, wid, dtype=torch.float64), w.abs(), None, **kw)
        value = float(rows.max())
        return LayerBound(name, kind, (c, hgt, wid), out_shape, norm, value, value, True, True,
                          "max abs-sum over output positions")

    def apply_t(y: torch.Tensor) -> torch.Tensor:
        return torch.nn.grad.conv2d_input((y.shape[0], c, hgt, wid), w, y, **kw)

    estimate = _power_iteration(apply, apply_t, (c, hgt, wid), power_iters, seed)
    if n_in * n_out <= dense_limit:
        # Push the basis of the smaller side through the map (or its adjoint).
        dense = dense_matrix(apply, (c, hgt, wid)) if n_in <= n_out else dense_matrix(apply_t, out_shape).T
        value = _spectral(dense)
        return LayerBound(name, kind, (c, hgt, wid), out_shape, norm, value * _ROUNDING, estimate,
                          True, True, "dense-matrix SVD")
    fft = conv2d_fft_bound(w, (hgt, wid), kw["dilation"], kw["groups"])
    l_inf = float(F.conv2d(torch.ones(1, c, hgt, wid, dtype=torch.float64), w.abs(), None, **kw).max())
    l_one = float(torch.nn.grad.conv2d_input((1, c, hgt, wid), w.abs(),
                                             torch.ones(1, *out_shape, dtype=torch.float64), **kw).max())
    schur = math.sqrt(l_inf * l_one) * _ROUNDING
    upper, method = (fft, "FFT on padded grid") if fft <= schur else (schur, "sqrt(|A|_1 |A|_inf)")
    return LayerBound(name, kind, (c, hgt, wid), out_shape, norm, upper, estimate, True, False, method)


def conv2d_bound(conv: nn.Conv2d, input_shape: Sequence[int], norm: str = "2", name: str = "",
                 weight: torch.Tensor | None = None, dense_limit: int = 10_000_000,
                 power_iters: int = 50, seed: int = 0, kind: str = "Conv2d") -> LayerBound:
    """Lipschitz constant of ``conv`` on inputs of shape ``input_shape`` = (C, H, W).

    Args:
        conv: the layer (its stride, padding, dilation and groups are used; bias ignored).
        input_shape: (C, H, W) seen by the layer.
        norm: ``"2"`` or ``"inf"``.
        name: row name.
        weight: use this weight instead of ``conv.weight`` (the state part of a
            time-concatenated convolution).
        dense_limit: largest n_in·n_out for which the exact dense-matrix SVD is used.
        power_iters: power-iteration steps for the estimate.
        seed: power-iteration seed.
        kind: type name for the row.

    Returns:
        a :class:`LayerBound` (always guaranteed).

    Raises:
        LipschitzError: unsupported padding mode or a shape mismatch.
    """
    with _single_thread():
        return _conv2d_bound(conv, input_shape, norm, name, weight, dense_limit, power_iters, seed, kind)


def _state_weight(module: nn.Module) -> torch.Tensor:
    """Weight of a ConcatConv2d acting on the state (time plane dropped)."""
    w = module.conv.weight
    return w[:, 1:] if module.time_channel else w


def _nonneg_linear_bound(fn: Callable[[torch.Tensor], torch.Tensor], input_shape: tuple[int, ...],
                         out_shape: tuple[int, ...], norm: str, name: str, kind: str,
                         dense_limit: int) -> LayerBound:
    """A linear map with nonnegative matrix (average pooling)."""
    ones = torch.ones(1, *input_shape, dtype=torch.float64)
    l_inf = float(fn(ones).max())
    if norm == "inf":
        return LayerBound(name, kind, input_shape, out_shape, norm, l_inf, l_inf, True, True, "max row sum")
    if math.prod(input_shape) * math.prod(out_shape) <= dense_limit:
        value = _spectral(dense_matrix(fn, input_shape))
        return LayerBound(name, kind, input_shape, out_shape, norm, value * _ROUNDING, value, True, True,
                          "dense-matrix SVD")
    x = ones.clone().requires_grad_(True)
    (col,) = torch.autograd.grad(fn(x), x, torch.ones(1, *out_shape, dtype=torch.float64))
    value = math.sqrt(l_inf * float(col.max())) * _ROUNDING
    return LayerBound(name, kind, input_shape, out_shape, norm, value, None, True, False, "sqrt(|A|_1 |A|_inf)")


def _maxpool_overlap(pool: nn.MaxPool2d, input_shape: tuple[int, ...]) -> int:
    """Largest number of pooling windows that contain one input pixel."""
    x = torch.zeros(1, *input_shape, dtype=torch.float64, requires_grad=True)
    pad = pool.padding if isinstance(pool.padding, tuple) else (pool.padding,) * 2
    ones_in = torch.ones(1, *input_shape, dtype=torch.float64)
    # Sum pooling of the indicator counts, per output window, the in-bounds pixels; its
    # transpose applied to ones counts the windows covering each pixel.
    k = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size,) * 2
    s = pool.stride if isinstance(pool.stride, tuple) else (pool.stride,) * 2
    d = pool.dilation if isinstance(pool.dilation, tuple) else (pool.dilation,) * 2
    weight = torch.ones(input_shape[0], 1, *k, dtype=torch.float64)
    y = F.conv2d(x + ones_in, weight, None, stride=s, padding=pad, dilation=d, groups=input_shape[0])
    if pool.ceil_mode:
        raise LipschitzError("MaxPool2d with ceil_mode=True is not supported")
    (cover,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return int(round(float(cover.max())))


def layer_bound(module: nn.Module, input_shape: Sequence[int], norm: str = "2", name: str = "",
                dense_limit: int = 10_000_000, seed: int = 0) -> LayerBound:
    """Lipschitz constant of a single (non-container) layer on inputs of ``input_shape``.

    Args:
        module: the layer, in eval mode for BatchNorm.
        input_shape: input shape without batch.
        norm: ``"2"`` or ``"inf"``.
        name: row name.
        dense_limit: see :func:`conv2d_bound`.
        seed: power-iteration seed.

    Returns:
        a :class:`LayerBound`; ``upper`` is None for normalisation layers without a
        global constant.

    Raises:
        LipschitzError: an unsupported layer or a training-mode BatchNorm.
    """
    norm = _check_norm(norm)
    shape = tuple(int(s) for s in input_shape)
    kind = type(module).__name__
    if isinstance(module, nn.Linear):
        return dataclasses.replace(linear_bound(module, norm, name), input_shape=shape)
    if isinstance(module, nn.Conv2d):
        return conv2d_bound(module, shape, norm, name, dense_limit=dense_limit, seed=seed)
    if kind == "ConcatConv2d" and hasattr(module, "conv") and hasattr(module, "time_channel"):
        return conv2d_bound(module.conv, shape, norm, name, weight=_state_weight(module),
                            dense_limit=dense_limit, seed=seed, kind=kind)
    param = next(module.parameters(), None)
    with torch.no_grad():
        probe = torch.zeros(1, *shape, dtype=torch.float32 if param is None else param.dtype)
        out_shape = tuple(module(probe).shape[1:])
    return _rule_bound(module, shape, out_shape, norm, name, kind, dense_limit)


def _rule_bound(module: nn.Module, shape: tuple[int, ...], out_shape: tuple[int, ...], norm: str, name: str,
                kind: str, dense_limit: int) -> LayerBound:
    """:func:`layer_bound` of a layer without a weight matrix: activations, BatchNorm, pooling, normalisation."""
    if isinstance(module, (nn.ReLU, nn.Tanh, nn.Identity, nn.Flatten, nn.Dropout, nn.Hardtanh)):
        return LayerBound(name, kind, shape, out_shape, norm, 1.0, 1.0, True, True, "1-Lipschitz")
    if isinstance(module, nn.LeakyReLU):
        value = max(1.0, abs(module.negative_slope))
        return LayerBound(name, kind, shape, out_shape, norm, value, value, True, True, "max(1, |slope|)")
    if isinstance(module, nn.Sigmoid):
        return LayerBound(name, kind, shape, out_shape, norm, 0.25, 0.25, True, True, "max sigmoid' = 1/4")
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.training or module.running_var is None:
            raise LipschitzError(f"{name or kind}: BatchNorm needs eval mode with running statistics")
        scale = 1.0 / torch.sqrt(module.running_var.double() + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.detach().double()
        value = float(scale.abs().max())
        return LayerBound(name, kind, shape, out_shape, norm, value, value, True, True, "max |gamma/sigma|")
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return _nonneg_linear_bound(lambda x: module(x), shape, out_shape, norm, name, kind, dense_limit)
    if isinstance(module, nn.MaxPool2d):
        if norm == "inf":
            return LayerBound(name, kind, shape, out_shape, norm, 1.0, 1.0, True, True, "max of subsets")
        cover = _maxpool_overlap(module, shape)
        value = math.sqrt(cover)
        return LayerBound(name, kind, shape, out_shape, norm, value, 1.0, True, cover == 1,
                          f"sqrt(max windows per pixel = {cover})")
    if isinstance(module, _NO_GLOBAL):
        return LayerBound(name, kind, shape, out_shape, norm, None, None, False, False, "none",
                          f"{kind} divides by the input's own standard deviation: no global Lipschitz constant "
                          "bounded by its weights (slope grows like |gamma|/sqrt(var + eps) as inputs shrink)")
    raise LipschitzError(f"no Lipschitz rule for layer {name or kind} of type {kind}")
