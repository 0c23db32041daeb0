"""A resumable certification run: certified radii per example, next to attack radii, as JSONL.

A run is described by one :class:`RunSpec` (its ``config.json``) and produces one
:class:`ExampleRecord` per example, appended to ``results[-k-of-N].jsonl`` as one JSON line
and flushed + fsynced, so a run killed at any point loses at most the examples in progress;
``resume=True`` skips the indices already written after checking that the configuration is
the same. :func:`certify_run` certifies one shard in this process; :func:`verify._backends.certify_parallel`
spreads the lanes of a run over local processes or a Dask cluster (:mod:`verify._backends`).

References:
    Xu et al., "Automatic Perturbation Analysis for Scalable Certified Robustness and
    Beyond", NeurIPS 2020.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._runspec import (DEFAULT_EPS, EPS_MAX, ExampleRecord, MethodRecord, RunConfigError, RunSpec,
                       parse_shard)
from .certify import METHODS, Certifier, check_adaptive
from ._lower import lower
from .compare import empirical_radius, measured_growth, ratio, soundness_flags, summarize, summary_table
from .unroll import is_adaptive


#: The ℓ∞ empirical radius of ``certify``: minimal-ε APGD-CE (100 iterations, the paper's step-size schedule
#: and momentum), the strongest attack whose bisection stays affordable per example. AutoAttack's APGD-T
#: (9 targeted runs) and Square (5,000 forward passes, ~300 for APGD-CE) cost about 9x and 15x more per failing round.
EMPIRICAL_ATTACK = "apgd"


def results_path(out: Path, shard: tuple[int, int]) -> Path:
    """The JSONL file of one shard (``results.jsonl`` when unsharded)."""
    k, n = shard
    return out / ("results.jsonl" if n == 1 else f"results-{k}-of-{n}.jsonl")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file as JSON objects; a torn last line (killed mid-write) is ignored.

    See :func:`read_example_records` for the typed records.
    """
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_example_records(path: Path) -> list[ExampleRecord]:
    """:func:`read_records` as :class:`ExampleRecord` s.

    Raises:
        RunConfigError: a line that is not an example record.
    """
    return [ExampleRecord.from_json(r) for r in read_records(path)]


def append_record(path: Path, record: ExampleRecord) -> None:
    """Append one record as a JSON line, flushed and fsynced (an interruption loses nothing written).

    A torn last line (a writer killed mid-line) is ended first, so the new record starts a line
    of its own instead of joining the unreadable one.
    """
    line = (json.dumps(record.to_json()) + "\n").encode()
    with open(path, "ab+") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)  # append mode: at the end whatever the read position
        f.flush()
        os.fsync(f.fileno())


