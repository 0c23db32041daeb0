"""``python -m verify attack``: CW options and norm, and the exit status of a failed validity check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from verify._cmd_attack import EXIT_CHECK_FAILED
from verify.cli import main


@pytest.mark.parametrize("argv, needle", [
    (["attack", "--model", "lenet5", "--attack", "cw", "--norm", "inf"], "supports --norm 2 only"),
    (["attack", "--model", "lenet5", "--attack", "pgd", "--eps", "0.1", "--lr", "0.1"], "--lr does not apply"),
    (["attack", "--model", "lenet5", "--attack", "fgsm", "--eps", "0.1", "--initial-const", "1"],
     "--initial-const does not apply"),
    (["attack", "--model", "lenet5", "--attack", "boundary", "--confidence", "1"], "--confidence does not apply"),
    (["attack", "--model", "lenet5", "--attack", "pgd", "--eps", "0.1", "--binary-search-steps", "3"],
     "--binary-search-steps does not apply"),
])
def test_bad_cw_arguments_exit_2_with_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err, err


def test_help_documents_the_exit_status(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["attack", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert EXIT_CHECK_FAILED == 3
    assert "exit status" in text and "3 = a validity check failed" in text
    for opt in ("--initial-const", "--lr", "--binary-search-steps", "--confidence", "--steps"):
        assert opt in text


def _have_data_and_zoo() -> bool:
    from models.zoo import available

    root = os.environ.get("ODE_ROBUSTNESS_DATA")
    return bool(root) and Path(root, "mnist").exists() and "lenet5" in available()


needs_data = pytest.mark.skipif(not _have_data_and_zoo(), reason="needs ODE_ROBUSTNESS_DATA and the lenet5 zoo model")


@needs_data
def test_bad_cw_values_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["attack", "--model", "lenet5", "--attack", "cw", "--n", "2", "--initial-const", "0"]) == 2
    assert "initial_const must be > 0" in capsys.readouterr().err


@needs_data
def test_cw_defaults_break_lenet5_and_pass_their_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Issue 12: this command broke 30 % and still exited 0 with "robust accuracy 70 %".
    out = tmp_path / "cw.json"
    code = main(["attack", "--model", "lenet5", "--attack", "cw", "--n", "20", "--out", str(out)])
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert code == 0, text
    assert rep["norm"] == "2" and rep["success_rate"] == 1.0 and rep["robust_accuracy"] == 0.0
    assert not rep["flagged"] and rep["failed_checks"] == []
    assert not text.startswith("WARNING")


@needs_data
def test_cw_options_reach_the_attack(tmp_path: Path) -> None:
    out = tmp_path / "cw.json"
    code = main(["attack", "--model", "lenet5", "--attack", "cw", "--norm", "2", "--n", "4", "--no-checks",
                 "--steps", "30", "--initial-const", "0.5", "--lr", "0.05", "--binary-search-steps", "3",
                 "--confidence", "0.25", "--out", str(out)])
    assert code == 0
    params = json.loads(out.read_text())["params"]
    assert (params["steps"], params["initial_const"], params["lr"], params["binary_search_steps"],
            params["confidence"]) == (30, 0.5, 0.05, 3, 0.25)


@needs_data
def test_failed_check_warns_first_and_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Two PGD steps of 1e-4 at eps 0.3 are far weaker than one FGSM step: a check must fail.
    out = tmp_path / "weak.json"
    argv = ["attack", "--model", "lenet5", "--attack", "pgd", "--eps", "0.3", "--steps", "2", "--step-size", "1e-4",
            "--n", "8", "--check-n", "8"]
    code = main(argv + ["--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    rep = json.loads(out.read_text())
    assert code == EXIT_CHECK_FAILED == 3
    assert rep["flagged"] and "iterative_vs_single_step" in rep["failed_checks"]
    assert lines[0].startswith("WARNING: validity check(s) failed:") and "iterative_vs_single_step" in lines[0]
    assert "mean L2 / accuracy" in lines[1]
    assert main(argv + ["--no-checks"]) == 0
