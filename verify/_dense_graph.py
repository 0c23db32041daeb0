"""A classifier as a dense affine–sum–ReLU graph, the input of :mod:`verify.crown`.

A verifiable ODE-net (or ResNet, MLP, conv/linear ``nn.Sequential``) unrolled for a fixed
step sequence is a DAG of affine maps, weighted sums and ReLUs over per-example vectors of
at most a few thousand entries, so every affine map is kept as a dense matrix (and, for a
convolution, as the transposed convolution that back-substitutes through it). Each
Runge–Kutta stage contributes ``p_i = W1·Y_i + β1(t_i)``, ``z_i = relu(p_i)``,
``k_i = W2·z_i`` and ``Y_i = y + Σ_j h·a_ij·k_j + h·Σ_j a_ij β2(t_j)``: the field's second
convolution is applied once per stage, not once per Butcher coefficient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.fields import ConcatConv2d

from ._lower import Flow, Layers, Lowered, Op, Step, UnsupportedLayerError, lower


@dataclasses.dataclass(frozen=True)
class _Node:
    """One node of the graph; values are flat per-example vectors.

    kind "input": the image; "affine": ``weight @ v[src[0]] + bias``; "sum":
    ``Σ coef_j v[src_j] + bias``; "relu": ``relu(v[src[0]])``.
    """

    kind: str
    src: tuple[int, ...] = ()
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    coef: tuple[float, ...] = ()
    dim: int = 0
    l2_dev: torch.Tensor | None = None  # per-output ‖row‖₂ used by the L2 interval step
    conv: _ConvT | None = None  # the same map as a convolution, for fast back-substitution

    def back(self, A: torch.Tensor) -> torch.Tensor:
        """``A @ weight`` for rows A (R, dim): a transposed convolution when the map is one."""
        if self.conv is None:
            return A @ self.weight
        return self.conv(A)


@dataclasses.dataclass(frozen=True)
class _ConvT:
    """``A ↦ A @ W`` for the matrix W of a convolution, as a transposed convolution."""

    weight: torch.Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_shape: tuple[int, int, int]
    output_padding: tuple[int, int]

    @classmethod
    def of(cls, conv: nn.Conv2d, weight: torch.Tensor, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
           ) -> _ConvT | None:
        # A transposed convolution back-substitutes a zero-padded convolution only: with
        # reflect/replicate/circular padding a border row of W sums several kernel taps on one
        # pixel, so such layers keep their exact dense matrix (``A @ W``).
        if (conv.groups != 1 or tuple(conv.dilation) != (1, 1) or not isinstance(conv.padding, tuple)
                or conv.padding_mode != "zeros"):
            return None
        k, s, p = conv.kernel_size, conv.stride, conv.padding
        op = tuple(in_shape[1 + d] - ((out_shape[1 + d] - 1) * s[d] - 2 * p[d] + k[d]) for d in range(2))
        if any(o < 0 or o >= s[d] for d, o in enumerate(op)):
            return None
        return cls(weight.detach().contiguous(), tuple(s), tuple(p), tuple(out_shape), op)  # type: ignore[arg-type]

    def __call__(self, A: torch.Tensor) -> torch.Tensor:
        r = A.shape[0]
        c, h, w = self.out_shape
        if self.weight.shape[1] == 1:
            # One channel back (a first layer): a matrix product and col2im beat the transposed conv.
            cols = A.view(r, h * w, c) @ self.weight.reshape(c, -1)
            k = self.weight.shape[2:]
            size = tuple((o - 1) * s - 2 * p + kk + op for o, s, p, kk, op in
                         zip((h, w), self.stride, self.padding, k, self.output_padding))
            return F.fold(cols.transpose(1, 2), size, k, padding=self.padding, stride=self.stride).reshape(r, -1)
        a = A.view(r, h, w, c).permute(0, 3, 1, 2)  # channels-last NCHW view, no copy
        out = F.conv_transpose2d(a, self.weight, None, self.stride, self.padding, self.output_padding)
        return out.permute(0, 2, 3, 1).reshape(r, -1)


def _scalar(conv: _ConvT | None, w: torch.Tensor) -> float | None:
    """The factor a of a 1×1 one-channel convolution whose matrix w is exactly diagonal (else None)."""
    if (conv is None or tuple(conv.weight.shape) != (1, 1, 1, 1) or conv.stride != (1, 1)
            or conv.padding != (0, 0) or w.shape[0] != w.shape[1]):
        return None
    if torch.count_nonzero(w - torch.diag(torch.diagonal(w))):
        return None
    return float(conv.weight.reshape(()))


class GraphError(ValueError):
    """A model the dense CROWN graph cannot represent (e.g. max-pooling)."""


class _LayoutError(GraphError):
    """The space-to-depth layout does not fit this model (the graph is rebuilt without it)."""


def _leading_block(ir: Lowered) -> int:
    """Product of the strides of the leading run of convolutions (and ReLUs) of the IR."""
    block = 1
    shape = ir.input_shape
    first = ir.parts[0] if ir.parts and isinstance(ir.parts[0], Layers) else Layers(())
    for _, layer in first.ops:
        if isinstance(layer, nn.Conv2d) and layer.stride[0] == layer.stride[1]:
            block *= layer.stride[0]
        elif not isinstance(layer, nn.ReLU):
            break
    if len(shape) != 3 or shape[1] % block or shape[2] % block:
        return 1
    return block


def _to_nchw(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, prod(shape)) in node order -> (N, *shape) in torch order (image nodes are stored H, W, C)."""
    if len(shape) != 3:
        return flat.reshape(flat.shape[0], *shape)
    c, h, w = shape
    return flat.reshape(flat.shape[0], h, w, c).permute(0, 3, 1, 2)