def prepare_run(out: Path, spec: RunSpec, resume: bool) -> None:
    """Create the run directory with ``config.json``, or check an existing one against ``spec``.

    Raises:
        RunConfigError: an existing run without ``resume``, or one with another configuration.
    """
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "config.json"
    config = spec.to_json()
    if cfg.exists():
        old = json.loads(cfg.read_text())
        if not resume:
            raise RunConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        if diff:
            raise RunConfigError(f"--resume: run config in {cfg} differs in {', '.join(diff)}")
    else:
        cfg.write_text(json.dumps(config, indent=1))


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (and CUDA allocations) in MiB."""
    out = {"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def shard_todo(spec: RunSpec, n_examples: int, path: Path) -> tuple[list[int], list[dict[str, Any]]]:
    """The indices of ``spec.shard`` still to certify, and the records its file already holds."""
    done = read_records(path)
    have = {r["index"] for r in done}
    k, n = spec.shard
    return [i for i in range(n_examples) if i % n == k - 1 and i not in have], done


def resume_ratios(records: Iterable[dict[str, Any]], methods: Iterable[str]) -> dict[str, list[float]]:
    """Radius / clean-margin ratios of finished examples, in index order, per method.

    Each search starts from the ratios of the examples before it (see
    :meth:`Certifier.radius`); rebuilding them on resume makes a resumed run take exactly the
    search path of an uninterrupted one.
    """
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    for r in sorted(records, key=lambda r: r["index"]):
        for m in ratios:
            rec_m = r["methods"].get(m, {})
            if rec_m.get("radius", 0) > 0 and rec_m.get("upper") is not None and rec_m.get("margin0"):
                ratios[m].append(rec_m["radius"] / rec_m["margin0"])
    return ratios


class ExampleCertifier:
    """Certifies the examples of one lane in order, each search starting from the ratios before it.

    Args:
        spec: the run.
        model: classifier in eval mode.

    Raises:
        CertifyError: an adaptive solver without ``spec.fixed_steps`` (or with ``lipschitz``).
    """

    def __init__(self, spec: RunSpec, model: nn.Module) -> None:
        for m in spec.methods:
            check_adaptive(model, m, spec.fixed_steps)
        self.spec, self.model = spec, model
        self.adaptive = is_adaptive(model)
        #: per method, radius / clean margin of the examples certified so far.
        self.ratios: dict[str, list[float]] = {m: [] for m in spec.methods}
        #: the model lowered once (an adaptive solver: per example, see :meth:`_certifiers`).
        self.ir = None if self.adaptive else lower(model)
        self._fixed = {} if self.adaptive else {m: Certifier(model, spec.norm, m, engine=spec.engine, ir=self.ir,
                                                                time_limit=spec.time_limit)
                                                for m in spec.methods}

    def _certifiers(self, xi: torch.Tensor) -> dict[str, Certifier]:
        """One certifier per method with the lane's ratios; an adaptive solver's surrogate is lowered
        once per example (the steps accepted on it) and shared by the methods."""
        spec = self.spec
        if self.adaptive:
            self.ir = lower(self.model, xi, fixed_steps=True)
        certs = self._fixed or {m: Certifier(self.model, spec.norm, m, x_clean=xi, engine=spec.engine,
                                             fixed_steps=True, ir=self.ir, time_limit=spec.time_limit)
                                for m in spec.methods}
        for m, cert in certs.items():
            cert.search_ratios[:] = self.ratios[m]
        return certs

    def _attack(self, covered: nn.Module, xi: torch.Tensor, yi: torch.Tensor,
                correct: bool) -> tuple[float, list[float] | None, float]:
        """(empirical radius, measured growth, seconds); the attack targets what is certified."""
        emp, growth = math.inf, None
        start = time.perf_counter()
        if self.spec.attack and correct:
            r_emp, x_adv = empirical_radius(covered, xi, yi, self.spec.norm, self.spec.seed, attack=EMPIRICAL_ATTACK)
            emp = float(r_emp[0])
            if math.isfinite(emp):
                growth = measured_growth(self.model, xi, x_adv[:1], self.ir)
        return emp, growth, time.perf_counter() - start

    def _search(self, cert: Certifier, m: str, xi: torch.Tensor, yi: torch.Tensor, emp: float) -> MethodRecord:
        """One method's radius search; the first example of a lane starts at half the attack's radius."""
        guess = None if self.ratios[m] else (0.5 * emp if math.isfinite(emp) and emp > 0 else None)
        res = cert.radius(xi, yi, self.spec.eps_max, guess=guess)
        m0 = res.margins[0][1]
        if res.radius > 0 and math.isfinite(res.upper):
            self.ratios[m].append(res.radius / m0)
        return MethodRecord(res.radius, None if math.isinf(res.upper) else res.upper, res.evaluations, res.seconds,
                            m0, tuple(tuple(p) for p in res.margins))

    def certify(self, index: int, xi: torch.Tensor, yi: torch.Tensor) -> ExampleRecord:
        """The record of example ``index``: prediction, attack, every method's radius search.

        Args:
            index: its position in the dataset.
            xi: (1, C, H, W) input.
            yi: (1,) label.
        """
        start = time.perf_counter()
        with torch.no_grad():
            pred = int(self.model(xi).argmax(1))
        label = int(yi)
        certs = self._certifiers(xi)
        first = certs[self.spec.methods[0]]
        covered = first.covered_model()
        lowering = distance = None
        if self.adaptive:
            with torch.no_grad():
                distance = float((covered(xi) - self.model(xi)).abs().max())
            lowering = first.description
        emp, growth, attack_seconds = self._attack(covered, xi, yi, pred == label)
        history = getattr(first.bounds, "history", None)
        if history is not None:  # a controlled adaptive solver: the trajectory graph of each bound
            history.clear()
        methods = {m: self._search(certs[m], m, xi, yi, emp) for m in self.spec.methods}
        checked = self.spec.attack and pred == label
        unsound = soundness_flags({m: r.radius for m, r in methods.items()}, emp, index) if checked else []
        return ExampleRecord(
            index=index, label=label, pred=pred, correct=pred == label,
            empirical=emp if math.isfinite(emp) else None, methods=methods,
            ratio={m: ratio(r.radius, emp) for m, r in methods.items()}, unsound=tuple(unsound),
            certificate_covers=first.covers, lowering=lowering, adaptive_distance=distance,
            attack_seconds=attack_seconds, growth=None if growth is None else tuple(growth),
            seconds=time.perf_counter() - start, trajectory_nodes=None if history is None else tuple(history),
            **peak_memory_mb())


def certify_run(spec: RunSpec, out: str | os.PathLike[str], model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                *, resume: bool = False, progress: bool = True,
                on_record: Callable[[ExampleRecord], None] | None = None) -> dict[str, Any]:
    """Certify the examples of ``spec.shard`` (i ≡ k−1 mod N) here, appending one JSON line per example.

    Args:
        spec: the run (``config.json``) and the shard this process serves.
        out: run directory.
        model: classifier in eval mode (``spec.solver`` already swapped in).
        x, y: the examples (N, C, H, W) and labels; the first ``spec.n`` are certified.
        resume: continue an interrupted run (a shard joining a run that another shard
            started needs no ``resume``; the configuration must still match).
        progress: show a tqdm bar.
        on_record: called after each record is written (tests use it to interrupt a run).

    Returns:
        the summary dict of this shard (also written to ``summary[-k-of-N].json``/``.md``).

    Raises:
        RunConfigError: existing run without ``resume``, or a different configuration.
        CertifyError: an adaptive solver without ``spec.fixed_steps``.
    """
    from tqdm import tqdm

    engine = ExampleCertifier(spec, model)  # refuses an adaptive solver before the run directory exists
    out = Path(out)
    path = results_path(out, spec.shard)
    # A shard that has not run yet joins a sharded run another shard started (same config):
    # only a rerun of a shard that already wrote results needs ``resume``.
    prepare_run(out, spec, resume or (spec.shard[1] > 1 and not path.exists()))
    path.touch()  # an empty shard (more shards than examples) is still a shard that ran
    todo, done = shard_todo(spec, min(x.shape[0], spec.n), path)
    engine.ratios = resume_ratios(done, spec.methods)
    for i in tqdm(todo, desc=f"certify {spec.norm}", disable=not progress):
        rec = engine.certify(i, x[i:i + 1], y[i:i + 1])
        append_record(path, rec)
        if on_record is not None:
            on_record(rec)
    return write_summary(out, read_records(path), spec.methods, spec.eps, spec.shard)


def write_summary(out: Path, records: list[dict[str, Any]], methods: Sequence[str], eps_list: Sequence[float],
                  shard: tuple[int, int] = (1, 1)) -> dict[str, Any]:
    """Summarize records into ``summary*.json`` and ``summary*.md`` in ``out``."""
    records = sorted(records, key=lambda r: r["index"])
    summary = summarize(records, methods, eps_list)
    summary["peak_memory"] = {k: max((r.get(k, 0.0) for r in records), default=0.0)
                              for k in ("max_rss_mb", "cuda_max_allocated_mb") if any(k in r for r in records)}
    nodes = [max(n for _, n in r["trajectory_nodes"]) for r in records if r.get("trajectory_nodes")]
    table_extra = ""
    if nodes:
        summary["trajectory_nodes"] = {"median": statistics.median(nodes), "max": max(nodes), "min": min(nodes)}
        table_extra = (f"\ntrajectory graph of the controlled adaptive solver: {statistics.median(nodes):g} nodes per "
                       f"example (median of the largest graph of each radius search; {min(nodes)}..{max(nodes)})")
    suffix = "" if shard[1] == 1 else f"-{shard[0]}-of-{shard[1]}"
    (out / f"summary{suffix}.json").write_text(json.dumps(summary, indent=1))
    table = summary_table(summary, eps_list) + table_extra
    (out / f"summary{suffix}.md").write_text(table + "\n")
    summary["table"] = table
    return summary


def merge_run(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Join ``results-k-of-N.jsonl`` shards into ``results.jsonl`` and summarize.

    Raises:
        RunConfigError: no shards, shards of different N, missing shards or duplicate indices.
    """
    out = Path(out)
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        raise RunConfigError(f"{out} is not a certification run directory (no config.json)")
    spec = RunSpec.from_json(json.loads(cfg_path.read_text()))
    return write_summary(out, join_shards(out), spec.methods, spec.eps)


