"""``python -m studies`` and its alias ``python -m verify study``: help, bad input, and the import direction."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from studies import STUDIES
from studies.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_help_lists_every_study_and_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m studies")
    assert all(name in "".join(text.split()) for name in STUDIES)  # argparse may wrap at a hyphen
    assert "(default: 0)" in text and "(default: cpu)" in text


@pytest.mark.parametrize("argv", [["no-such-study"], [], ["tolerance", "--n", "zero"], ["tolerance", "--n", "0"],
                                  ["tolerance", "--bogus"]])
def test_bad_arguments_print_one_line_and_exit_2(argv: list[str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path / "out")] if argv else argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("error: ")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_module_entry_point_and_alias() -> None:
    help_ = _python("-m", "studies", "--help")
    assert help_.returncode == 0 and "tolerance-randomization" in help_.stdout
    bad = _python("-m", "studies", "no-such-study")
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'no-such-study'" in bad.stderr
    alias = _python("-m", "verify", "study", "no-such-study")
    assert alias.returncode == 2 and len(alias.stderr.strip().splitlines()) == 1
    assert alias.stderr.startswith("error: python -m verify study:")
    alias_help = _python("-m", "verify", "study", "--help")
    assert alias_help.returncode == 0 and alias_help.stdout.startswith("usage: python -m verify study")
    assert "(default: cpu)" in alias_help.stdout


def test_the_library_never_imports_the_studies() -> None:
    code = ("import sys, verify, verify.cli; verify.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m == 'studies' or m.startswith('studies.')))")
    result = _python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
