"""A resumable certification run: certified radii per example, next to attack radii, as JSONL.

Each finished example is appended to ``results[-k-of-N].jsonl`` as one JSON line and
flushed + fsynced, so a run killed at any point loses at most the example in progress;
``resume=True`` skips the indices already written after checking that the run
configuration (``config.json``) is the same.

References:
    Xu et al., "Automatic Perturbation Analysis for Scalable Certified Robustness and
    Beyond", NeurIPS 2020.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .certify import METHODS, Certifier, CertifyError, check_adaptive, check_method, check_norm
from .unroll import is_adaptive
from .compare import empirical_radius, measured_growth, ratio, soundness_flags, summarize, summary_table

#: default ε grid of the summary table and search ceilings, per norm. The L2 grid brackets what CROWN
#: certifies on the zoo models (median 0.059 on resnet) and what CW finds (median 0.95 there).
DEFAULT_EPS: dict[str, tuple[float, ...]] = {"inf": (0.01, 0.02, 0.05, 0.1), "2": (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)}
EPS_MAX: dict[str, float] = {"inf": 0.5, "2": 5.0}
ALL_METHODS: tuple[str, ...] = ("ibp", "crown", "alpha-crown", "forward", "lipschitz")


class RunConfigError(ValueError):
    """A run directory whose configuration differs from the requested one (or bad run arguments)."""


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"k/N"`` -> (k, N) with 1 ≤ k ≤ N; None -> (1, 1)."""
    if spec is None:
        return 1, 1
    try:
        k, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise RunConfigError(f"--shard must look like k/N (e.g. 2/4), got {spec!r}") from None
    if not (n >= 1 and 1 <= k <= n):
        raise RunConfigError(f"--shard k/N needs 1 <= k <= N, got {spec!r}")
    return k, n


