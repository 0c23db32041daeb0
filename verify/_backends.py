"""Where the lanes of a certification run execute: local processes or a Dask cluster.

Both backends run the same :class:`~verify.run.RunSpec` in ``spec.jobs`` lanes; lane k
certifies shard k/jobs in order (each search starting from the ratios of the lane's earlier
examples) into ``results-k-of-jobs.jsonl``, so the files, the records and ``--resume`` are the
same on either: a run started on a cluster resumes on one machine and back.

- :class:`LocalProcesses`: one spawned process per lane, each appending to its own file.
- :class:`DaskCluster`: one Dask task per example, the next example of a lane submitted when
  its previous one finishes; the driver appends each finished record (fsynced) as its
  future completes, so an interrupted run loses only the examples in flight. Dask
  distributed rather than Ray: pure Python and pip-installable, no daemon to run on the
  driver (``dask scheduler`` / ``dask worker`` on the nodes, or an in-process
  ``LocalCluster``), and a ``concurrent.futures``-style API.

References:
    Rocklin, "Dask: Parallel Computation with Blocked algorithms and Task Scheduling",
    SciPy 2015.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .run import (ExampleCertifier, ExampleRecord, RunConfigError, RunSpec, append_record, certify_run, join_shards,
                  prepare_run, read_records, results_path, resume_ratios, shard_todo, write_summary)

__all__ = ["BACKENDS", "Backend", "DaskCluster", "LocalProcesses", "certify_parallel", "make_backend"]


class Backend(Protocol):
    """Runs every lane of a spec and returns the merged summary."""

    def run(self, spec: RunSpec, out: Path, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
            resume: bool, progress: bool) -> dict[str, Any]:
        """Certify ``x[:spec.n]`` into ``out`` (see :func:`verify.run.certify_parallel`)."""
        ...


def _summary(spec: RunSpec, out: Path) -> dict[str, Any]:
    """The run's summary: one lane's file, or the merge of the lanes."""
    if spec.jobs == 1:
        return write_summary(out, read_records(results_path(out, (1, 1))), spec.methods, spec.eps)
    return write_summary(out, join_shards(out), spec.methods, spec.eps)


def _lane_worker(spec: RunSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: str, threads: int) -> int:
    """One process of :class:`LocalProcesses`: its lane, resumed, without a progress bar.

    Ctrl-C reaches every worker; each returns quietly (its finished examples are on disk)
    and the parent says what finished.
    """
    torch.set_num_threads(threads)
    try:
        certify_run(spec, out, model, x, y, resume=True, progress=False)
    except KeyboardInterrupt:
        return 1
    return 0


@dataclasses.dataclass(frozen=True)
class LocalProcesses:
    """``spec.jobs`` spawned processes on this machine, ``cpu_count // jobs`` torch threads each."""

    def run(self, spec: RunSpec, out: Path, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
            resume: bool, progress: bool) -> dict[str, Any]:
        """Certify every lane; see :func:`verify.run.certify_parallel`."""
        from tqdm import tqdm

        if spec.jobs == 1:
            return certify_run(spec, out, model, x, y, resume=resume, progress=progress)
        ExampleCertifier(spec, model)  # refuse an adaptive solver before the run directory exists
        prepare_run(out, spec, resume)
        jobs = spec.jobs
        paths = [results_path(out, (k, jobs)) for k in range(1, jobs + 1)]
        threads = max(1, (os.cpu_count() or 1) // jobs)

        def finished() -> int:
            return sum(len(read_records(p)) for p in paths)

        # spawn, not fork: a forked child inherits torch's thread pools and may deadlock in them
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_lane_worker, spec.lane(k, jobs), model, x, y, str(out), threads)
                       for k in range(1, jobs + 1)]
            with tqdm(total=x.shape[0], initial=finished(), desc=f"certify {spec.norm} ({jobs} jobs)",
                      disable=not progress) as bar:
                while not all(f.done() for f in futures):
                    time.sleep(1.0)
                    bar.update(finished() - bar.n)
            for f in futures:
                if f.result():  # re-raises a worker's exception; 1: the worker was interrupted
                    raise KeyboardInterrupt
        return _summary(spec, out)


#: per worker thread, the example certifiers of the lanes it has served (their traced bounds are reused).
_WORKER_CERTIFIERS: dict[tuple[int, int, str], tuple[nn.Module, ExampleCertifier]] = {}


def _certify_example(spec: RunSpec, model: nn.Module, xi: torch.Tensor, yi: torch.Tensor, index: int,
                     ratios: dict[str, list[float]]) -> ExampleRecord:
    """One Dask task: example ``index`` of a lane, its search starting from the lane's ``ratios``."""
    # keyed by thread too: in-process workers may share one model object, and a certifier is not thread-safe
    key = (threading.get_ident(), id(model), json.dumps(spec.to_json(), sort_keys=True))
    if key not in _WORKER_CERTIFIERS:
        if len(_WORKER_CERTIFIERS) >= 8:
            _WORKER_CERTIFIERS.clear()
        _WORKER_CERTIFIERS[key] = (model, ExampleCertifier(spec, model))  # the model pins id(model)
    engine = _WORKER_CERTIFIERS[key][1]
    engine.ratios = {m: list(v) for m, v in ratios.items()}
    return engine.certify(index, xi, yi)


