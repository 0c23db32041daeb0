"""Quick mode of the ``tightness`` study: outputs, the order certified ≤ exact ≤ attack, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from studies import run_study
from studies import tightness
from verify._milp import STATUSES


def test_tightness_quick(tmp_path: Path, assert_resume_computes_nothing) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_study("tightness", quick=True, out=tmp_path, progress=False)
    finally:
        torch.set_num_threads(previous)
    assert (tmp_path / "tightness.md").exists() and (tmp_path / "tightness.json").exists()
    for fig in report.figures:
        assert (tmp_path / fig).read_bytes()[:4] == b"\x89PNG"
    json.dumps(report.to_json())
    radii = report.tables[0]
    assert [r[0] for r in radii.rows] == ["mlp", "ode-small"]
    assert all(r[-1] == 0 for r in radii.rows), "certified <= exact <= attack violated"
    for name, recs in report.data["records"].items():
        for r in recs:
            if not r["correct"]:
                continue
            crown = r["radii"]["crown"]["radius"]
            assert 0 < crown <= r["attack"]
            for m, v in r["radii"].items():
                assert v["radius"] <= r["attack"] + 1e-6, (name, m)
            # α-CROWN's search starts at CROWN's radius and BaB's at α-CROWN's, which they certify too
            for m in ("alpha-crown", "bab"):
                if m in r["radii"]:
                    assert r["radii"][m]["radius"] >= crown * (1 - 1e-6), (name, m)
            # LP-all (searched from α-CROWN's radius) is the ceiling of α-CROWN and below the exact radius
            lp = r["radii"]["lp-all"]["radius"]
            assert lp >= r["radii"]["alpha-crown"]["radius"] * (1 - 1e-6), name
            if r["exact"]["radius"] is not None:
                assert lp <= r["exact"]["radius"] * (1 + 1e-4) + 1e-6, name
            if "bab" in r["radii"]:
                assert r["radii"]["bab"]["radius"] >= r["radii"]["alpha-crown"]["radius"] * (1 - 1e-6), name
            ex = r["exact"]
            assert ex["status"] in STATUSES
            assert ex["lower"] <= (ex["radius"] if ex["radius"] is not None else math.inf)
            assert ex["lower"] <= r["attack"] + 1e-6
            if ex["radius"] is not None:
                assert crown <= ex["radius"] + 1e-6 and ex["model_margin"] <= 1e-4
    names = ("_attack_radii", "_radius", "_bab_radius", "_exact", "_unstable")
    assert_resume_computes_nothing("tightness", tmp_path, report, [(tightness, n) for n in names])
