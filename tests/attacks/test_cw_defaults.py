"""CW's defaults: stated once, and strong enough on binary (MNIST-like) images and the zoo LeNet-5.

The former defaults (100 steps, 9 rounds, c0 = 1e-3, lr = 1e-2) broke none of the binary images
below and ~30 % of the zoo LeNet-5 (issue 12).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import torch

from attacks import CW
from attacks.cw import CW_DEFAULTS
from models import MLP


def binary_problem(seed: int = 0, n: int = 16, size: int = 28, p_on: float = 0.2):
    """A two-class linear classifier on binary images (every pixel 0 or 1, like MNIST's strokes).

    A pixel at 0 can only rise and one at 1 only fall, so the minimal L2 perturbation moves
    the usable pixels along the weight difference u (u_i > 0 at 0, u_i < 0 at 1): r = gap / ‖u⁺‖.
    The examples kept need no pixel to move by more than 0.9 (the box never binds further).

    Returns:
        (model, x (n, 1, size, size), y (n,), analytic minimal L2 (n,)).
    """
    gen = torch.Generator().manual_seed(seed)
    model = MLP(hidden=(), input_size=size, num_classes=2).eval()
    lin = model.net[1]
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.1)
        lin.bias.zero_()
    x = (torch.rand(4 * n, 1, size, size, generator=gen) < p_on).float()
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = lin.weight.detach()
    u = w[1 - y] - w[y]
    gap = (z.gather(1, y[:, None]) - z.gather(1, (1 - y)[:, None])).squeeze(1)
    usable = torch.where(x.flatten(1) == 0, u.clamp_min(0), (-u).clamp_min(0))
    r = gap / usable.norm(dim=1)
    keep = ((r > 0.5) & (r * usable.amax(1) / usable.norm(dim=1) < 0.9)).nonzero().squeeze(1)[:n]
    assert keep.numel() == n
    return model, x[keep], y[keep], r[keep]


def test_defaults_reach_the_analytic_minimum_on_binary_images() -> None:
    model, x, y, r = binary_problem()
    res = CW(model)(x, y)
    assert bool(res.success.all()), res.summary()
    ratio = res.l2 / r
    assert float(ratio.max()) <= 1.05, float(ratio.max())
    assert float(ratio.min()) >= 1 - 1e-3


def test_early_abort_does_not_stop_on_the_initial_plateau() -> None:
    # Saturated pixels do not move for tens of steps: the loss is flat there, not converged.
    model, x, y, _ = binary_problem(seed=1, n=8)
    with_abort = CW(model, abort_early=True)(x, y)
    without = CW(model, abort_early=False)(x, y)
    assert bool(with_abort.success.all()) and bool(without.success.all())
    assert with_abort.iterations <= without.iterations


def test_former_defaults_fail_there() -> None:
    # Why the defaults changed: lr 1e-2 cannot move a saturated pixel within 100 steps.
    model, x, y, _ = binary_problem(seed=2, n=8)
    res = CW(model, steps=100, binary_search_steps=9, initial_const=1e-3, lr=1e-2)(x, y)
    assert res.success_rate == 0.0


def test_defaults_are_stated_once() -> None:
    params = inspect.signature(CW.__init__).parameters
    for key, value in CW_DEFAULTS.items():
        assert params[key].default == value, key
    from benchmarks.attacks_vs_peers import build_parser

    args = build_parser().parse_args([])
    assert (args.cw_steps, args.cw_binary_steps, args.cw_initial_const, args.cw_lr) == (
        CW_DEFAULTS["steps"], CW_DEFAULTS["binary_search_steps"], CW_DEFAULTS["initial_const"], CW_DEFAULTS["lr"])


def _have_data_and_zoo() -> bool:
    from models.zoo import available

    root = os.environ.get("ODE_ROBUSTNESS_DATA")
    return bool(root) and Path(root, "mnist").exists() and "lenet5" in available()


@pytest.mark.skipif(not _have_data_and_zoo(), reason="needs ODE_ROBUSTNESS_DATA and the lenet5 zoo checkpoint")
def test_defaults_break_every_correct_image_of_zoo_lenet5() -> None:
    from models.data import load_dataset
    from models.zoo import load

    torch.manual_seed(0)
    model = load("lenet5")
    x, y = load_dataset("mnist-t10k", "test", n=20)
    res = CW(model)(x, y)
    assert res.success_rate == 1.0, res.summary()
    assert float(res.l2[res.broken].median()) < 2.0


class ScoredApart(torch.nn.Module):
    """Linear logits, shifted by ``jitter`` towards class 0 in passes without gradients.

    A stand-in for dopri5's step control shared across the batch: the passes that score a
    batch of returned points see slightly other logits than the search's passes did.
    """

    def __init__(self, base: torch.nn.Module, jitter: float) -> None:
        super().__init__()
        self.base, self.jitter = base, jitter
        self.num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base(x)
        if not x.requires_grad:
            z = z + self.jitter * torch.tensor([1.0, -1.0])
        return z


def test_returned_points_are_confirmed_by_a_pass_of_the_returned_batch(linear, monkeypatch) -> None:
    base, x, y, _, r_2 = linear(seed=7, n=24)
    model = ScoredApart(base, jitter=0.005).eval()
    res = CW(model)(x, y)
    assert bool(res.success.all()), res.summary()
    assert float((res.l2 / r_2).max()) <= 1.6
    # Without the confirming pass, boundary points found by the search are lost when scored.
    monkeypatch.setattr(CW, "_confirm", lambda self, x, y, best_x, found: best_x)
    assert not bool(CW(model)(x, y).success.all())
