"""``python -m verify attack``: bad arguments exit 2 with one line; a small run writes the JSON report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from verify.cli import main


@pytest.mark.parametrize("argv, needle", [
    (["attack", "--model", "lenet5", "--attack", "pgd", "--eps", "-1", "--n", "5"], "eps must be >= 0"),
    (["attack", "--model", "lenet5", "--attack", "nope", "--eps", "1"], "invalid choice"),
    (["attack", "--model", "lenet5", "--attack", "cw", "--norm", "inf"], "supports --norm 2"),
    (["attack", "--model", "lenet5", "--attack", "pgd"], "--eps is required"),
    (["attack", "--model", "lenet5", "--attack", "fgsm", "--eps", "0.1", "--steps", "3"], "does not apply"),
    (["attack", "--model", "no-such-model", "--attack", "fgsm", "--eps", "0.1", "--n", "5"], "unknown model"),
    (["attack", "--model", "lenet5", "--attack", "pgd", "--eps", "0.1", "--attack-solver", "rk4"], "needs its steps"),
    (["attack", "--model", "lenet5", "--attack", "pgd", "--eps", "0.1", "--eval-solver", "rk5:4"], "unknown solver"),
])
def test_bad_arguments_exit_2_with_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err, err


def _have_data_and_zoo() -> bool:
    from models.zoo import available

    root = os.environ.get("ODE_ROBUSTNESS_DATA")
    return bool(root) and Path(root, "mnist").exists() and "lenet5" in available()


@pytest.mark.skipif(not _have_data_and_zoo(), reason="needs ODE_ROBUSTNESS_DATA and the lenet5 zoo checkpoint")
def test_small_run_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.json"
    code = main(["attack", "--model", "lenet5", "--attack", "pgd", "--eps", "0.3", "--n", "16", "--steps", "5",
                 "--check-n", "6", "--out", str(out)])
    assert code == 0
    assert "mean L2 / accuracy" in capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rep["model"] == "lenet5" and rep["n"] == 16 and rep["eps"] == 0.3
    assert 0 <= rep["robust_accuracy"] <= rep["clean_accuracy"] <= 1
    assert len(rep["checks"]) == 7