def results_path(out: Path, shard: tuple[int, int]) -> Path:
    """The JSONL file of one shard (``results.jsonl`` when unsharded)."""
    k, n = shard
    return out / ("results.jsonl" if n == 1 else f"results-{k}-of-{n}.jsonl")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn last line (killed mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _prepare(out: Path, config: dict[str, Any], resume: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "config.json"
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


def certify_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: str | os.PathLike[str],
                methods: Sequence[str], norm: str, config: dict[str, Any], eps_list: Sequence[float] | None = None,
                shard: tuple[int, int] = (1, 1), resume: bool = False, seed: int = 0, attack: bool = True,
                progress: bool = True, on_record: Callable[[dict[str, Any]], None] | None = None,
                fixed_steps: bool = False) -> dict[str, Any]:
    """Certify examples ``x[i]`` (i ≡ k−1 mod N for shard k/N), appending one JSON line per example.

    Args:
        model: classifier in eval mode.
        x, y: the examples (N, C, H, W) and labels.
        out: run directory.
        methods: keys of :data:`~verify.certify.METHODS`.
        norm: ``"inf"`` or ``"2"``.
        config: the run configuration (written to / checked against ``config.json``).
        eps_list: ε values of the summary's certified accuracy.
        shard: (k, N).
        resume: continue an interrupted run (a shard joining a run that another shard
            started needs no ``resume``; the configuration must still match).
        seed: attack seed.
        attack: compute the empirical radius and the soundness check.
        progress: show a tqdm bar.
        on_record: called after each record is written (tests use it to interrupt a run).
        fixed_steps: for an adaptive ODE solver, certify (and attack, for the soundness
            check) the fixed-step surrogate of each example's accepted steps; every record
            then says ``"certificate_covers": "fixed-step surrogate, not the deployed solver"``.
            Without it an adaptive solver is refused.

    Returns:
        the summary dict of this shard (also written to ``summary[-k-of-N].json``/``.md``).

    Raises:
        RunConfigError: existing run without ``resume``, or a different configuration.
        CertifyError: bad norm or method; an adaptive solver without ``fixed_steps``.
    """
    norm = check_norm(norm)
    methods = [check_method(m) for m in methods]
    if not methods:
        raise CertifyError("no certification method given")
    for m in methods:
        check_adaptive(model, m, fixed_steps)
    adaptive = is_adaptive(model)
    eps_list = tuple(eps_list or DEFAULT_EPS[norm])
    out = Path(out)
    path = results_path(out, shard)
    # A shard that has not run yet joins a sharded run another shard started (same config):
    # only a rerun of a shard that already wrote results needs ``resume``.
    _prepare(out, config, resume or (shard[1] > 1 and not path.exists()))
    path.touch()  # an empty shard (more shards than examples) is still a shard that ran
    done = {r["index"] for r in read_records(path)}
    todo = [i for i in range(x.shape[0]) if i % shard[1] == shard[0] - 1 and i not in done]
    certifiers = {} if adaptive else {m: Certifier(model, norm, m) for m in methods}
    from tqdm import tqdm

    # Each search starts from the radius-to-margin ratios of the examples before it (see
    # Certifier.radius); rebuild them on resume so a resumed run takes exactly the same search
    # path as an uninterrupted one.
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    for r in sorted(read_records(path), key=lambda r: r["index"]):
        for m in methods:
            rec_m = r["methods"].get(m, {})
            if rec_m.get("radius", 0) > 0 and rec_m.get("upper") is not None and rec_m.get("margin0"):
                ratios[m].append(rec_m["radius"] / rec_m["margin0"])
    for m, cert in certifiers.items():
        cert.search_ratios.extend(ratios[m])
    for i in tqdm(todo, desc=f"certify {norm}", disable=not progress):
        start = time.perf_counter()
        xi, yi = x[i:i + 1], y[i:i + 1]
        with torch.no_grad():
            pred = int(model(xi).argmax(1))
        rec: dict[str, Any] = {"index": i, "label": int(yi), "pred": pred, "correct": pred == int(yi),
                               "empirical": None, "methods": {}, "ratio": {}, "unsound": []}
        if adaptive:
            # one surrogate per example (its accepted steps); the attack checks what is certified
            for m in methods:
                certifiers[m] = Certifier(model, norm, m, x_clean=xi, fixed_steps=True)
                certifiers[m].search_ratios.extend(ratios[m])
        first = certifiers[methods[0]]
        covered = first.covered_model()
        rec["certificate_covers"] = first.covers
        if adaptive:
            with torch.no_grad():
                distance = float((covered(xi) - model(xi)).abs().max())
            rec["lowering"], rec["adaptive_distance"] = first.description, distance
        emp, growth = math.inf, None
        attack_start = time.perf_counter()
        if attack and rec["correct"]:
            r_emp, x_adv = empirical_radius(covered, xi, yi, norm, seed)
            emp = float(r_emp[0])
            rec["empirical"] = emp if math.isfinite(emp) else None
            if math.isfinite(emp):
                growth = measured_growth(model, xi, x_adv[:1])
        rec["attack_seconds"] = time.perf_counter() - attack_start
        rec["growth"] = growth
        for m in methods:
            cert = certifiers[m]
            g = None if ratios[m] else (0.5 * emp if math.isfinite(emp) and emp > 0 else None)
            res = cert.radius(xi, yi, EPS_MAX[norm], guess=g)
            m0 = res.margins[0][1]
            if res.radius > 0 and math.isfinite(res.upper):
                ratios[m].append(res.radius / m0)
            rec["methods"][m] = {"radius": res.radius, "upper": None if math.isinf(res.upper) else res.upper,
                                 "evaluations": res.evaluations, "seconds": res.seconds, "margin0": m0,
                                 "margins": [list(p) for p in res.margins]}
            rec["ratio"][m] = ratio(res.radius, emp)
        if attack and rec["correct"]:
            rec["unsound"] = soundness_flags({m: v["radius"] for m, v in rec["methods"].items()}, emp, i)
        rec["seconds"] = time.perf_counter() - start
        rec.update(peak_memory_mb())
        _append(path, rec)
        if on_record is not None:
            on_record(rec)
    return write_summary(out, read_records(path), methods, eps_list, shard)


def _shard_worker(model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: str, kwargs: dict[str, Any],
                  threads: int) -> int:
    """One worker of :func:`certify_parallel`: its shard, resumed, without a progress bar.

    Ctrl-C reaches every worker; each returns quietly (its finished examples are on disk)
    and the parent says what finished.
    """
    torch.set_num_threads(threads)
    try:
        certify_run(model, x, y, out, resume=True, progress=False, **kwargs)
    except KeyboardInterrupt:
        return 1
    return 0


def certify_parallel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: str | os.PathLike[str],
                     methods: Sequence[str], norm: str, config: dict[str, Any], eps_list: Sequence[float] | None = None,
                     jobs: int = 2, resume: bool = False, seed: int = 0, attack: bool = True,
                     progress: bool = True, fixed_steps: bool = False) -> dict[str, Any]:
    """:func:`certify_run` on ``jobs`` processes: worker k certifies shard k/jobs, then the shards are merged.

    Each worker runs with ``cpu_count // jobs`` torch threads and appends to its own
    ``results-k-of-jobs.jsonl``, so an interrupted run resumes (``resume=True``, same ``jobs``)
    without losing or repeating an example; ``results.jsonl`` and the summary are the merge.
    The workers are spawned processes, which import the calling script again: call this from
    under ``if __name__ == "__main__":`` in a script (``python -m verify certify --jobs`` needs nothing).

    Args:
        model, x, y, out, methods, norm, config, eps_list, seed, attack, fixed_steps: as for
            :func:`certify_run`.
        jobs: number of worker processes (1: plain :func:`certify_run`).
        resume: continue an interrupted run.
        progress: a tqdm bar over all examples.

    Returns:
        the merged summary.

    Raises:
        RunConfigError: ``jobs`` < 1, an existing run without ``resume`` or with another configuration.
        CertifyError: bad norm or method.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise RunConfigError(f"jobs must be a positive integer, got {jobs!r}")
    kwargs: dict[str, Any] = {"methods": list(methods), "norm": norm, "config": config, "eps_list": eps_list,
                              "seed": seed, "attack": attack, "fixed_steps": fixed_steps}
    if jobs == 1:
        return certify_run(model, x, y, out, resume=resume, progress=progress, **kwargs)
    for m in methods:
        check_method(m)
    norm = check_norm(norm)
    for m in methods:
        check_adaptive(model, m, fixed_steps)
    out = Path(out)
    _prepare(out, config, resume)
    paths = [results_path(out, (k, jobs)) for k in range(1, jobs + 1)]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    from tqdm import tqdm

    def finished() -> int:
        return sum(len(read_records(p)) for p in paths)

    # spawn, not fork: a forked child inherits torch's thread pools and may deadlock in them
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_shard_worker, model, x, y, str(out), {**kwargs, "shard": (k, jobs)}, threads)
                   for k in range(1, jobs + 1)]
        with tqdm(total=x.shape[0], initial=finished(), desc=f"certify {norm} ({jobs} jobs)",
                  disable=not progress) as bar:
            while not all(f.done() for f in futures):
                time.sleep(1.0)
                bar.update(finished() - bar.n)
        for f in futures:
            if f.result():  # re-raises a worker's exception; 1: the worker was interrupted
                raise KeyboardInterrupt
    return write_summary(out, _join_shards(out), methods, tuple(eps_list or DEFAULT_EPS[norm]))


def write_summary(out: Path, records: list[dict[str, Any]], methods: Sequence[str], eps_list: Sequence[float],
                  shard: tuple[int, int] = (1, 1)) -> dict[str, Any]:
    """Summarize records into ``summary*.json`` and ``summary*.md`` in ``out``."""
    records = sorted(records, key=lambda r: r["index"])
    summary = summarize(records, methods, eps_list)
    summary["peak_memory"] = {k: max((r.get(k, 0.0) for r in records), default=0.0)
                              for k in ("max_rss_mb", "cuda_max_allocated_mb") if any(k in r for r in records)}
    suffix = "" if shard[1] == 1 else f"-{shard[0]}-of-{shard[1]}"
    (out / f"summary{suffix}.json").write_text(json.dumps(summary, indent=1))
    table = summary_table(summary, eps_list)
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
    config = json.loads(cfg_path.read_text())
    return write_summary(out, _join_shards(out), config["methods"], config["eps"])


def _join_shards(out: Path) -> list[dict[str, Any]]:
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


__all__ = ["ALL_METHODS", "finished_examples", "DEFAULT_EPS", "EPS_MAX", "METHODS", "RunConfigError", "certify_parallel", "certify_run",
           "merge_run",
           "parse_shard", "read_records", "results_path", "write_summary"]
