"""AttackResult counts inputs that were misclassified before the attack apart, as evaluate() does."""

from __future__ import annotations

import re

import torch

from attacks import CW, PGD, evaluate


def test_already_misclassified_are_reported_apart(linear) -> None:
    model, x, y, _, r_2 = linear(seed=4, n=10)
    y = y.clone()
    y[:3] = 1 - y[:3]  # the model now misclassifies these before any perturbation
    res = CW(model)(x, y)
    assert res.clean_correct.tolist() == [False] * 3 + [True] * 7
    assert res.already_misclassified == 3
    assert res.broken.tolist() == [False] * 3 + res.success[3:].tolist()
    assert res.success_rate == float(res.success[3:].float().mean()) == 1.0
    line = res.summary()
    assert "success 100.00% of 7 correctly classified" in line and "3 of 10 already misclassified" in line, line
    median = float(re.search(r"median (\d+\.\d+)", line).group(1))
    assert abs(median - float(res.l2[3:].median())) < 1e-4
    assert median >= 0.9 * float(r_2[3:].min())  # not the distance 0 of the misclassified ones


def test_success_rate_matches_evaluate(linear) -> None:
    model, x, y, r_inf, _ = linear(seed=5, n=20)
    y = y.clone()
    y[::4] = 1 - y[::4]
    ok = torch.sort(r_inf[torch.arange(20) % 4 != 0]).values
    eps = float(ok[6] + ok[7]) / 2  # between two radii: PGD's success is decided by r <= eps alone
    attack = PGD(model, eps, steps=20, seed=0)
    res = attack(x, y)
    report = evaluate(model, x, y, attack, checks=False)
    assert res.already_misclassified == 5
    assert abs(res.success_rate - report.success_rate) < 1e-6
    assert report.clean_accuracy == 0.75


def test_no_misclassified_keeps_the_plain_rate(linear) -> None:
    model, x, y, _, _ = linear(seed=6, n=8)
    res = CW(model, steps=20, binary_search_steps=2)(x, y)
    assert res.already_misclassified == 0 and bool(res.clean_correct.all())
    assert res.success_rate == float(res.success.float().mean())
    assert "0 of 8 already misclassified" in res.summary()