def _from_nchw(t: torch.Tensor) -> torch.Tensor:
    """(N, *shape) in torch order -> (N, prod(shape)) in node order."""
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)
    return t.reshape(t.shape[0], -1)


def _dense(apply: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...], like: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """(W, b, out_shape) with ``apply(x) = W @ x + b`` on node-order vectors, for an affine map."""
    n = 1
    for s in in_shape:
        n *= s
    with torch.no_grad():
        b = apply(torch.zeros(1, *in_shape, dtype=like.dtype, device=like.device))
        basis = _to_nchw(torch.eye(n, dtype=like.dtype, device=like.device), in_shape)
        cols = _from_nchw(apply(basis)) - _from_nchw(b)
    return cols.T.contiguous(), _from_nchw(b)[0], tuple(b.shape[1:])


def _l2_rows(layer: nn.Module, weight: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor:
    """Per-output ‖row‖₂ as auto_LiRPA's L2 interval step uses it (zero-padded convs: the whole
    kernel's norm, which bounds every row's; other padding modes: the exact rows, whose border
    rows may exceed it)."""
    if isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros":
        k = layer.weight.detach().pow(2).sum((1, 2, 3)).sqrt()
        return k.view(1, 1, -1).expand(out_shape[1], out_shape[2], -1).reshape(-1).clone()
    return weight.norm(dim=1)


class DenseGraph:
    """A classifier as a topologically ordered affine–sum–ReLU graph with dense matrices.

    Build it with :meth:`from_model`; :meth:`forward` reproduces the model's logits.

    Raises:
        GraphError: a layer or model type with no dense affine–ReLU form.
    """

    def __init__(self, input_shape: tuple[int, ...], nodes: Sequence[_Node], description: str,
                 block: int = 1) -> None:
        self.input_shape = tuple(input_shape)
        self.block = block
        self.nodes = list(nodes)
        self.description = description
        self.output = len(self.nodes) - 1
        #: (relu node, its pre-activation node), in topological order.
        self.relus = [(i, n.src[0]) for i, n in enumerate(self.nodes) if n.kind == "relu"]

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module) -> DenseGraph:
        """Graph of a model :func:`verify._lower.lower` accepts (fixed-step solvers).

        Raises:
            GraphError: a layer with no dense affine–ReLU form, or a model that does not lower.
        """
        try:
            ir = lower(model)
        except UnsupportedLayerError as err:
            raise GraphError(str(err)) from err
        return cls.from_lowered(ir)

    @classmethod
    def from_lowered(cls, ir: Lowered) -> DenseGraph:
        """Graph of the lowered IR (see :mod:`verify._lower`).

        Raises:
            GraphError: a layer with no dense affine–ReLU form (e.g. max pooling).
        """
        like = torch.zeros((), dtype=ir.dtype, device=ir.device)
        block = _leading_block(ir)
        if block > 1:
            try:
                return cls._build(ir, like, block)
            except _LayoutError:
                pass
        return cls._build(ir, like, 1)

    @classmethod
    def _build(cls, ir: Lowered, like: torch.Tensor, block: int) -> DenseGraph:
        g = _Builder(ir.input_shape, like, block)
        for part in ir.parts:
            if isinstance(part, Layers):
                g.sequential(part.ops)
            else:
                for step in part.steps:
                    g.rk_step(part, step)
        g.flush()
        if g.block != 1:
            raise _LayoutError("space-to-depth layout not undone")
        return cls(ir.input_shape, g.nodes, ir.description, g.input_block)

    def flat_input(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) images -> (N, dim) input-node vectors."""
        x = x.reshape(x.shape[0], *self.input_shape)
        return _from_nchw(F.pixel_unshuffle(x, self.block) if self.block > 1 else x)

    # ---- evaluation ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch (N, *input_shape), computed through the graph."""
        vals: list[torch.Tensor | None] = [None] * len(self.nodes)
        vals[0] = self.flat_input(x)
        for i, n in enumerate(self.nodes[1:], start=1):
            if n.kind == "affine":
                vals[i] = vals[n.src[0]] @ n.weight.T + n.bias
            elif n.kind == "sum":
                v = sum(c * vals[s] for c, s in zip(n.coef, n.src))
                vals[i] = v + n.bias if n.bias is not None else v
            else:
                vals[i] = vals[n.src[0]].clamp(min=0)
        return vals[self.output]


