"""The run backends: a Dask cluster certifies the same records as local processes, into the same
resumable files; bad --backend / --address combinations exit 2 with one line."""

import dataclasses

import pytest

from verify._backends import DaskCluster, LocalProcesses, certify_parallel, make_backend
from verify.run import RunConfigError, RunSpec, read_records

from tests.verify._fixtures import tiny_run_setup

pytest.importorskip("distributed")


_setup = tiny_run_setup


SPEC = RunSpec(model="test", methods=("ibp", "crown"), n=4, eps=(0.01,), attack=False, jobs=2)
DASK = DaskCluster(processes=False)  # a 2-worker LocalCluster in this process: quick to start


def _radii(path):
    return {r["index"]: {m: (d["radius"], d["upper"], d["evaluations"]) for m, d in r["methods"].items()}
            for r in read_records(path)}


def test_dask_cluster_gives_the_records_of_local_processes_and_resumes(tmp_path):
    net, x, y = _setup()
    local = certify_parallel(SPEC, tmp_path / "local", net, x, y, backend=LocalProcesses(), progress=False)
    dask = certify_parallel(SPEC, tmp_path / "dask", net, x, y, backend=DASK, progress=False)
    assert dask["n"] == local["n"] == 4
    # the same lanes, the same search path in each lane: the same radii, brackets and evaluations
    assert _radii(tmp_path / "dask" / "results.jsonl") == _radii(tmp_path / "local" / "results.jsonl")
    assert {r["index"] for r in read_records(tmp_path / "dask" / "results-1-of-2.jsonl")} == {0, 2}
    assert (tmp_path / "dask" / "config.json").read_text() == (tmp_path / "local" / "config.json").read_text()

    # an interruption: lane 2 lost its last example, and its last line is torn
    lane = tmp_path / "dask" / "results-2-of-2.jsonl"
    full = lane.read_text()
    first = full.splitlines(keepends=True)[0]
    lane.write_text(first + full.splitlines()[1][:20])
    with pytest.raises(RunConfigError, match="already holds a run"):
        certify_parallel(SPEC, tmp_path / "dask", net, x, y, backend=DASK, progress=False)
    certify_parallel(SPEC, tmp_path / "dask", net, x, y, backend=DASK, resume=True, progress=False)
    assert _radii(tmp_path / "dask" / "results.jsonl") == _radii(tmp_path / "local" / "results.jsonl")
    with pytest.raises(RunConfigError, match="differs in jobs"):
        certify_parallel(dataclasses.replace(SPEC, jobs=3), tmp_path / "dask", net, x, y, backend=DASK,
                         resume=True, progress=False)


def test_one_lane_on_dask_writes_results_jsonl(tmp_path):
    net, x, y = _setup()
    spec = dataclasses.replace(SPEC, jobs=1, n=2, methods=("ibp",))
    summary = certify_parallel(spec, tmp_path, net, x, y, backend=DASK, progress=False)
    assert summary["n"] == 2 and [r["index"] for r in read_records(tmp_path / "results.jsonl")] == [0, 1]


def test_make_backend():
    assert make_backend("local") == LocalProcesses()
    assert make_backend("dask") == DaskCluster(None)
    assert make_backend("dask", "tcp://10.0.0.1:8786").address == "tcp://10.0.0.1:8786"
    with pytest.raises(RunConfigError, match="unknown backend"):
        make_backend("ray")
    with pytest.raises(RunConfigError, match="use it with --backend dask"):
        make_backend("local", "tcp://10.0.0.1:8786")


def test_unreachable_scheduler_is_one_specific_error():
    with pytest.raises(RunConfigError, match="--address tcp://127.0.0.1:9: no Dask scheduler answers"):
        with DaskCluster("tcp://127.0.0.1:9", connect_timeout=1.0).client(1):
            pass
