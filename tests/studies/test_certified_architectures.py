"""Quick mode of the ``certified-architectures`` study: soundness per image, monotonicity, statistics, resume."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from studies import StudyReport, run_study
from studies import certified_architectures as ca


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StudyReport, Path]]:
    out = tmp_path_factory.mktemp("certified-architectures")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield run_study(ca.NAME, quick=True, out=out, progress=False), out
    finally:
        torch.set_num_threads(previous)


def _cells(out: Path) -> dict[str, object]:
    return {json.loads(line)["key"]: json.loads(line)["value"]
            for line in (out / "cells.jsonl").read_text().splitlines() if line.strip()}


def test_outputs_and_per_image_soundness(quick_run: tuple[StudyReport, Path]) -> None:
    report, out = quick_run
    assert (out / f"{ca.NAME}.md").exists() and json.loads((out / f"{ca.NAME}.json").read_text())["quick"]
    assert (out / report.figures[0]).read_bytes()[:4] == b"\x89PNG"
    cells = _cells(out)
    for name, _ in ca.MODELS:
        clean = cells[f"{name}/clean/n12"]
        for eps in (0.1, 0.3):
            pgd = cells[f"{name}/pgd10x1/eps{eps:g}/n12/seed0"]
            ibp = cells[f"{name}/ibp/eps{eps:g}/n12"]["certified"]
            crown = cells[f"{name}/crown/eps{eps:g}/n4/pgd-skip10x1"]["certified"]
            # certified => PGD finds nothing => correctly classified, image by image
            assert all(p <= c for p, c in zip(pgd, clean))
            assert all(i <= p for i, p in zip(ibp, pgd)), (name, eps, "IBP certificate beaten by PGD")
            assert all(c <= p for c, p in zip(crown, pgd[:4])), (name, eps, "CROWN certificate beaten by PGD")
        # IBP boxes are nested in ε: certified at 0.3 implies certified at 0.1
        hi, lo = cells[f"{name}/ibp/eps0.3/n12"]["certified"], cells[f"{name}/ibp/eps0.1/n12"]["certified"]
        assert all(a <= b for a, b in zip(hi, lo))
    assert any(cells["ode-cert-0.1/ibp/eps0.1/n12"]["certified"])  # the IBP-trained ODE-net certifies at 0.1
    assert all(v["violations"] == 0 for name, _ in ca.MODELS for v in report.data[name]["eps"].values())
    # one comparison family per recipe: the dead-field IBP ODE-net and the live-field one
    recipes = {r["recipe"]: r for r in report.data["comparison"]}
    assert set(recipes) == {recipe for recipe, _, _ in ca.COMPARISONS}
    assert report.data["ode-cert-0.1"]["field_activity"] == {"block.field.act": 0.0}
    assert report.data["ode-cert-0.1-mtl-ibp"]["field_activity"]["block.field.act"] > 0.05
    assert sum(r["recipe"] == ca.COMPARISONS[1][0] for r in report.data["comparison"]) == 2  # one ResNet x 2 eps


def test_growth_bound_is_the_euler_formula(quick_run: tuple[StudyReport, Path]) -> None:
    lip = _cells(quick_run[1])["ode-cert-0.1/lipschitz"]
    g = lip["growth_2"]
    assert g["n"] == 2 and g["h"] == pytest.approx(0.5)
    assert g["value"] == pytest.approx((1 + g["h"] * g["K"]) ** g["n"], rel=1e-9)


def test_paired_difference_matches_brute_force() -> None:
    rng = random.Random(3)
    a = [rng.random() < 0.7 for _ in range(200)]
    b = [rng.random() < 0.5 for _ in range(200)]
    d, se = ca.paired_difference(a, b)
    diffs = [int(u) - int(v) for u, v in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    assert d == pytest.approx(mean)
    # the paired SE is the plug-in standard error of the mean of the per-image differences
    assert se == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in diffs) / len(diffs)) / math.sqrt(len(diffs)))
    assert ca.proportion(30, 120) == pytest.approx((0.25, math.sqrt(0.25 * 0.75 / 120)))


def test_resume_computes_nothing(quick_run: tuple[StudyReport, Path], assert_resume_computes_nothing) -> None:
    report, out = quick_run
    assert_resume_computes_nothing(ca.NAME, out, report,
                                   [(ca, "_pgd_holds"), (ca, "_certified"), (ca, "_lipschitz")])
