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
