"""benchmarks.alpha_ceiling on zoo `mlp`: the three radii are ordered, certified, and the run resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import alpha_ceiling
from benchmarks._cells import read_cells

needs_data = pytest.mark.skipif(not (Path(os.environ.get("ODE_ROBUSTNESS_DATA", "")) / "mnist").exists(),
                                reason="MNIST not found (set ODE_ROBUSTNESS_DATA)")


@needs_data
def test_alpha_ceiling_on_mlp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alpha_ceiling, "RESULTS", tmp_path)
    log = tmp_path / "rows.jsonl"
    assert alpha_ceiling.main(["--model", "mlp", "--indices", "0", "--log", str(log)]) == 0
    cells = read_cells(log)
    assert [c["part"] for c in cells] == list(alpha_ceiling.PARTS)
    (row,) = alpha_ceiling.rows_of(cells)
    names = ("crown", "alpha-default", "alpha-converged", "alpha-warm")
    crown, default, converged, warm = (row[k]["radius"] for k in names)
    # α-CROWN starts from CROWN's slopes and never returns less; more steps never certify less (to the rtol)
    assert 0 < crown <= default * (1 + 1e-6) and default <= converged * (1 + 2e-3)
    assert crown <= warm * (1 + 1e-6) and warm <= converged * (1 + 2e-3)
    rtol = {"crown": 1e-4, "alpha-warm": 2e-4}
    for k in names:
        assert row[k]["radius"] < row[k]["upper"]
        assert row[k]["upper"] - row[k]["radius"] <= 1e-7 + rtol.get(k, 1e-3) * row[k]["radius"]
    s = alpha_ceiling.summary(json.loads((tmp_path / "alpha_ceiling-mlp.json").read_text())["results"])
    assert s["n"] == 1 and s["ratio_of_medians"]["alpha-converged"] == pytest.approx(converged / crown)
    assert "alpha-converged / CROWN" in (tmp_path / "alpha_ceiling-mlp.md").read_text()
    # a missing radius is the only one computed again; the others are read back
    log.write_text("".join(json.dumps(c) + "\n" for c in cells if c["part"] != "alpha-warm"))
    assert alpha_ceiling.main(["--model", "mlp", "--indices", "0", "--log", str(log)]) == 0
    again = read_cells(log)
    assert again[:3] == [c for c in cells if c["part"] != "alpha-warm"] and again[3]["part"] == "alpha-warm"
    mtime = log.stat().st_mtime_ns
    assert alpha_ceiling.main(["--model", "mlp", "--indices", "0", "--log", str(log)]) == 0  # resumed: no new cell
    assert log.stat().st_mtime_ns == mtime and len(log.read_text().splitlines()) == 4
    with pytest.raises(SystemExit):
        alpha_ceiling.main(["--model", "mlp", "--indices", "-1"])
    # the sampled LP check: converged α-CROWN sits at the LP of its own earlier bounds (never above it)
    assert alpha_ceiling.main(["--model", "mlp", "--indices", "0", "--log", str(log), "--lp-check", "3"]) == 0
    (check,) = map(json.loads, (tmp_path / "alpha_ceiling_lp-mlp.jsonl").read_text().splitlines())
    gaps = [g for layer in check["layers"] for g in layer["gap_rel_width"]]
    assert len(gaps) == 6 and all(-1e-4 <= g <= 1e-3 for g in gaps), gaps
    assert all(lp >= a - 1e-4 for lp, a in zip(check["lp_margins"], check["alpha_margins"]))
    assert min(check["lp_margins"]) - min(check["alpha_margins"]) <= 1e-3