@dataclasses.dataclass
class _Lane:
    """The driver's view of one lane: its file, what is left, its ratios."""

    spec: RunSpec
    path: Path
    todo: list[int]
    ratios: dict[str, list[float]]

    @classmethod
    def open(cls, spec: RunSpec, out: Path, n_examples: int) -> _Lane:
        path = results_path(out, spec.shard)
        path.touch()  # an empty lane (more lanes than examples) is still a lane that ran
        todo, done = shard_todo(spec, n_examples, path)
        return cls(spec, path, todo, resume_ratios(done, spec.methods))

    def finish(self, rec: ExampleRecord) -> None:
        """Append a finished example; its search ratios feed the lane's next one."""
        append_record(self.path, rec)
        for m, r in rec.methods.items():
            if r.radius > 0 and r.upper is not None and r.margin0:
                self.ratios[m].append(r.radius / r.margin0)


@dataclasses.dataclass(frozen=True)
class DaskCluster:
    """A Dask distributed cluster: the scheduler at ``address``, or a ``LocalCluster`` of ``spec.jobs`` workers.

    Attributes:
        address: scheduler address (``tcp://host:8786``); None starts a local cluster.
        processes: local cluster only: worker processes (True) or threads of this process.
        connect_timeout: seconds to wait for the scheduler at ``address``.
    """

    address: str | None = None
    processes: bool = True
    connect_timeout: float = 10.0

    @contextmanager
    def client(self, workers: int) -> Iterator[Any]:
        """A connected ``distributed.Client`` (closed, with its local cluster, on exit).

        Raises:
            RunConfigError: dask is not installed, or no scheduler answers at ``address``.
        """
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise RunConfigError("--backend dask needs dask distributed: pip install 'dask[distributed]' "
                                 "(make install does)") from None
        if self.address is not None:
            try:
                client = Client(self.address, timeout=self.connect_timeout)
            except (OSError, TimeoutError) as err:
                raise RunConfigError(f"--address {self.address}: no Dask scheduler answers "
                                     f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
            with client:
                yield client
            return
        threads = max(1, (os.cpu_count() or 1) // workers)
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=self.processes,
                          dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
            if self.processes:
                client.run(torch.set_num_threads, threads)
            yield client

    def run(self, spec: RunSpec, out: Path, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
            resume: bool, progress: bool) -> dict[str, Any]:
        """Certify every lane on the cluster; the driver writes every record. See :func:`verify.run.certify_parallel`."""
        from distributed import as_completed
        from tqdm import tqdm

        ExampleCertifier(spec, model)  # refuse an adaptive solver before the run directory exists
        with self.client(spec.jobs) as client:
            prepare_run(out, spec, resume)
            lanes = [_Lane.open(spec.lane(k, spec.jobs), out, x.shape[0]) for k in range(1, spec.jobs + 1)]
            model_f = client.scatter(model, broadcast=True)
            pending = as_completed()
            lane_of: dict[Any, _Lane] = {}

            def submit(lane: _Lane) -> None:
                if lane.todo:
                    i = lane.todo.pop(0)
                    fut = client.submit(_certify_example, lane.spec, model_f, x[i:i + 1], y[i:i + 1], i,
                                        lane.ratios, pure=False)
                    lane_of[fut] = lane
                    pending.add(fut)

            left = sum(len(lane.todo) for lane in lanes)
            for lane in lanes:
                submit(lane)
            with tqdm(total=x.shape[0], initial=x.shape[0] - left, desc=f"certify {spec.norm} (dask, {spec.jobs} "
                      "lanes)", disable=not progress) as bar:
                for fut in pending:
                    lane = lane_of.pop(fut)
                    lane.finish(fut.result())  # re-raises a task's exception
                    bar.update(1)
                    submit(lane)
        return _summary(spec, out)


#: ``--backend`` names.
BACKENDS: dict[str, type] = {"local": LocalProcesses, "dask": DaskCluster}


def make_backend(name: str, address: str | None = None) -> LocalProcesses | DaskCluster:
    """The backend of ``--backend NAME [--address ADDR]``.

    Raises:
        RunConfigError: an unknown name, or ``address`` with the local backend or not of the form
            scheme://host:port.
    """
    if name not in BACKENDS:
        raise RunConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "local":
        if address is not None:
            raise RunConfigError("--address names a Dask scheduler: use it with --backend dask")
        return LocalProcesses()
    if address is not None and ("://" not in address or not address.split("://", 1)[1]):
        raise RunConfigError(f"--address must look like tcp://host:8786, got {address!r}")
    return DaskCluster(address)


def certify_parallel(spec: RunSpec, out: str | os.PathLike[str], model: nn.Module, x: torch.Tensor,
                     y: torch.Tensor, *, backend: Backend | None = None, resume: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """Every example of ``spec`` in ``spec.jobs`` lanes on a backend; the lanes' files are then merged.

    Lane k certifies shard k/jobs in order into ``results-k-of-jobs.jsonl`` (one lane:
    ``results.jsonl``), so an interrupted run resumes (``resume=True``, same ``jobs``) without
    losing or repeating an example, on either backend; ``results.jsonl`` and the summary are the
    merge. The local backend spawns processes, which import the calling script again: call this
    from under ``if __name__ == "__main__":`` in a script (``python -m verify certify`` needs nothing).

    Args:
        spec: the run; ``spec.shard`` must be (1, 1).
        out, model, x, y, resume: as for :func:`certify_run`.
        backend: :class:`~verify._backends.LocalProcesses` (default) or
            :class:`~verify._backends.DaskCluster`.
        progress: a tqdm bar over all examples.

    Returns:
        the merged summary.

    Raises:
        RunConfigError: a sharded spec, an existing run without ``resume`` or with another configuration.
        CertifyError: an adaptive solver without ``spec.fixed_steps``.
    """
    if spec.shard != (1, 1):
        raise RunConfigError("--jobs runs every shard on this machine: give --jobs or --shard, not both")
    backend = backend if backend is not None else LocalProcesses()
    return backend.run(spec, Path(out), model, x[: spec.n], y[: spec.n], resume=resume, progress=progress)
