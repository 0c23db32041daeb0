"""benchmarks.live_field: a dead field is reported dead, a live one alive, and the paired
differences agree with the totals."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import live_field


def test_dead_and_live_fields(tmp_path: Path) -> None:
    out = tmp_path / "lf"
    assert live_field.main(["ode-cert-0.1", "ode-cert-0.1-mtl", "--n", "6", "--steps", "5", "--restarts", "1",
                            "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    dead, live = rows
    assert dead["activity"]["alive"] == 0.0 and dead["solver"]["rk4-4"]["max_abs_dlogit"] < 1e-4
    assert live["activity"]["alive"] > 0.05 and live["solver"]["rk4-4"]["max_abs_dlogit"] > 1e-3
    for r in rows:
        assert r["violations"] == 0 and r["ibp_or_crown"] <= r["pgd"] <= r["clean"] <= r["n"] == 6
    diff = live_field.paired(live, dead)
    for k, key in (("clean", "clean"), ("ibp", "ibp"), ("either", "ibp_or_crown"), ("pgd", "pgd")):
        assert abs(diff[k][0] - 100 * (live[key] - dead[key]) / 6) < 1e-9
    mtime = out.with_suffix(".jsonl").stat().st_mtime_ns
    assert live_field.main(["ode-cert-0.1", "ode-cert-0.1-mtl", "--n", "6", "--out", str(out)]) == 0
    assert out.with_suffix(".jsonl").stat().st_mtime_ns == mtime  # resumed: nothing recomputed
    assert "ode-cert-0.1-mtl" in out.with_suffix(".md").read_text()


def test_bad_input_is_one_line(capsys) -> None:
    assert live_field.main(["ode-cert-0.1", "--n", "0"]) == 2
    assert live_field.main(["no-such-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: --n") and "no-such-model" in err[1]
