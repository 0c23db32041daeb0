"""On a linear classifier the optimal L∞ / L2 perturbations are analytic; the attacks must reach them."""

from __future__ import annotations

import torch

from attacks import CW, FGSM, PGD, minimal_eps


def test_fgsm_reaches_linf_and_l2_optimum(linear) -> None:
    model, x, y, r_inf, r_2 = linear()
    for norm, r in (("inf", r_inf), ("2", r_2)):
        above = FGSM(model, r * 1.001, norm)(x, y)
        below = FGSM(model, r * 0.999, norm)(x, y)
        assert bool(above.success.all()), norm
        assert not bool(below.success.any()), norm


def test_pgd_reaches_optimum(linear) -> None:
    model, x, y, r_inf, r_2 = linear(seed=1)
    linf = PGD(model, r_inf * 1.001, "inf", steps=20, seed=3)(x, y)
    assert bool(linf.success.all())
    l2 = PGD(model, r_2 * 1.001, "2", steps=20, random_start=False)(x, y)
    assert bool(l2.success.all())
    assert not bool(PGD(model, r_2 * 0.999, "2", steps=20)(x, y).success.any())


def test_minimal_eps_finds_analytic_radius(linear) -> None:
    model, x, y, r_inf, r_2 = linear(seed=2)
    tol = 1e-3
    for norm, r in (("inf", r_inf), ("2", r_2)):
        for attack, kw in (("fgsm", {}), ("pgd", {"steps": 10, "random_start": False})):
            res = minimal_eps(model, x, y, norm=norm, attack=attack, eps_max=1.0, tol=tol, **kw)
            assert bool(((res.eps - r).abs() <= tol).all()), (norm, attack, float((res.eps - r).abs().max()))
            assert bool((res.eps >= r * (1 - 1e-4)).all())  # nothing beats the optimum
            assert bool((res.lower <= r + 1e-6).all())


def test_minimal_eps_zero_for_misclassified_and_inf_when_out_of_reach(linear) -> None:
    model, x, y, r_inf, _ = linear(seed=3, n=8)
    y = y.clone()
    y[0] = 1 - y[0]
    res = minimal_eps(model, x, y, norm="inf", attack="fgsm", eps_max=float(r_inf[1:].min()) / 2, tol=1e-3)
    assert float(res.eps[0]) == 0.0
    assert bool(torch.isinf(res.eps[1:]).all())


def test_cw_within_five_percent_of_minimal_l2(linear) -> None:
    model, x, y, _, r_2 = linear(seed=4, n=24)
    # lr 1e-2 (not the default 0.1, which reaches saturated pixels in 100 steps): fine steps near the optimum
    res = CW(model, steps=300, binary_search_steps=8, initial_const=0.1, lr=1e-2)(x, y)
    assert bool(res.success.all())
    ratio = res.l2 / r_2
    assert float(ratio.max()) <= 1.05, float(ratio.max())
    assert float(ratio.min()) >= 1 - 1e-3
