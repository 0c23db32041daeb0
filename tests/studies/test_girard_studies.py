"""Quick modes of the seed-000 studies: girard-attacks, girard-advtrain, integration-time.

Each study runs once per module (quick mode, into a temporary directory); the tests check
the facts its numbers must satisfy and that a second run resumes from ``cells.jsonl``
(and the trained checkpoints) without computing anything.
"""

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import studies.girard_advtrain as gb
import studies.girard_attacks as ga
import studies.integration_time as it
from models import zoo
from models.solver import SolverConfig
from studies import StudyReport, run_study

SEED_FMT = re.compile(r"^(\d+\.\d\d|–)/\d+\.\d\d%$")


def _run(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, StudyReport]]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp(name)
    try:
        yield out, run_study(name, quick=True, out=out, progress=False)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def attacks_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, StudyReport]]:
    yield from _run(tmp_path_factory, "girard-attacks")


@pytest.fixture(scope="module")
def advtrain_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, StudyReport]]:
    yield from _run(tmp_path_factory, "girard-advtrain")


@pytest.fixture(scope="module")
def time_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, StudyReport]]:
    yield from _run(tmp_path_factory, "integration-time")


def _outputs_written(out: Path, report: StudyReport) -> None:
    assert json.loads((out / f"{report.name}.json").read_text())["tables"]
    md = (out / f"{report.name}.md").read_text()
    assert "seed 000" in md and "## Findings" in md
    for fig in report.figures:
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- girard-attacks


def test_attacks_table_in_seed_format(attacks_run: tuple[Path, StudyReport]) -> None:
    out, report = attacks_run
    main = report.tables[0]
    names = [row[1] for row in main.rows]
    assert names[:2] == ["lenet5", "ode"]
    assert ("ode-chen" in names) == ("ode-chen" in zoo.available())
    for row in main.rows:
        ours = [row[i] for i in (4, 6, 8)]
        assert all(SEED_FMT.match(c) for c in ours), ours
    lenet = main.rows[0]
    assert (lenet[5], lenet[7], lenet[9]) == ("6.23/5.19%", "2.39/0.21%", "5.62/4.17%")
    assert main.rows[1][5] == "6.02/8.56%"
    _outputs_written(out, report)


def test_attack_numbers_obey_their_definitions(attacks_run: tuple[Path, StudyReport]) -> None:
    _, report = attacks_run
    for name, reports in report.data.items():
        for kind, r in reports.items():
            assert 0.0 <= r["robust_accuracy"] <= r["clean_accuracy"] <= 1.0
            if kind in ("fgsm", "pgd") and r["mean_linf"] is not None:
                assert r["mean_linf"] <= 0.3 + 1e-5
                assert r["mean_l2"] <= 0.3 * 28 + 1e-4  # L2 <= sqrt(d) * L∞
        if name in ("lenet5", "ode"):
            assert reports["fgsm"]["clean_accuracy"] >= 0.8  # zoo models are ~98 % accurate
            # PGD (random start, 10 steps, best iterate) is at least as strong as FGSM here.
            assert reports["pgd"]["robust_accuracy"] <= reports["fgsm"]["robust_accuracy"] + 1e-9
            assert reports["cw"]["success_rate"] >= 0.5


def test_attacks_resume_computes_nothing(attacks_run: tuple[Path, StudyReport], assert_resume_computes_nothing
                                         ) -> None:
    out, report = attacks_run
    assert_resume_computes_nothing("girard-attacks", out, report, [(ga, "evaluate"), (ga.AttackSettings, "build")])


def test_attack_settings_reject_unknown_attack() -> None:
    with pytest.raises(ValueError, match="unknown attack"):
        ga.FULL_SETTINGS.build("deepfool", zoo.load("lenet5"), 0)
    assert ga.FULL_SETTINGS.pgd_step_size == pytest.approx(2.5 * 0.3 / 40)


# ---------------------------------------------------------------- girard-advtrain


