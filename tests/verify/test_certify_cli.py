"""The certify run: JSONL per example, resume after an interruption, merge, plot, CLI errors."""

import dataclasses
import json
import math

import pytest

from verify._backends import certify_parallel
from verify.cli import main
from verify.run import RunConfigError, RunSpec, certify_run, merge_run, read_records

from tests.verify._fixtures import tiny_run_setup


class _Stop(Exception):
    pass


_setup = tiny_run_setup


SPEC = RunSpec(model="test", norm="inf", methods=("ibp", "crown"), n=4, eps=(0.01,), attack=False)


def _strip(recs):
    return [{k: v for k, v in r.items() if k not in ("seconds", "attack_seconds", "max_rss_mb")} |
            {"methods": {m: {"radius": d["radius"], "upper": d["upper"]} for m, d in r["methods"].items()}}
            for r in sorted(recs, key=lambda r: r["index"])]


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    net, x, y = _setup()
    full = certify_run(SPEC, tmp_path / "full", net, x, y, progress=False)
    calls = []

    def stop_after_two(rec):
        calls.append(rec.index)
        if len(calls) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        certify_run(SPEC, tmp_path / "cut", net, x, y, progress=False, on_record=stop_after_two)
    assert len(read_records(tmp_path / "cut" / "results.jsonl")) == 2
    with pytest.raises(RunConfigError, match="--resume"):
        certify_run(SPEC, tmp_path / "cut", net, x, y, progress=False)
    with pytest.raises(RunConfigError, match="differs in norm"):
        certify_run(dataclasses.replace(SPEC, norm="2"), tmp_path / "cut", net, x, y, resume=True, progress=False)
    resumed = certify_run(SPEC, tmp_path / "cut", net, x, y, resume=True, progress=False)
    a = _strip(read_records(tmp_path / "full" / "results.jsonl"))
    b = _strip(read_records(tmp_path / "cut" / "results.jsonl"))
    assert [r["index"] for r in b] == [0, 1, 2, 3]
    assert a == b
    assert resumed["methods"]["crown"]["certified_accuracy"] == full["methods"]["crown"]["certified_accuracy"]
    assert b[3]["methods"]["crown"]["radius"] == 0.0


def test_shards_merge_to_the_full_run(tmp_path):
    net, x, y = _setup()
    spec = dataclasses.replace(SPEC, methods=("ibp",))
    certify_run(spec.lane(1, 2), tmp_path / "s", net, x, y, progress=False)
    with pytest.raises(RunConfigError, match="missing shards"):
        merge_run(tmp_path / "s")
    with pytest.raises(RunConfigError, match="differs in eps"):  # joining shards must share the configuration
        certify_run(dataclasses.replace(spec, eps=(0.02,), shard=(2, 2)), tmp_path / "s", net, x, y, progress=False)
    certify_run(spec.lane(2, 2), tmp_path / "s", net, x, y, progress=False)  # a new shard joins without --resume
    with pytest.raises(RunConfigError, match="already holds a run"):  # rerunning a shard that ran needs it
        certify_run(spec.lane(2, 2), tmp_path / "s", net, x, y, progress=False)
    merge_run(tmp_path / "s")
    assert [r["index"] for r in read_records(tmp_path / "s" / "results.jsonl")] == [0, 1, 2, 3]
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["n"] == 4


def test_plot_draws_figures(tmp_path):
    from verify.plots import plot_run

    net, x, y = _setup()
    certify_run(dataclasses.replace(SPEC, methods=("crown",), n=2), tmp_path, net, x, y, progress=False)
    recs = read_records(tmp_path / "results.jsonl")
    for r in recs:  # plotting needs an empirical radius; give one above the certified radius
        r["empirical"] = r["methods"]["crown"]["radius"] * 2 + 0.01
        r["growth"] = [1.0, 1.5]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    paths = plot_run(tmp_path)
    assert {p.name for p in paths} == {"scatter.png", "cdf.png", "growth.png"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_parallel_jobs_cover_every_example_once_and_resume(tmp_path):
    net, x, y = _setup()
    spec = dataclasses.replace(SPEC, methods=("crown",))
    certify_run(spec, tmp_path / "one", net, x, y, progress=False)
    one = {r["index"]: r for r in read_records(tmp_path / "one" / "results.jsonl")}
    two_jobs = dataclasses.replace(spec, jobs=2)
    summary = certify_parallel(two_jobs, tmp_path / "two", net, x, y, progress=False)
    two = {r["index"]: r for r in read_records(tmp_path / "two" / "results.jsonl")}
    assert sorted(two) == list(range(4)) and summary["n"] == 4
    assert {r["index"] for r in read_records(tmp_path / "two" / "results-1-of-2.jsonl")} == {0, 2}
    for i, r in one.items():  # both searches bracket the same threshold
        a, b = r["methods"]["crown"], two[i]["methods"]["crown"]
        assert two[i]["correct"] == r["correct"]
        assert max(a["radius"], b["radius"]) <= min(a["upper"] or math.inf, b["upper"] or math.inf)
    before = (tmp_path / "two" / "results-2-of-2.jsonl").read_text()
    certify_parallel(two_jobs, tmp_path / "two", net, x, y, resume=True, progress=False)  # nothing left to do
    assert (tmp_path / "two" / "results-2-of-2.jsonl").read_text() == before
    with pytest.raises(RunConfigError, match="already holds a run"):
        certify_parallel(two_jobs, tmp_path / "two", net, x, y, progress=False)
    three = dataclasses.replace(spec, jobs=3, n=2)
    assert certify_parallel(three, tmp_path / "three", net, x, y, progress=False)["n"] == 2  # one shard is empty


@pytest.mark.parametrize("argv,msg", [
    (["certify", "--model", "ode", "--norm", "1"], "invalid choice"),
    (["certify", "--model", "ode", "--method", "deepz"], "invalid choice"),
    (["certify", "--model", "ode", "--eps", "-1"], "eps must be a positive number"),
    (["certify", "--model", "ode", "--n", "0"], "argument --n: must be >= 1"),
    (["certify", "--model", "ode", "--jobs", "0"], "argument --jobs: must be >= 1"),
    (["certify", "--model", "ode", "--jobs", "2", "--shard", "1/2"], "--jobs or --shard, not both"),
    (["certify", "--model", "ode", "--shard", "3/2"], "1 <= k <= N"),
    (["certify", "--model", "ode", "--backend", "ray"], "invalid choice"),
    (["certify", "--model", "ode", "--address", "tcp://127.0.0.1:8786"], "use it with --backend dask"),
    (["certify", "--model", "ode", "--backend", "dask", "--address", "127.0.0.1"], "must look like tcp://"),
    (["certify", "--model", "ode", "--backend", "dask", "--shard", "1/2"], "not both"),
    (["certify", "--model", "no-such-model"], "no-such-model"),
    (["merge", "/nonexistent-run-dir"], "not a certification run directory"),
])
def test_cli_bad_arguments_exit_2_with_one_line(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err
