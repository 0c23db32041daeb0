"""Quick modes of the ``tolerance`` and ``tolerance-randomization`` studies, their resume, and the vote ROC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from studies import StudyError, run_study
from studies import tolerance as tol_study
from studies import tolerance_randomization as rand_study


def _quick_run(name: str, out: Path) -> Any:
    # Module fixtures run before the function-scoped single-thread fixture of tests/conftest.py.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_study(name, quick=True, out=out, progress=False)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tolerance_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("tolerance")
    return _quick_run("tolerance", out), out


@pytest.fixture(scope="module")
def randomization_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("randomization")
    return _quick_run("tolerance-randomization", out), out


def test_tolerance_tables_are_consistent(tolerance_run: tuple[Any, Path]) -> None:
    report, out = tolerance_run
    t1, t2, t3 = report.tables
    assert len(t1.rows) == 2 + len(tol_study.TAU_GRID) and len(t1.columns) == 10
    assert len(t2.rows) == len(tol_study.TAU_GRID) and len(t3.rows) == len(tol_study.TAU_GRID)
    ode_rows = [r for r in t1.rows if r[0] == "ode-chen"]
    assert [r[1] for r in ode_rows] == [tol_study.tau_key(t) for t in tol_study.TAU_GRID]
    for row in ode_rows:
        assert 0 <= row[2] <= 10, row  # the zoo model's error stays low at every tolerance
        assert row[3] == tol_study.SEED_TABLE[row[1]][0] and row[5] == tol_study.SEED_TABLE[row[1]][1]
        assert row[4] is None or 0 <= row[4] <= 100
    nfe = [r[9] for r in ode_rows]
    assert all(a >= b for a, b in zip(nfe, nfe[1:])) and nfe[0] > nfe[-1], nfe  # looser τ, fewer steps
    # The matrix diagonal is the τ_attack = τ_test column; its τ_train row is the transfer table.
    for i, row in enumerate(t3.rows):
        assert row[1 + i] == ode_rows[i][4] == t2.rows[i][4]
        assert row[-1] == tol_study.SEED_TABLE[row[0]][1]
    train_row = [r for r in t3.rows if r[0] == tol_study.tau_key(tol_study.TAU_TRAIN)][0]
    assert list(train_row[1:-1]) == [r[1] for r in t2.rows]
    assert (out / "tolerance.md").exists() and (out / report.figures[0]).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "tolerance.json").read_text())
    assert saved["protocol"]["n"] == {"error": 100, "cw": 8} and saved["quick"] is True


def test_tolerance_resumes_without_recomputing(tolerance_run: tuple[Any, Path], assert_resume_computes_nothing
                                               ) -> None:
    report, out = tolerance_run
    assert_resume_computes_nothing("tolerance", out, report,
                                   [(tol_study, "CW"), (tol_study, "train"), (tol_study, "accuracy")])


def test_randomization_tables_and_operating_point(randomization_run: tuple[Any, Path]) -> None:
    report, out = randomization_run
    t1, t2 = report.tables
    assert [r[0] for r in t1.rows] == list(rand_study.V_GRID)
    assert [r[0] for r in t2.rows] == list(rand_study.ATTACKS)
    for v, auc, seed_auc, v_min, nat_acc, _, adv_rej, _, acc_accepted, defended in t1.rows:
        assert auc is None or 0 <= auc <= 1
        assert seed_auc is None and 0 <= v_min < v
        assert nat_acc >= 90  # the operating point keeps at least 90% of natural images
        assert adv_rej is None or 0 <= adv_rej <= 100
        assert acc_accepted >= 75 and 0 <= defended <= 100
    for row in t2.rows:
        aucs = row[5:9]
        assert all(a is None or 0 <= a <= 1 for a in aucs)
    cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    natural = [c["value"] for c in cells if c["key"].startswith("votes natural")][0]
    assert len(natural["labels"]) == max(rand_study.V_GRID) and all(len(v) == 8 for v in natural["labels"])
    assert all(rand_study.LOW <= t <= rand_study.HIGH for group in natural["taus"] for t in group)
    assert len(natural["taus"]) == -(-8 // rand_study.VOTE_GROUP)  # one draw of V tolerances per group


def test_randomization_resumes_without_recomputing(randomization_run: tuple[Any, Path],
                                                   assert_resume_computes_nothing) -> None:
    report, out = randomization_run
    assert_resume_computes_nothing("tolerance-randomization", out, report, [(rand_study, "CW"), (rand_study, "_votes")])


def test_vote_roc_area_and_endpoints() -> None:
    fpr, tpr, auc = rand_study.vote_roc([5, 5, 5], [1, 2, 3], 5)
    assert auc == 1.0 and (fpr[0], tpr[0]) == (1.0, 1.0) and (fpr[-1], tpr[-1]) == (0.0, 0.0)
    assert rand_study.vote_roc([4, 4], [4, 4], 5)[2] == 0.5
    assert rand_study.vote_roc([1, 2], [5, 5], 5)[2] == 0.0
    # Mann–Whitney with ties counted one half: (0.5 + 1 + 1 + 1) / 4.
    assert rand_study.vote_roc([3, 5], [3, 1], 5)[2] == pytest.approx(0.875)
    with pytest.raises(StudyError):
        rand_study.vote_roc([], [1], 5)