def test_advtrain_table_and_effect(advtrain_run: tuple[Path, StudyReport]) -> None:
    out, report = advtrain_run
    main = report.tables[0]
    assert [row[1] for row in main.rows] == ["lenet5-adv", "ode-adv", "lenet5", "ode"]
    assert main.rows[0][4] == "–/98.65%" and main.rows[1][4] == "–/99.40%"
    assert main.rows[0][10] == "5.09/97.50%"
    assert main.rows[2][4] is None  # the seed gives no natural accuracy for the reference rows
    for row in main.rows:
        assert re.match(r"^–/\d+\.\d\d%$", row[3])
    data = report.data
    for adv, nat in (("lenet5-adv", "lenet5"), ("ode-adv", "ode")):
        # PGD training is what makes a model survive PGD at ε=0.3: the natural ones fall to ~0 %.
        assert data[adv]["pgd"]["robust_accuracy"] > data[nat]["pgd"]["robust_accuracy"]
        assert data[adv]["fgsm"]["robust_accuracy"] > data[nat]["fgsm"]["robust_accuracy"]
    # More steps and random restarts never leave more than one extra image (of 10) unbroken.
    for name, r in data["strong_pgd"].items():
        assert r["robust_accuracy"] <= data[name]["pgd"]["robust_accuracy"] + 0.1 + 1e-9
        assert r["params"]["restarts"] == gb.QUICK_STRONG_PGD[1]
    _outputs_written(out, report)


def test_advtrain_resume_computes_nothing(advtrain_run: tuple[Path, StudyReport], assert_resume_computes_nothing
                                          ) -> None:
    out, report = advtrain_run
    assert_resume_computes_nothing("girard-advtrain", out, report,
                                   [(ga, "evaluate"), (gb, "evaluate"), (ga.AttackSettings, "build")])


# ---------------------------------------------------------------- integration-time


def test_grid_solver_scales_steps_with_time() -> None:
    assert it.grid_solver(1.0).n_steps == 1
    assert it.grid_solver(10.0).n_steps == 2
    assert it.grid_solver(12.0).n_steps == 3 and it.grid_solver(12.0).step_size == pytest.approx(4.0)
    assert it.grid_solver(500.0).n_steps == 100
    s = it.grid_solver(37.0)
    assert s.method == "rk4" and s.T == 37.0 and s.step_size <= it.MAX_STEP


def test_training_view_keeps_the_step_bounded() -> None:
    from models import build_model

    net = build_model("ode", channels=4, field="chen", head_pool=1, solver=it.grid_solver(100.0).to_dict())
    view = it._MaxStepSolver(net, it.MAX_STEP)
    # What models.train.train does for Recipe.T_range: same step count, new T.
    base = view.solver
    view.solver = base.replace(T=23.0, step_size=23.0 / base.n_steps)
    assert net.solver.T == 23.0 and net.solver.n_steps == 5
    assert isinstance(view.solver, SolverConfig)


def test_integration_time_table(time_run: tuple[Path, StudyReport]) -> None:
    out, report = time_run
    assert len(report.tables) == len(it.FGSM_EPS) + 1
    for main in report.tables[:len(it.FGSM_EPS)]:
        assert len(main.rows) == 6 and len(main.columns) == 4 + 2 * len(it.TEST_TIMES)
        assert [r[3] for r in main.rows] == ["10", "10-100", "100"] * 2
        assert main.rows[0][5] == "49.45 / 0.00" and main.rows[0][7] == "98.64 / 9.34"
        assert main.rows[5][11] == "96.68 / 78.60"
        for row in main.rows:
            for cell in row[4::2]:
                clean, fgsm = (float(v) for v in cell.split(" / "))
                assert 0.0 <= fgsm <= clean <= 100.0
    # The clean half of a cell does not depend on the attack's ε.
    assert [[c.split(" / ")[0] for c in r[4::2]] for r in report.tables[0].rows] == \
        [[c.split(" / ")[0] for c in r[4::2]] for r in report.tables[1].rows]
    assert len(list((out / "models").glob("*.pt"))) == 6
    _outputs_written(out, report)


def test_integration_time_cost_and_learning(time_run: tuple[Path, StudyReport]) -> None:
    _, report = time_run
    max_step = 25.0  # the quick mode's step
    for row in report.data["cells"].values():
        assert set(row) == {f"{e:g}" for e in it.FGSM_EPS}
        for by_t in row.values():
            for t, c in by_t.items():
                assert c["nfe"] == 4 * math.ceil(float(t) / max_step)  # RK4: 4 evaluations per step
                assert c["nonfinite"] == 0
    # One short epoch already beats chance (10 %) at the training end time.
    assert report.data["cells"]["large|T=10"]["0.3"]["10"]["clean"] >= 0.3
    for v in report.data["pgd_check"].values():
        assert 0.0 <= v["pgd"] <= v["clean"] and v["fgsm"] <= v["clean"]


def test_integration_time_resume_trains_and_attacks_nothing(time_run: tuple[Path, StudyReport],
                                                            assert_resume_computes_nothing) -> None:
    out, report = time_run
    assert_resume_computes_nothing("integration-time", out, report, [(it, "train"), (it, "evaluate")])