def join_shards(out: Path) -> list[dict[str, Any]]:
    """The records of every shard in ``out``, checked and written to ``results.jsonl``."""
    shards = sorted(out.glob("results-*-of-*.jsonl"))
    if not shards:
        raise RunConfigError(f"no shard files results-k-of-N.jsonl in {out}")
    totals = {p.stem.split("-of-")[1] for p in shards}
    if len(totals) != 1:
        raise RunConfigError(f"shards of different N in {out}: {sorted(p.name for p in shards)}")
    n = int(totals.pop())
    have = {int(p.stem.split("-")[1]) for p in shards}
    missing = sorted(set(range(1, n + 1)) - have)
    if missing:
        raise RunConfigError(f"missing shards {missing} of {n} in {out}")
    records: dict[int, dict[str, Any]] = {}
    for p in shards:
        for r in read_records(p):
            if r["index"] in records:
                raise RunConfigError(f"example {r['index']} appears twice ({p.name})")
            records[r["index"]] = r
    merged = out / "results.jsonl"
    with open(merged, "w") as f:
        for i in sorted(records):
            f.write(json.dumps(records[i]) + "\n")
    return list(records.values())


def finished_examples(out: str | os.PathLike[str]) -> int:
    """Examples already written in a run directory (every shard file; 0 when none)."""
    out = Path(out)
    shards = sorted(out.glob("results-*-of-*.jsonl"))
    return sum(len(read_records(p)) for p in (shards or [out / "results.jsonl"]))


__all__ = ["DEFAULT_EPS", "EPS_MAX", "METHODS", "ExampleCertifier", "ExampleRecord", "MethodRecord",
           "RunConfigError", "RunSpec", "append_record", "certify_run", "finished_examples",
           "join_shards", "merge_run", "parse_shard", "peak_memory_mb", "prepare_run", "read_example_records",
           "read_records", "results_path", "resume_ratios", "shard_todo", "write_summary"]
