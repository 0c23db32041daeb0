"""benchmarks.cert_targets: the verifier cascade's counts are consistent, sound against its own PGD,
resumable per chunk, and bad input is one line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cert_targets


def test_summarize_counts() -> None:
    c = cert_targets.summarize("micabpfu", "01111001")
    assert c == {"n": 8, "clean": 7, "+ibp": 1, "+crown": 2, "+alpha": 3, "+bab": 4, "certified": 4,
                 "bab_falsified": 1, "unknown": 1, "attack_bound": 5, "violations": 0}
    assert cert_targets.summarize("i", "0")["violations"] == 1  # certified yet broken by PGD
    assert cert_targets.summarize("ii", "11", "10")["violations"] == 1  # ... or by AutoAttack
    assert cert_targets.summarize("ii", "11", "1")["violations"] == 0  # AutoAttack ran on the first image only


def test_cascade_on_a_certified_model(tmp_path: Path) -> None:
    out = tmp_path / "ct"
    # ε = 0.13 leaves images open after IBP and CROWN, so α-CROWN and BaB run
    args = ["ode-cert-0.1:0.13", "--n", "12", "--steps", "10", "--restarts", "1", "--bab-time", "5", "--out", str(out)]
    assert cert_targets.main(args) == 0
    (chunk,) = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    v = chunk["verdict"]
    assert len(v) == 12 and set(v) <= set("micabpfu") and chunk["size"] == 12 and chunk["eps"] == 0.13
    c = cert_targets.summarize(v, chunk["pgd"])
    assert c["violations"] == 0
    assert c["+ibp"] <= c["+crown"] <= c["+alpha"] <= c["certified"] <= c["attack_bound"] <= c["clean"] <= 12
    # every image BaB was called on is recorded with its status; verified ones are not broken by PGD
    for j, status, domains, _ in chunk["bab"]:
        assert {"verified": "b", "falsified": "f", "unknown": "u"}[status] == v[j] and domains >= 1
    mtime = out.with_suffix(".jsonl").stat().st_mtime_ns
    assert cert_targets.main(args) == 0
    assert out.with_suffix(".jsonl").stat().st_mtime_ns == mtime  # resumed: nothing recomputed
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert row["all"] == c and "ode-cert-0.1" in out.with_suffix(".md").read_text()


def test_autoattack_on_the_certified_images(tmp_path: Path) -> None:
    out = tmp_path / "ct"
    args = ["ode-cert-0.1", "--n", "4", "--steps", "5", "--restarts", "1", "--bab-time", "2", "--out", str(out)]
    assert cert_targets.main(args) == 0
    assert cert_targets.main([*args, "--autoattack", "3"]) == 0  # the cascade is reused, AutoAttack added
    lines = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [c.get("kind", "cascade") for c in lines] == ["cascade", "autoattack"]
    verdict, robust = lines[0]["verdict"], lines[1]["robust"]
    assert lines[1]["size"] == 3  # the first K images only, not the whole chunk
    assert [r != "-" for r in robust] == [v in "icab" for v in verdict[:3]] and "1" in robust
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert row["autoattack"] == robust and row["all"]["violations"] == robust.count("0") == 0


def test_paired_differences_in_the_report() -> None:
    import argparse

    args = argparse.Namespace(models=["a", "b"], n=4, bab_time=1.0, autoattack=0, steps=1, restarts=1,
                              out=str(cert_targets.RESULTS / "cert_targets"))
    rows = [{"model": "a", "eps": 0.1, "n": 4, "verdict": "iipm", "pgd": "1100", "seconds": {"ibp": 0.0}},
            {"model": "b", "eps": 0.1, "n": 4, "verdict": "iiib", "pgd": "1111", "seconds": {"ibp": 0.0}}]
    md = cert_targets.report(rows, args)
    # b − a: certified 4 − 2 images of 4 (2 discordant, both for b): +50 points, SE √(2 − 4/4)/4 = 25 points
    assert "| b | +25.00 ± 21.65 (1/0) | +50.00 ± 25.00 (2/0) | +50.00 ± 25.00 (2/0) |" in md


@pytest.mark.parametrize("argv, first", [
    (["ode-cert-0.1", "--n", "0"], "error: need 1 <= --n"),
    (["ode-cert-0.1", "--bab-time", "0"], "error: need 1 <= --n"),
    (["no-such-model"], "error: no-such-model"),
    (["ode-cert-0.1:-1"], "error: ode-cert-0.1:-1"),
    (["ode:0.1", "ode"], "error: ode: "),  # an uncertified model needs its ε
    (["ode-cert-0.1", "--n", "10", "--autoattack", "11"], "error: need 1 <= --n"),
])
def test_bad_input_is_one_line(argv: list[str], first: str, capsys) -> None:
    assert cert_targets.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(first), err
