"""Shared check of the study tests: a resumed study recomputes nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from studies import StudyReport, run_study


def _recomputed(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a cached cell or model was recomputed on resume")


@pytest.fixture
def assert_resume_computes_nothing(monkeypatch: pytest.MonkeyPatch
                                   ) -> Callable[[str, Path, StudyReport, Sequence[tuple[Any, str]]], None]:
    """``check(name, out, report, targets)``: re-run study ``name`` in quick mode in ``out`` with
    every ``(owner, attribute)`` of ``targets`` (the functions that compute) made to fail; the
    tables must equal ``report``'s and ``cells.jsonl`` must not grow."""

    def check(name: str, out: Path, report: StudyReport, targets: Sequence[tuple[Any, str]]) -> None:
        lines = (out / "cells.jsonl").read_text().count("\n")
        for owner, attribute in targets:
            monkeypatch.setattr(owner, attribute, _recomputed)
        again = run_study(name, quick=True, out=out, progress=False)
        assert again.tables == report.tables
        assert (out / "cells.jsonl").read_text().count("\n") == lines

    return check
