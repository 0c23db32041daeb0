"""benchmarks.alpha_ceiling on zoo `mlp`: the three radii are ordered, certified, and the run resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import alpha_ceiling

needs_data = pytest.mark.skipif(not (Path(os.environ.get("ODE_ROBUSTNESS_DATA", "")) / "mnist").exists(),
                                reason="MNIST not found (set ODE_ROBUSTNESS_DATA)")


@needs_data
def test_alpha_ceiling_on_mlp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alpha_ceiling, "RESULTS", tmp_path)
    log = tmp_path / "rows.jsonl"
    assert alpha_ceiling.main(["--model", "mlp", "--indices", "0", "--log", str(log)]) == 0
    (row,) = map(json.loads, log.read_text().splitlines())
    names = ("crown", "alpha-default", "alpha-converged", "alpha-warm")
    crown, default, converged, warm = (row[k]["radius"] for k in names)
    # α-CROWN starts from CROWN's slopes and never returns less; more steps never certify less (to the rtol)
    assert 0 < crown <= default * (1 + 1e-6) and default <= converged * (1 + 2e-3)
    assert crown <= warm * (1 + 1e-6) and warm <= converged * (1 + 2e-3)
    rtol = {"crown": 1e-4, "alpha-warm": 2e-4}
    for k in names:
        assert row[k]["radius"] < row[k]["upper"]
        assert row[k]["upper"] - row[k]["radius"] <= 1e-7 + rtol.get(k, 1e-3) * row[k]["radius"]
    s = json.loads((tmp_path / "alpha_ceiling-mlp.json").read_text())["summary"]
    assert s["n"] == 1 and s["ratio_of_medians"]["alpha-converged"] == pytest.approx(converged / crown)
    assert "alpha-converged / CROWN" in (tmp_path / "alpha_ceiling-mlp.md").read_text()
    # a row without a variant gets only that variant computed, as a new line that replaces it
    del row["alpha-warm"]
    log.write_text(json.dumps(row) + "\n")
    assert alpha_ceiling.main(["--model", "mlp", "--indices", "0", "--log", str(log)]) == 0
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["alpha-converged"] == row["alpha-converged"] and "alpha-warm" in lines[1]
    mtime = log.stat().st_mtime_ns
    assert alpha_ceiling.main(["--model", "mlp", "--indices", "0", "--log", str(log)]) == 0  # resumed: no new row
    assert log.stat().st_mtime_ns == mtime and len(log.read_text().splitlines()) == 2
    with pytest.raises(SystemExit):
        alpha_ceiling.main(["--model", "mlp", "--jobs", "0"])
    # the sampled LP check: converged α-CROWN sits at the LP of its own earlier bounds (never above it)
    assert alpha_ceiling.main(["--model", "mlp", "--indices", "0", "--log", str(log), "--lp-check", "3"]) == 0
    (check,) = map(json.loads, (tmp_path / "alpha_ceiling_lp-mlp.jsonl").read_text().splitlines())
    gaps = [g for layer in check["layers"] for g in layer["gap_rel_width"]]
    assert len(gaps) == 6 and all(-1e-4 <= g <= 1e-3 for g in gaps), gaps
    assert all(lp >= a - 1e-4 for lp, a in zip(check["lp_margins"], check["alpha_margins"]))
    assert min(check["lp_margins"]) - min(check["alpha_margins"]) <= 1e-3
