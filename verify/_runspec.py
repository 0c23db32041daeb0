"""The typed records of a certification run: its :class:`RunSpec` (``config.json``) and one
:class:`ExampleRecord` per JSONL line.

Both keep the on-disk format of earlier runs: ``RunSpec.to_json()`` writes exactly the keys
``config.json`` always held (the optional ones only when set), so an old run directory still
resumes, and ``ExampleRecord.from_json(line).to_json()`` gives the line back.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from models.solver import SolverConfig

from .certify import BAB_TIME_LIMIT, CertifyError, check_engine, check_method, check_norm

#: default ε grid of the summary table and search ceilings, per norm. The L2 grid brackets what CROWN
#: certifies on the zoo models (median 0.059 on resnet) and what CW finds (median 0.95 there).
DEFAULT_EPS: dict[str, tuple[float, ...]] = {"inf": (0.01, 0.02, 0.05, 0.1), "2": (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)}
EPS_MAX: dict[str, float] = {"inf": 0.5, "2": 5.0}
#: the dataset every run certifies (the held-out MNIST images, the first ``n``).
DATASET = "mnist-t10k/test"


class RunConfigError(ValueError):
    """A run directory whose configuration differs from the requested one (or bad run arguments)."""


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"k/N"`` -> (k, N) with 1 ≤ k ≤ N; None -> (1, 1).

    Raises:
        RunConfigError: not of the form k/N, or k outside 1..N.
    """
    if spec is None:
        return 1, 1
    try:
        k, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise RunConfigError(f"--shard must look like k/N (e.g. 2/4), got {spec!r}") from None
    if not (n >= 1 and 1 <= k <= n):
        raise RunConfigError(f"--shard k/N needs 1 <= k <= N, got {spec!r}")
    return k, n


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a certification run computes: everything its ``config.json`` holds, plus the shard it serves.

    Attributes:
        model: zoo name, checkpoint path or ``FILE.py:FUNCTION`` factory.
        weights: the factory's state dict (``--weights``), or None.
        arch: the model's architecture (checkpoint metadata), for figure titles.
        norm: ``"inf"`` or ``"2"``.
        methods: keys of :data:`~verify.certify.METHODS`, in record order.
        n: examples (the first ``n`` of :attr:`dataset`).
        eps: ε values of the summary's certified accuracy (default: :data:`DEFAULT_EPS` of the norm).
        seed: attack seed.
        attack: compute the empirical radius and the soundness check.
        dataset: where the examples come from.
        jobs: lanes the run is split into (``results-k-of-jobs.jsonl``, merged at the end);
            the same on every backend, so a run started on one resumes on another.
        solver: the ODE solver swapped in before certifying (``--solver``).
        fixed_steps: certify an adaptive solver's fixed-step surrogate.
        engine: :data:`~verify.certify.ENGINES` entry for ``crown``.
        time_limit: ``bab``: seconds per example and ε of branch and bound.
        shard: (k, N): the examples i ≡ k−1 mod N this process certifies. Not part of
            ``config.json``: every shard of a run shares one configuration.

    Raises:
        RunConfigError: any field out of range, naming it.
    """

    model: str
    weights: str | None = None
    arch: str | None = None
    norm: str = "inf"
    methods: tuple[str, ...] = ("crown",)
    n: int = 100
    eps: tuple[float, ...] = ()
    seed: int = 0
    attack: bool = True
    dataset: str = DATASET
    jobs: int = 1
    solver: SolverConfig | None = None
    fixed_steps: bool = False
    engine: str = "auto"
    time_limit: float = BAB_TIME_LIMIT
    shard: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise RunConfigError(f"RunSpec.model must be a zoo name or checkpoint path, got {self.model!r}")
        if self.weights is not None and not isinstance(self.weights, str):
            raise RunConfigError(f"RunSpec.weights must be a path, got {self.weights!r}")
        try:
            norm = check_norm(self.norm)
            methods = tuple(check_method(m) for m in ([self.methods] if isinstance(self.methods, str)
                                                      else self.methods))
        except CertifyError as err:
            raise RunConfigError(str(err)) from None
        if not methods:
            raise RunConfigError("no certification method given")
        if len(set(methods)) != len(methods):
            raise RunConfigError(f"RunSpec.methods lists a method twice: {list(methods)}")
        for name in ("n", "jobs", "seed"):
            v = getattr(self, name)
            if not _is_int(v) or (name != "seed" and v < 1):
                raise RunConfigError(f"RunSpec.{name} must be {'an' if name == 'seed' else 'a positive'} integer, "
                                     f"got {v!r}")
        eps = tuple(self.eps) or DEFAULT_EPS[norm]
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and e > 0
                   for e in eps):
            raise RunConfigError(f"RunSpec.eps must be positive finite numbers, got {list(eps)}")
        for name in ("attack", "fixed_steps"):
            if not isinstance(getattr(self, name), bool):
                raise RunConfigError(f"RunSpec.{name} must be true or false, got {getattr(self, name)!r}")
        if (isinstance(self.time_limit, bool) or not isinstance(self.time_limit, (int, float))
                or not math.isfinite(self.time_limit) or self.time_limit <= 0):
            raise RunConfigError(f"RunSpec.time_limit must be a positive number of seconds, got {self.time_limit!r}")
        try:
            check_engine(self.engine)
        except CertifyError as err:
            raise RunConfigError(str(err)) from None
        solver = SolverConfig.from_dict(dict(self.solver)) if isinstance(self.solver, Mapping) else self.solver
        if solver is not None and not isinstance(solver, SolverConfig):
            raise RunConfigError(f"RunSpec.solver must be a SolverConfig, got {type(solver).__name__}")
        shard = self._check_shard(self.shard)
        if self.jobs > 1 and shard[1] not in (1, self.jobs):
            raise RunConfigError("--jobs runs every shard on this machine: give --jobs or --shard, not both")
        for name, v in (("norm", norm), ("methods", methods), ("eps", tuple(float(e) for e in eps)),
                        ("solver", solver), ("shard", shard)):
            object.__setattr__(self, name, v)

    @staticmethod
    def _check_shard(shard: Any) -> tuple[int, int]:
        try:
            k, n = shard
        except (TypeError, ValueError):
            raise RunConfigError(f"RunSpec.shard must be a pair (k, N), got {shard!r}") from None
        if not (_is_int(k) and _is_int(n) and n >= 1 and 1 <= k <= n):
            raise RunConfigError(f"--shard k/N needs 1 <= k <= N, got {shard!r}")
        return k, n

    @property
    def eps_max(self) -> float:
        """The ceiling of every radius search (per norm)."""
        return EPS_MAX[self.norm]

    def lane(self, k: int, of: int) -> RunSpec:
        """This run's shard k of ``of`` (a lane of a ``jobs`` run, or a job-array task)."""
        return dataclasses.replace(self, shard=(k, of))

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` object (the optional keys only when set; no shard)."""
        out: dict[str, Any] = {"model": self.model, "arch": self.arch, "norm": self.norm,
                               "methods": list(self.methods), "n": self.n, "eps": list(self.eps), "seed": self.seed,
                               "attack": self.attack, "dataset": self.dataset}
        if self.jobs > 1:
            out["jobs"] = self.jobs  # a resumed run must use the same shards
        if self.solver is not None:
            out["solver"] = self.solver.to_dict()
        if self.fixed_steps:
            out["fixed_steps"] = True
        if self.engine != "auto":
            out["engine"] = self.engine
        if self.time_limit != BAB_TIME_LIMIT:
            out["time_limit"] = self.time_limit
        if self.weights is not None:
            out["weights"] = self.weights
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], shard: tuple[int, int] = (1, 1)) -> RunSpec:
        """The spec of a ``config.json`` object.

        Raises:
            RunConfigError: not an object, an unknown or missing key, or a bad value.
        """
        if not isinstance(obj, Mapping):
            raise RunConfigError(f"config.json must hold a JSON object, got {type(obj).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"shard"}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise RunConfigError(f"config.json: unknown key(s) {', '.join(unknown)}")
        if "model" not in obj:
            raise RunConfigError("config.json: missing key model")
        return cls(**{k: tuple(v) if k in ("methods", "eps") and isinstance(v, list) else v for k, v in obj.items()},
                   shard=shard)


@dataclasses.dataclass(frozen=True)
class MethodRecord:
    """One method's radius search on one example (``record["methods"][m]``).

    Attributes:
        radius: certified radius (0 when misclassified or nothing certified).
        upper: smallest ε the bound failed at (None: never failed below the ceiling).
        evaluations: bound evaluations of the search.
        seconds: time of the search.
        margin0: the clean margin (true class minus the runner-up).
        margins: (ε, lower bound of the worst margin) of every evaluation, the first at ε = 0.
    """

    radius: float
    upper: float | None
    evaluations: int
    seconds: float
    margin0: float
    margins: tuple[tuple[float, float], ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this search."""
        return {"radius": self.radius, "upper": self.upper, "evaluations": self.evaluations,
                "seconds": self.seconds, "margin0": self.margin0, "margins": [list(p) for p in self.margins]}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> MethodRecord:
        """Inverse of :meth:`to_json`."""
        return cls(obj["radius"], obj.get("upper"), obj.get("evaluations", 0), obj.get("seconds", 0.0),
                   obj.get("margin0", 0.0), tuple((float(e), float(m)) for e, m in obj.get("margins", ())))


#: keys written only when set (runs of fixed solvers have no lowering; CPU runs no CUDA memory).
_OPTIONAL = ("certificate_covers", "lowering", "adaptive_distance", "attack_seconds", "max_rss_mb",
             "cuda_max_allocated_mb", "trajectory_nodes")


@dataclasses.dataclass(frozen=True)
class ExampleRecord:
    """One example of a run: one line of ``results*.jsonl``.

    Attributes:
        index: position in the dataset.
        label, pred: true and predicted class; ``correct`` is their equality.
        empirical: the attack's radius (None: not attacked, misclassified, or nothing found).
        methods: method -> its radius search.
        ratio: method -> certified / empirical radius (None when undefined).
        unsound: methods whose certified radius exceeds the empirical one.
        growth: ‖z_n − y_n‖₂ / ‖z_0 − y_0‖₂ after each solver step for the attack's δ (or None).
        certificate_covers: what the certificates hold for (deployed solver or surrogate).
        lowering: for an adaptive solver, the description of the surrogate certified.
        adaptive_distance: max |surrogate logits − deployed logits| on the clean input.
        attack_seconds: time of the attack and growth measurement.
        seconds: wall time of the example.
        max_rss_mb, cuda_max_allocated_mb: the worker's peak memory so far.
        trajectory_nodes: a controlled adaptive solver's trajectory graph: [ε, nodes] of each
            bound of the first method's radius search.
    """

    index: int
    label: int
    pred: int
    correct: bool
    empirical: float | None
    methods: dict[str, MethodRecord]
    ratio: dict[str, float | None]
    unsound: tuple[str, ...] = ()
    certificate_covers: str | None = None
    lowering: str | None = None
    adaptive_distance: float | None = None
    attack_seconds: float | None = None
    growth: tuple[float, ...] | None = None
    seconds: float = 0.0
    max_rss_mb: float | None = None
    cuda_max_allocated_mb: float | None = None
    trajectory_nodes: tuple[tuple[float, int], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this line (keys in the order runs always wrote them)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.name in _OPTIONAL:
                continue
            if f.name == "methods":
                v = {m: r.to_json() for m, r in v.items()}
            elif f.name in ("unsound", "growth") and v is not None:
                v = list(v)
            elif f.name == "trajectory_nodes" and v is not None:
                v = [list(p) for p in v]
            elif f.name == "ratio":
                v = dict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ExampleRecord:
        """Inverse of :meth:`to_json`.

        Raises:
            RunConfigError: a key that no record has, or one that every record has missing.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise RunConfigError(f"example record: unknown key(s) {', '.join(unknown)}")
        try:
            kw = dict(obj)
            kw["methods"] = {m: MethodRecord.from_json(r) for m, r in obj["methods"].items()}
            kw["unsound"] = tuple(obj.get("unsound", ()))
            if obj.get("growth") is not None:
                kw["growth"] = tuple(obj["growth"])
            if obj.get("trajectory_nodes") is not None:
                kw["trajectory_nodes"] = tuple((float(e), int(n)) for e, n in obj["trajectory_nodes"])
            return cls(**kw)
        except (KeyError, TypeError) as err:
            raise RunConfigError(f"example record {obj.get('index', '?')}: missing or bad field ({err})") from None


__all__ = ["DATASET", "DEFAULT_EPS", "EPS_MAX", "ExampleRecord", "MethodRecord", "RunConfigError",
           "RunSpec", "parse_shard"]
