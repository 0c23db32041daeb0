"""Quick mode of the ``gradient-masking`` study: consistent tables, exact identities between its columns, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from studies import gradient_masking as gm
from studies import run_study


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("gradient-masking")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_study("gradient-masking", quick=True, out=out, progress=False), out
    finally:
        torch.set_num_threads(previous)


def test_columns_obey_the_ensemble_identities(quick_run: tuple[Any, Path]) -> None:
    report, out = quick_run
    table = report.tables[0]
    assert [r[0] for r in table.rows] == list(gm.deployments())
    for name, clean, white, transfer, square, aa, every, *_ in table.rows:
        assert 0 <= every <= min(white, transfer, square, aa) and max(white, transfer, square, aa) <= clean
        # AutoAttack's first member is APGD-CE with the same seed on every point: it can only add breaks
        assert aa <= white, name
    twin = table.rows[-1]
    assert twin[2] == twin[3]  # on the fixed-step twin the surrogate is the deployed solver: same attack
    saved = json.loads((out / "gradient-masking.json").read_text())
    assert saved["quick"] is True and saved["protocol"]["eps"] == gm.EPS
    assert (out / report.figures[0]).read_bytes()[:4] == b"\x89PNG"
    assert any("survive" in f for f in report.findings)


def test_resume_recomputes_nothing(quick_run: tuple[Any, Path], assert_resume_computes_nothing) -> None:
    report, out = quick_run
    assert_resume_computes_nothing("gradient-masking", out, report, [(gm, "_cell")])


def test_merge_concatenates_ranges_and_sums_costs() -> None:
    def part(clean: list[bool], white: list[bool], seconds: float, queries: float) -> dict[str, Any]:
        return {"clean": clean, "white": white, "doubled": white[:1], "doubled_base": white[:1],
                "white_cost": {"seconds": seconds, "nfe": 10, "queries": queries}}

    merged = gm.merge([part([True, True], [True, False], 1.0, 4.0), part([True], [False], 2.5, 10.0)])
    assert merged["clean"] == [True, True, True] and merged["white"] == [True, False, False]
    assert merged["doubled"] == [True, False] and merged["doubled_base"] == [True, False]
    # queries are averaged per image: (2·4 + 1·10) / 3
    assert merged["white_cost"] == {"seconds": 3.5, "nfe": 20, "queries": 6.0}


def test_quick_run_uses_several_ranges_and_the_paired_table(quick_run: tuple[Any, Path]) -> None:
    report, out = quick_run
    keys = [json.loads(line)["key"] for line in (out / "cells.jsonl").read_text().splitlines()]
    assert len(keys) == 2 * len(gm.deployments()) and sum("images=3-5" in k for k in keys) == len(gm.deployments())
    assert list(report.data) == list(gm.deployments())
    versus = report.tables[2]
    assert [r[0].split(" − ")[0] for r in versus.rows] == list(gm.deployments())[1:]
    for name, diff, se, only_here, only_first in versus.rows:
        n = len(report.data[list(gm.deployments())[0]]["robust_all"])
        assert diff == round(100 * (only_here - only_first) / n, 1) and se >= 0