class _Builder:
    """Appends nodes; consecutive affine layers are merged into one matrix."""

    def __init__(self, input_shape: tuple[int, ...], like: torch.Tensor, block: int = 1) -> None:
        self.like = like
        n = 1
        for s in input_shape:
            n *= s
        self.nodes: list[_Node] = [_Node("input", dim=n)]
        #: layout of the current node: ``pixel_unshuffle(·, block)`` (see :meth:`_blocked_conv`).
        self.input_block = self.block = block
        c, h, w = input_shape if len(input_shape) == 3 else (0, 0, 0)
        self.cur = 0
        self.shape = (c * block * block, h // block, w // block) if block > 1 else tuple(input_shape)
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int, _ConvT | None] | None = None
        self._field_cache: dict[tuple[int, tuple[int, ...]], tuple] = {}

    def _append(self, node: _Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def flush(self) -> int:
        """Emit the pending affine map (if any); returns the current node."""
        if self._pending is not None:
            w, b, l2, src, conv = self._pending
            self.cur = self._append(_Node("affine", (src,), w, b, dim=w.shape[0], l2_dev=l2, conv=conv))
            self._pending = None
        return self.cur

    def _blocked_conv(self, layer: nn.Conv2d) -> bool:
        """Add a convolution on space-to-depth layouts so that it becomes a stride-1 convolution.

        Back-substitution through a strided convolution is slow as a transposed
        convolution (worst with few channels, as on a grey image). With the input stored as
        ``pixel_unshuffle(x, b_in)`` and the output as ``pixel_unshuffle(y, b_out)``,
        ``b_in = stride·b_out``, the same map is a stride-1 convolution on the block grid.
        Returns False (nothing added) when the layout does not fit.
        """
        s, k, p = layer.stride[0], layer.kernel_size[0], layer.padding
        b_in = self.block
        if (self._pending is not None or len(self.shape) != 3 or b_in % s or layer.stride != (s, s)
                or layer.kernel_size != (k, k) or not isinstance(p, tuple) or p[0] != p[1]
                or layer.groups != 1 or layer.dilation != (1, 1) or layer.padding_mode != "zeros"):
            return False
        b_out = b_in // s
        cb, hb, wb_ = self.shape  # blocked input shape
        c, h, w = cb // (b_in * b_in), hb * b_in, wb_ * b_in
        if (h + 2 * p[0] - k) // s + 1 != h // s or (w + 2 * p[0] - k) // s + 1 != w // s:
            return False
        taps = [(o, kk, s * o - p[0] + kk) for o in range(b_out) for kk in range(k)]
        qs = [pos // b_in for _, _, pos in taps]
        pb, kb = -min(qs), max(qs) - min(qs) + 1
        if kb != 2 * pb + 1:
            return False
        wt = layer.weight.detach()
        cout = wt.shape[0]
        wblk = wt.new_zeros(cout * b_out * b_out, c * b_in * b_in, kb, kb)
        for oy, ky, py in taps:
            for ox, kx, px in taps:
                rows = torch.arange(cout) * b_out * b_out + oy * b_out + ox
                cols = torch.arange(c) * b_in * b_in + (py % b_in) * b_in + (px % b_in)
                wblk[rows[:, None], cols[None, :], py // b_in + pb, px // b_in + pb] += wt[:, :, ky, kx]

        def apply(t: torch.Tensor) -> torch.Tensor:
            out = layer(F.pixel_shuffle(t, b_in) if b_in > 1 else t)
            return F.pixel_unshuffle(out, b_out) if b_out > 1 else out

        wd, bd, out_shape = _dense(apply, self.shape, self.like)
        conv = _ConvT.of(nn.Conv2d(wblk.shape[1], wblk.shape[0], kb, 1, pb, bias=False), wblk, self.shape, out_shape)
        if conv is None:
            return False
        norms = wt.pow(2).sum((1, 2, 3)).sqrt().repeat_interleave(b_out * b_out)
        l2 = norms.view(1, 1, -1).expand(out_shape[1], out_shape[2], -1).reshape(-1).clone()
        self._pending = (wd, bd, l2, self.cur, conv)
        self.shape, self.block = out_shape, b_out
        return True

    def affine(self, layer: nn.Module) -> None:
        if isinstance(layer, nn.Conv2d) and self.block > 1 and self._blocked_conv(layer):
            return
        if self.block > 1:
            raise _LayoutError(f"{type(layer).__name__} inside a space-to-depth layout")
        w, b, out_shape = _dense(layer, self.shape, self.like)
        if self._pending is None:
            l2 = _l2_rows(layer, w, out_shape)
            conv = _ConvT.of(layer, layer.weight, self.shape, out_shape) if isinstance(layer, nn.Conv2d) else None
            self._pending = (w, b, l2, self.cur, conv)
        else:
            w0, b0, _, src, conv0 = self._pending
            scale = _scalar(conv0, w0)
            if scale is None:
                merged, conv = w @ w0, None
            else:
                # After a 1×1 one-channel convolution (an input normalisation, w0 = a·I) the merged
                # map is the next convolution with weight a·W: it keeps its transposed convolution.
                merged = w * torch.diagonal(w0)
                conv = (_ConvT.of(layer, layer.weight * scale, self.shape, out_shape)
                        if isinstance(layer, nn.Conv2d) else None)
            self._pending = (merged, w @ b0 + b, merged.norm(dim=1), src, conv)
        self.shape = out_shape

    def sequential(self, ops: Sequence[Op], t: float = 0.0) -> None:
        """Append a run of layers; a field's :class:`ConcatConv2d` is read at time ``t``."""
        for where, layer in ops:
            if isinstance(layer, nn.ReLU):
                src = self.flush()
                self.cur = self._append(_Node("relu", (src,), dim=self.nodes[src].dim))
            elif isinstance(layer, nn.Identity):
                continue
            elif isinstance(layer, ConcatConv2d):
                self.field_conv(layer, t)
            elif isinstance(layer, (nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.Flatten)):
                self.affine(layer)
            else:
                raise GraphError(f"layer {where} ({type(layer).__name__}) has no dense affine–ReLU form")

    def field_conv(self, conv: ConcatConv2d, t: float) -> None:
        """A field convolution at time t: its matrix on the state, the time plane folded into its bias
        (b(t) = b(0) + t·(b(1) − b(0)), the plane's image being linear in t; matrices are cached)."""
        if self.block > 1:
            raise _LayoutError("ConcatConv2d inside a space-to-depth layout")
        key = (id(conv), self.shape)
        if key not in self._field_cache:
            src, tc = conv.conv, int(conv.time_channel)

            def apply_at(tv: float) -> Callable[[torch.Tensor], torch.Tensor]:
                return lambda h: src(torch.cat([torch.full_like(h[:, :1], tv), h], dim=1) if tc else h)

            w, b0, out_shape = _dense(apply_at(0.0), self.shape, src.weight)
            slope = _from_nchw(apply_at(1.0)(torch.zeros(1, *self.shape, dtype=w.dtype, device=w.device)))[0] - b0
            conv_t = _ConvT.of(src, src.weight[:, tc:], self.shape, out_shape)
            self._field_cache[key] = (w, b0, slope if tc else None, conv_t, out_shape)
        w, b0, slope, conv_t, out_shape = self._field_cache[key]
        b = b0 if slope is None else b0 + t * slope
        src = self.flush()
        self._pending = (w, b, w.norm(dim=1), src, conv_t)
        self.shape = out_shape

    def rk_step(self, flow: Flow, step: Step) -> None:
        """One Runge–Kutta step of the flow's field chain; a θ < 1 step outputs its interpolant."""
        y = self.flush()
        state_shape = self.shape
        a, c = flow.tableau.a_float, flow.tableau.c_float
        b = flow.output_row(step)
        ks: dict[int, int] = {}
        dim = self.nodes[y].dim
        for i, use in enumerate(flow.needed(b)):
            if not use:
                continue
            terms = [j for j in range(i) if a[i][j] != 0.0]
            self.cur = y if not terms else self._append(
                _Node("sum", (y, *(ks[j] for j in terms)), coef=(1.0, *(step.dt * a[i][j] for j in terms)), dim=dim))
            self.shape = state_shape
            self.sequential(step.field, step.t0 + c[i] * step.dt)
            ks[i] = self.flush()
            if self.shape != state_shape:
                raise GraphError(f"vector field of {flow.where} maps states {state_shape} to {self.shape}")
        terms = [i for i in ks if b[i] != 0.0]
        self.cur = self._append(_Node("sum", (y, *(ks[i] for i in terms)),
                                      coef=(1.0, *(step.dt * b[i] for i in terms)), dim=dim))
        self.shape = state_shape
