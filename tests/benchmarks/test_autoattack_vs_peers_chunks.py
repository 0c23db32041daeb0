"""The range cells of ``benchmarks.autoattack_vs_peers --chunk``: aggregation over the finished
ranges from image 0, the paired comparison, and resumption without recomputing a finished range."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from benchmarks import autoattack_vs_peers as bench
from benchmarks._cells import read_cells, resumable_cells


def _cell(start: int, ours: str, theirs: str, attack: str = "autoattack", cpu: tuple[float, float] = (1.0, 2.0)
          ) -> dict[str, Any]:
    side = {"seconds": 1.0, "max_linf": 0.1, "within_eps": True}
    return {"model": "lenet5", "attack": attack, "start": start, "stop": start + len(ours), "eps": 0.1,
            "norm": "inf", "steps": 100, "queries": 5000, "clean": len(ours),
            "ours": {**side, "cpu_seconds": cpu[0], "robust": ours},
            "torchattacks": {**side, "cpu_seconds": cpu[1], "robust": theirs}}


def test_paired_statistics_match_a_brute_force_count() -> None:
    rng = random.Random(0)
    ours = "".join(rng.choice("01") for _ in range(40))
    theirs = "".join(rng.choice("01") for _ in range(40))
    cells = [_cell(s, ours[s:s + 10], theirs[s:s + 10]) for s in (30, 0, 20, 10)]  # any order
    (row,) = bench.aggregate(cells)
    b = sum(o == "1" and t == "0" for o, t in zip(ours, theirs))
    c = sum(o == "0" and t == "1" for o, t in zip(ours, theirs))
    assert row["n"] == 40
    assert row["ours"]["robust"] == ours.count("1") and row["torchattacks"]["robust"] == theirs.count("1")
    assert (row["ours_only_robust"], row["theirs_only_robust"]) == (b, c)
    assert row["points_above_theirs"] == pytest.approx(100 * (ours.count("1") - theirs.count("1")) / 40)
    # s.e. of the mean of the per-image differences o_i - t_i (population variance / n)
    diffs = [int(o) - int(t) for o, t in zip(ours, theirs)]
    mean = sum(diffs) / 40
    se = math.sqrt(sum((v - mean) ** 2 for v in diffs) / 40 / 40)
    assert row["points_se"] == pytest.approx(100 * se)
    assert row["ours"]["cpu_seconds"] == pytest.approx(4.0) and row["time_ratio"] == pytest.approx(0.5)
    assert row["ours_only_robust_images"] == [i for i in range(40) if ours[i] == "1" and theirs[i] == "0"]


def test_only_the_ranges_from_image_zero_without_a_gap_count() -> None:
    cells = [_cell(0, "11", "10"), _cell(2, "00", "00"), _cell(6, "11", "11"),  # 4..5 missing
             _cell(2, "1", "1", attack="apgd")]  # no range from 0: no row
    (row,) = bench.aggregate(cells)
    assert row["n"] == 4 and row["ours"]["robust"] == 2 and row["torchattacks"]["robust"] == 1
    assert row["points_above_theirs"] == pytest.approx(25.0)
    assert not row["meets_targets"]  # 25 points above theirs


def test_targets_need_both_accuracy_and_cpu_time() -> None:
    (fast,) = bench.aggregate([_cell(0, "0" * 200 + "1", "0" * 201, cpu=(1.0, 2.0))])
    (slow,) = bench.aggregate([_cell(0, "01", "01", cpu=(3.0, 2.0))])
    assert fast["points_above_theirs"] == pytest.approx(100 / 201) and fast["meets_targets"]
    assert slow["points_above_theirs"] == 0.0 and not slow["meets_targets"]


def test_a_resumed_run_recomputes_only_the_missing_ranges(tmp_path: Path) -> None:
    path = tmp_path / "cells.jsonl"
    fields = ("model", "attack", "start", "stop", "steps", "queries")
    keys = [("lenet5", "autoattack", s, s + 2, 100, 5000) for s in (0, 2, 4)]
    calls = []

    def compute(model: str, attack: str, start: int, stop: int, steps: int, queries: int) -> dict[str, Any]:
        calls.append(start)
        return _cell(start, "10", "10")

    resumable_cells(path, fields, keys[:2], compute)
    resumable_cells(path, fields, keys, compute)
    assert calls == [0, 2, 4]
    assert [c["start"] for c in read_cells(path)] == [0, 2, 4]
    assert bench.aggregate(read_cells(path))[0]["n"] == 6


def test_chunk_below_one_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--chunk", "0", "--tag", "never_written"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (bench.RESULTS / "never_written.jsonl").exists()


def test_seeds_give_rows_of_their_own_and_old_cells_count_as_seed_zero(tmp_path: Path) -> None:
    path = tmp_path / "cells.jsonl"
    fields = ("model", "attack", "start", "stop", "steps", "queries", "seed")
    old = _cell(0, "10", "10", attack="square")  # written before --seed existed: no "seed" field
    path.write_text(json.dumps(old) + "\n")
    calls = []

    def compute(model: str, attack: str, start: int, stop: int, steps: int, queries: int, seed: int
                ) -> dict[str, Any]:
        calls.append((start, seed))
        return {**_cell(start, "11", "10", attack="square"), "seed": seed}

    keys = [("lenet5", "square", 0, 2, 100, 5000, s) for s in (0, 1)]
    resumable_cells(path, fields, keys, compute, defaults={"seed": 0})
    assert calls == [(0, 1)]  # seed 0's range is the old cell
    rows = bench.aggregate(read_cells(path))
    assert [(r["seed"], r["ours"]["robust"]) for r in rows] == [(0, 1), (1, 2)]
    table = bench._markdown(rows)
    assert "| square |" in table and "| square (seed 1) |" in table


@pytest.mark.parametrize("argv", [["--seed", "1"], ["--chunk", "50", "--seed", "-1"]])
def test_a_seed_without_chunk_or_below_zero_is_refused_in_one_line(argv: list[str],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main([*argv, "--tag", "never_written"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (bench.RESULTS / "never_written.jsonl").exists()
