"""The soundness campaign of ``benchmarks.soundness``: 200 random trials find no violation,
every method is really checked, and the checker flags a bound that is too high."""

from __future__ import annotations

import torch

from benchmarks import soundness

TRIALS = 200
#: alpha-crown (slow through auto_LiRPA: up to ~30 s on a small ODE-net) and lp-all on trials 0, 60,
#: 120, 180 only (seed 0: an ODE-net alpha-crown crashes on, an MLP it bounds, two nets it refuses).
ALPHA_EVERY = 60


def test_check_flags_a_bound_above_the_attacked_margin() -> None:
    bounds = torch.tensor([0.5, -1.0, 2.0, float("inf")])
    found = torch.tensor([0.5, -0.5, 1.0, 3.0])
    slack, bad = soundness.check(bounds, found, scale=1.0)
    assert bad.tolist() == [False, False, True, True]
    assert float(slack[2]) == -1.0
    # float32 round-off is below the tolerance; an excess of 1e-4 on a margin of 1 is not
    assert not soundness.check(torch.tensor([1.0 + 1e-6]), torch.tensor([1.0]), 1.0)[1].any()
    assert soundness.check(torch.tensor([1.0 + 1e-4]), torch.tensor([1.0]), 1.0)[1].any()


def _first_trials(kinds: tuple[str, ...]) -> list[int]:
    """The first trial of seed 0 of each architecture kind."""
    out: dict[str, int] = {}
    i = 0
    while len(out) < len(kinds):
        kind = soundness.draw_trial(0, i)["arch"]["kind"]
        if kind in kinds and kind not in out:
            out[kind] = i
        i += 1
    return list(out.values())


def test_a_bound_raised_by_one_is_a_violation_for_every_method() -> None:
    """At ε = 0 every sound bound is at most the clean margin, so bound + 1 must be flagged."""
    soundness.quiet()
    flagged: set[str] = set()
    for trial in _first_trials(("sequential", "ode", "resnet")):
        honest = soundness.run_trial(0, trial, alpha_every=1, eps=0.0)
        raised = soundness.run_trial(0, trial, alpha_every=1, eps=0.0, bound_shift=1.0)
        for key, res in raised["methods"].items():
            if honest["methods"][key]["status"] == "checked":
                assert res["status"] == "violated", (trial, key, res)
                assert res["slack"] < -0.99
                assert all(v["bound"] > v["attacked_margin"] for v in res["violations"])
                flagged.add(key)
            else:
                assert res["status"] != "checked", (trial, key, res)
    assert {"ibp/auto", "crown/auto", "crown/auto_lirpa", "forward/auto", "lipschitz/auto"} <= flagged


def test_200_random_trials_have_no_violation_and_check_every_method(tmp_path) -> None:
    records = soundness.run_campaign(range(TRIALS), 0, tmp_path, jobs=2, alpha_every=ALPHA_EVERY, progress=False)
    s = soundness.summarize(records, 0.0)
    assert s["trials"] == TRIALS
    assert s["violations"] == 0, soundness.markdown(s)
    # every failure is a clear error of ours (refused) or of auto_LiRPA's (failed), not a crash
    assert sum(row["crashed"] + row["invalid"] for row in s["table"]) == 0, soundness.markdown(s)
    checked: dict[str, int] = {}
    for row in s["table"]:
        key = f"{row['method']}/{row['engine']}"
        checked[key] = checked.get(key, 0) + row["checked"]
    # not vacuous: every method and engine bounded and checked real trials
    assert {f"{m}/{e}" for m, e in soundness.METHODS} <= set(checked)
    assert all(n >= (1 if key.split("/")[0] in soundness.OCCASIONAL else 30) for key, n in checked.items()), checked
    dense = sum(row["used"].get("dense", 0) for row in s["table"])
    assert dense >= 30
    assert {"sequential", "ode", "resnet"} <= {k for k, v in s["coverage"]["crown/auto"].items() if v.get("checked")}
    # the attack really searched: with ε > 0 every trial scored its samples and every PGD iterate
    # (RESTARTS runs per margin, at least one margin)
    least = 1 + soundness.SAMPLES + (soundness.PGD_STEPS + 1) * soundness.RESTARTS
    assert min(r["points"] for r in records if r["eps"] > 0) >= least
