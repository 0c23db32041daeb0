"""Per-layer constants against the explicit dense matrix of the layer."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lipbound import LipschitzError, conv2d_bound, conv2d_fft_bound, dense_matrix, layer_bound

COMBOS = [  # kernel, stride, padding, dilation, groups
    (3, 1, 1, 1, 1), (4, 2, 1, 1, 1), (3, 2, 0, 1, 1), (3, 1, 2, 2, 1), (5, 1, 2, 1, 1),
    (2, 3, 1, 1, 1), (3, 1, 1, 1, 2),
]


def _conv(k: int, s: int, p: int, d: int, g: int, seed: int) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(4, 6, k, stride=s, padding=p, dilation=d, groups=g)


def _dense(conv: nn.Conv2d, shape: tuple[int, ...], weight: torch.Tensor | None = None) -> torch.Tensor:
    w = (conv.weight if weight is None else weight).detach().double()
    return dense_matrix(lambda x: F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups), shape)


@pytest.mark.parametrize("combo", COMBOS)
def test_conv_l2_equals_dense_svd_and_never_below(combo: tuple[int, ...]) -> None:
    shape = (4, 9, 7)
    for seed in range(2):
        conv = _conv(*combo, seed)
        exact = float(torch.linalg.matrix_norm(_dense(conv, shape), 2))
        row = conv2d_bound(conv, shape, "2")
        assert row.guaranteed and row.exact
        assert row.upper >= exact
        assert row.upper == pytest.approx(exact, rel=1e-4)
        assert row.estimate <= exact * (1 + 1e-9)
        # the size-independent guaranteed bounds also never fall below the truth
        loose = conv2d_bound(conv, shape, "2", dense_limit=0)
        assert loose.guaranteed and not loose.exact and loose.upper >= exact
        fft = conv2d_fft_bound(conv.weight, shape[1:], conv.dilation, conv.groups)
        assert fft >= exact


def test_fft_bound_is_tight_for_circular_like_case() -> None:
    """A 1x1 convolution is the same matrix at every pixel: FFT bound = exact norm."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 1)
    exact = float(torch.linalg.matrix_norm(_dense(conv, (3, 4, 4)), 2))
    assert conv2d_fft_bound(conv.weight, (4, 4)) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("combo", COMBOS)
def test_conv_linf_is_exact_max_row_sum(combo: tuple[int, ...]) -> None:
    conv = _conv(*combo, 7)
    shape = (4, 8, 9)
    exact = float(_dense(conv, shape).abs().sum(dim=1).max())
    row = conv2d_bound(conv, shape, "inf")
    assert row.upper == pytest.approx(exact, rel=1e-12)


def test_linear_exact() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(7, 5)
    w = lin.weight.detach().double()
    assert layer_bound(lin, (7,), "2").upper == pytest.approx(float(torch.linalg.svdvals(w)[0]), rel=1e-8)
    assert layer_bound(lin, (7,), "inf").upper == pytest.approx(float(w.abs().sum(1).max()), rel=1e-12)


@pytest.mark.parametrize("time_channel", [True, False])
def test_concat_conv_state_part(time_channel: bool) -> None:
    from models.fields import ConcatConv2d

    torch.manual_seed(2)
    layer = ConcatConv2d(3, 4, time_channel).double()
    shape = (3, 5, 5)
    t = torch.tensor(0.7, dtype=torch.float64)
    # the affine map h -> layer(t, h) minus its value at 0 is the state operator
    zero = layer(t, torch.zeros(1, *shape, dtype=torch.float64))
    mat = dense_matrix(lambda h: layer(t, h) - zero, shape)
    mat = mat.detach()
    exact = float(torch.linalg.matrix_norm(mat, 2))
    row = layer_bound(layer, shape, "2")
    assert row.upper >= exact and row.upper == pytest.approx(exact, rel=1e-6)
    assert layer_bound(layer, shape, "inf").upper == pytest.approx(float(mat.abs().sum(1).max()), rel=1e-9)


def test_batchnorm_eval_and_pools_and_activations() -> None:
    torch.manual_seed(3)
    bn = nn.BatchNorm2d(3).eval()
    bn.running_var.uniform_(0.2, 2.0)
    bn.weight.data.uniform_(-2, 2)
    shape = (3, 4, 4)
    bnd = copy.deepcopy(bn).double()
    mat = dense_matrix(lambda x: bnd(x) - bnd(torch.zeros_like(x)), shape).detach()
    assert layer_bound(bn, shape, "2").upper == pytest.approx(float(torch.linalg.matrix_norm(mat, 2)), rel=1e-6)
    with pytest.raises(LipschitzError, match="eval"):
        layer_bound(nn.BatchNorm2d(3).train(), shape)

    avg = nn.AvgPool2d(3, stride=2, padding=1)
    mat = dense_matrix(avg, (2, 7, 7))
    assert layer_bound(avg, (2, 7, 7), "2").upper == pytest.approx(float(torch.linalg.matrix_norm(mat, 2)), rel=1e-6)
    assert layer_bound(avg, (2, 7, 7), "inf").upper == pytest.approx(float(mat.abs().sum(1).max()), rel=1e-9)

    assert layer_bound(nn.Sigmoid(), (5,)).upper == 0.25
    assert layer_bound(nn.ReLU(), (5,)).upper == 1.0


@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (3, 2)])
def test_maxpool_bound_holds(k: int, s: int) -> None:
    pool = nn.MaxPool2d(k, stride=s)
    shape = (2, 8, 8)
    row = layer_bound(pool, shape, "2")
    assert row.upper == pytest.approx(math.sqrt(math.ceil(k / s) ** 2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, *shape, generator=g)
    y = x + 0.1 * torch.randn(200, *shape, generator=g)
    ratio = (pool(x) - pool(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= row.upper
    assert layer_bound(pool, shape, "inf").upper == 1.0


def test_groupnorm_has_no_global_constant() -> None:
    row = layer_bound(nn.GroupNorm(2, 4), (4, 3, 3), "2")
    assert row.upper is None and not row.guaranteed and "no global Lipschitz constant" in row.reason
    # its local slope grows like 1/std(x) (until std ~ sqrt(eps)): not bounded by its weights
    gn = nn.GroupNorm(2, 4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64)
    d = torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64)
    gn = gn.double()
    with torch.no_grad():
        slopes = [float((gn(c * x + 1e-3 * c * d) - gn(c * x)).norm() / (1e-3 * c * d).norm())
                  for c in (1.0, 1e-1, 1e-2)]
    assert slopes[1] > 5 * slopes[0] and slopes[2] > 5 * slopes[1]


def test_bad_input_rejected() -> None:
    with pytest.raises(LipschitzError, match="norm"):
        layer_bound(nn.ReLU(), (3,), "1")
    with pytest.raises(LipschitzError, match="no Lipschitz rule"):
        layer_bound(nn.Softmax(dim=1), (3,))
    with pytest.raises(LipschitzError, match="channels"):
        conv2d_bound(nn.Conv2d(3, 2, 3), (4, 5, 5))
    with pytest.raises(LipschitzError, match="padding_mode"):
        conv2d_bound(nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular"), (3, 5, 5))
