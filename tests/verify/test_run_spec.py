"""RunSpec and ExampleRecord: one validated place for a run's configuration and its JSONL lines,
in the on-disk format earlier runs wrote (so their directories still resume)."""

import dataclasses
import json

import pytest
import torch

from models import ODENet, SolverConfig
from verify.run import ExampleRecord, RunConfigError, RunSpec, certify_run, read_example_records, read_records


def _net():
    torch.manual_seed(0)
    net = ODENet(channels=2, solver=SolverConfig.fixed("euler", 2), input_size=8).eval()
    x = torch.rand(3, 1, 8, 8)
    return net, x, net(x).argmax(1)


def test_to_json_is_the_config_the_cli_always_wrote():
    solver = SolverConfig.fixed("rk4", 8)
    spec = RunSpec(model="ode", arch="odenet", norm="2", methods=("crown",), n=10, seed=3, jobs=2, solver=solver,
                   fixed_steps=True)
    # what `verify certify --model ode --norm 2 --n 10 --seed 3 --jobs 2 --solver rk4:8 --fixed-steps` wrote before
    old = {"model": "ode", "arch": "odenet", "norm": "2", "methods": ["crown"], "n": 10,
           "eps": [0.02, 0.05, 0.1, 0.2, 0.5, 1.0], "seed": 3, "attack": True, "dataset": "mnist-t10k/test",
           "jobs": 2, "solver": solver.to_dict(), "fixed_steps": True}
    assert spec.to_json() == old
    assert list(spec.to_json()) == list(old)  # same key order in config.json
    assert RunSpec.from_json(json.loads(json.dumps(old))) == spec
    plain = RunSpec(model="ode").to_json()  # optional keys only when set
    assert "jobs" not in plain and "solver" not in plain and "fixed_steps" not in plain and "engine" not in plain


def test_an_old_run_directory_resumes(tmp_path):
    net, x, y = _net()
    spec = RunSpec(model="test", arch=None, methods=("ibp",), n=3, eps=(0.01,), attack=False)
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(  # as the code before RunSpec wrote it
        {"model": "test", "arch": None, "norm": "inf", "methods": ["ibp"], "n": 3, "eps": [0.01], "seed": 0,
         "attack": False, "dataset": "mnist-t10k/test"}, indent=1))
    summary = certify_run(spec, tmp_path, net, x, y, resume=True, progress=False)
    assert summary["n"] == 3


@pytest.mark.parametrize("kw,msg", [
    ({"norm": "1"}, "unknown norm"),
    ({"methods": ()}, "no certification method"),
    ({"methods": ("deepz",)}, "unknown certification method"),
    ({"methods": ("ibp", "ibp")}, "twice"),
    ({"n": 0}, "RunSpec.n must be a positive integer"),
    ({"jobs": 0}, "RunSpec.jobs must be a positive integer"),
    ({"seed": 1.5}, "RunSpec.seed must be an integer"),
    ({"eps": (0.01, -1.0)}, "RunSpec.eps must be positive"),
    ({"eps": (float("nan"),)}, "RunSpec.eps must be positive"),
    ({"attack": "yes"}, "RunSpec.attack must be true or false"),
    ({"engine": "gpu"}, "unknown engine"),
    ({"shard": (3, 2)}, "1 <= k <= N"),
    ({"shard": 2}, "must be a pair"),
    ({"jobs": 2, "shard": (1, 3)}, "--jobs or --shard, not both"),
    ({"model": ""}, "RunSpec.model"),
])
def test_bad_spec_raises_a_specific_error(kw, msg):
    with pytest.raises(RunConfigError, match=msg):
        RunSpec(**({"model": "ode"} | kw))


def test_from_json_refuses_unknown_and_missing_keys():
    with pytest.raises(RunConfigError, match="unknown key.*benchmark"):
        RunSpec.from_json({"model": "ode", "benchmark": True})
    with pytest.raises(RunConfigError, match="missing key model"):
        RunSpec.from_json({"norm": "inf"})
    with pytest.raises(RunConfigError, match="JSON object"):
        RunSpec.from_json([1, 2])


def test_a_lane_shares_the_config_of_its_run():
    spec = RunSpec(model="ode", jobs=3)
    lane = spec.lane(2, 3)
    assert lane.shard == (2, 3) and lane.to_json() == spec.to_json()
    assert dataclasses.replace(lane, shard=(1, 1)) == spec


def test_example_records_round_trip_the_jsonl_lines(tmp_path):
    net, x, y = _net()
    y[2] = (y[2] + 1) % 10  # one misclassified example
    spec = RunSpec(model="test", methods=("ibp", "crown"), n=3, eps=(0.01,), attack=True)
    certify_run(spec, tmp_path, net, x, y, progress=False)
    lines = read_records(tmp_path / "results.jsonl")
    recs = read_example_records(tmp_path / "results.jsonl")
    assert [r.to_json() for r in recs] == lines
    assert [list(r.to_json()) for r in recs] == [list(d) for d in lines]  # same key order
    assert {"certificate_covers", "attack_seconds", "growth", "max_rss_mb"} <= set(lines[0])
    assert not recs[2].correct and recs[2].empirical is None and recs[2].methods["crown"].radius == 0.0
    assert all(r.methods["crown"].margins[0][0] == 0.0 for r in recs)


def test_example_record_keeps_optional_keys_absent_and_refuses_unknown_ones():
    line = {"index": 0, "label": 3, "pred": 3, "correct": True, "empirical": None,
            "methods": {"ibp": {"radius": 0.01, "upper": None, "evaluations": 2, "seconds": 0.1, "margin0": 1.0,
                                "margins": [[0.0, 1.0], [0.01, 0.2]]}},
            "ratio": {"ibp": None}, "unsound": [], "growth": None, "seconds": 0.3}
    assert ExampleRecord.from_json(line).to_json() == line
    with pytest.raises(RunConfigError, match="unknown key.*colour"):
        ExampleRecord.from_json(line | {"colour": "red"})
    with pytest.raises(RunConfigError, match="example record 0: missing or bad field"):
        ExampleRecord.from_json({k: v for k, v in line.items() if k != "methods"})
