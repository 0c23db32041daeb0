"""Quick modes of the ``step-size`` and ``bound-vs-attack`` studies: shapes, ranges, theory, resume."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from studies import StudyReport, run_study
from studies import bound_vs_attack as bva
from studies import step_size


def _run(name: str, out: Path) -> tuple[StudyReport, Path]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_study(name, quick=True, out=out, progress=False), out
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def step_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StudyReport, Path]]:
    yield _run("step-size", tmp_path_factory.mktemp("step-size"))


@pytest.fixture(scope="module")
def bound_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StudyReport, Path]]:
    yield _run("bound-vs-attack", tmp_path_factory.mktemp("bound-vs-attack"))


def _col(table: Any, title: str) -> int:
    return table.columns.index(title)


# ----------------------------------------------------------------------------- step-size


def test_step_size_outputs(step_run: tuple[StudyReport, Path]) -> None:
    report, out = step_run
    assert (out / "step-size.md").exists() and (out / "step-size.json").exists()
    for fig in report.figures:
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    part_a, part_b, boundary = report.tables
    assert [r[0] for r in part_a.rows] == [f"{s:g}" for s in step_size.STEPS_QUICK]
    assert len(part_b.rows) == 4 * len(step_size.EPS_QUICK)
    assert all(r[-1] is not None for r in part_b.rows if r[0] == "fgsm" and r[1] == 0)  # the seed's 99.05 / 99.33
    json.dumps(report.to_json())


def test_step_size_part_a_facts(step_run: tuple[StudyReport, Path]) -> None:
    report, _ = step_run
    part_a = report.tables[0]
    clean = _col(part_a, "clean acc %")
    for row in part_a.rows:
        assert 0 <= row[clean] <= 100
        assert row[clean] > 30, "2 epochs on 2000 images must train well above chance"
        for e in step_size.WHITEBOX_EPS:
            # robust accuracy counts correct-and-unbroken examples: never above clean accuracy
            assert row[_col(part_a, f"FGSM ε={e:g} acc %")] <= row[clean]
    change = [r[_col(part_a, "median ‖h_n−h_0‖/‖h_0‖")] for r in part_a.rows]
    bound = [r[_col(part_a, "ℓ2 bound ∏(1+sK_k)")] for r in part_a.rows]
    # steps are listed from s = 1 down: the residual blocks move the state less and less
    assert change == sorted(change, reverse=True) and change[-1] < 1e-6 < change[0]
    assert all(b >= 1 for b in bound) and bound == sorted(bound, reverse=True)
    assert bound[-1] == pytest.approx(1.0, abs=1e-6)


def test_step_size_part_b_facts(step_run: tuple[StudyReport, Path]) -> None:
    report, _ = step_run
    curves = report.data["part_b"]
    for model in ("ode", "resnet"):
        assert curves["fgsm"][model]["0"] >= 90, "zoo models are >= 98% accurate on held-out data"
        for attack in ("fgsm", "pgd", "di2fgsm"):
            for e in step_size.EPS_QUICK[1:]:
                assert curves[attack][model][f"{e:g}"] <= curves[attack][model]["0"]
        accs = [curves["boundary"][model]["acc"][f"{e:g}"] for e in step_size.EPS_QUICK]
        assert accs == sorted(accs, reverse=True), "one Boundary run read at growing ε can only lose accuracy"
        # PGD with 40 steps is at least as strong as one FGSM step at the largest ε (up to a little noise)
        top = f"{step_size.EPS_QUICK[-1]:g}"
        assert curves["pgd"][model][top] <= curves["fgsm"][model][top] + 10


def test_step_size_resume_computes_nothing(step_run: tuple[StudyReport, Path], assert_resume_computes_nothing
                                           ) -> None:
    report, out = step_run
    names = ("train", "evaluate", "accuracy", "_boundary_curve", "_residual_stats")
    assert_resume_computes_nothing("step-size", out, report, [(step_size, n) for n in names])


# ----------------------------------------------------------------------------- bound-vs-attack


def test_bound_vs_attack_tables(bound_run: tuple[StudyReport, Path]) -> None:
    report, out = bound_run
    radii, growth = report.tables
    assert [r[0] for r in radii.rows] == list(bva.MODEL_NAMES)
    assert all(r[_col(radii, "unsound")] == 0 for r in radii.rows)
    alpha = _col(radii, "median r α-CROWN")
    rows = {r[0]: r for r in radii.rows}
    assert rows["ode"][alpha] is None and rows["mlp"][alpha] is not None
    # every skipped α-CROWN cell says why: too slow on `ode`, and in quick mode on LeNet-5
    assert "`ode`: run on 0 of 2 examples: not run" in radii.note
    assert rows["lenet5"][alpha] is None and "`lenet5`: run on 0 of 2 examples: not run in quick mode" in radii.note
    assert [r[0] for r in growth.rows] == ["ode", "resnet"]
    for fig in report.figures:
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"


def test_bound_vs_attack_soundness_per_example(bound_run: tuple[StudyReport, Path]) -> None:
    report, _ = bound_run
    for name, recs in report.data["records"].items():
        assert len(recs) == 2
        for r in recs:
            assert r["correct"] and r["empirical"] is not None and 0 < r["empirical"] <= bva.EPS_MAX
            for m, v in r["methods"].items():
                assert 0 <= v["radius"] <= r["empirical"] + 1e-6, (name, m)
            if "alpha-crown" in r["methods"]:
                # α-CROWN starts its search at the CROWN radius and its bounds are at least CROWN's
                assert r["methods"]["alpha-crown"]["radius"] >= r["methods"]["crown"]["radius"] - 1e-9
    mlp = report.data["records"]["mlp"]
    assert all(r["methods"]["crown"]["radius"] > 0 for r in mlp)


def test_bound_vs_attack_growth_theorem(bound_run: tuple[StudyReport, Path]) -> None:
    report, _ = bound_run
    for g in report.data["growth"]:
        sym = g["symbolic"]
        assert len(sym) == g["n_steps"] and sym == sorted(sym) and sym[0] >= 1
        # the theorem: measured growth and the local Jacobian norm stay below the symbolic bound, step by step
        for curve in g["measured"]:
            assert len(curve) == g["n_steps"]
            assert all(c <= s * (1 + 1e-5) for c, s in zip(curve, sym))
        assert g["jacobian"] <= sym[-1]
        assert g["seed_bound"][-1] == pytest.approx(math.exp(g["end_time"] * g["K"]), rel=1e-9)
    ode = next(g for g in report.data["growth"] if g["model"] == "ode")
    # the 3/8-rule RK4 factor exceeds e^{hK} at this hK: the seed's e^{(b-t0)K} is no bound here
    assert ode["symbolic"][-1] > ode["seed_bound"][-1]


def test_bound_vs_attack_resume_computes_nothing(bound_run: tuple[StudyReport, Path], assert_resume_computes_nothing
                                                 ) -> None:
    report, out = bound_run
    names = ("_radius", "empirical_radius", "jacobian_norm", "train", "_growth_row")
    assert_resume_computes_nothing("bound-vs-attack", out, report, [(bva, n) for n in names])
