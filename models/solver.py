"""Solver configuration for ODE blocks.

One frozen :class:`SolverConfig` describes how an :class:`~models.odenet.ODEBlock`
integrates its vector field. It can be swapped at evaluation time, so a model trained
with one tolerance or end time can be tested with another (τ_test ≠ τ_train,
T_test ≠ T_train) without retraining.

References:
    Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018.
    Carrara et al., "On the robustness to adversarial examples of neural ODE image
    classifiers", WIFS 2019 (tolerance at test time).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

#: torchdiffeq's fixed-grid Runge–Kutta methods (``rk4`` is the 3/8 rule there).
FIXED_METHODS: tuple[str, ...] = ("euler", "midpoint", "heun2", "heun3", "rk4")
#: torchdiffeq's embedded adaptive-step methods.
ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8")
#: Controlled adaptive solvers (:mod:`models.cas`, GAINS): ``cas-`` + an embedded pair of
#: ``lipbound.tableau.TABLEAUS``; step sizes h0·2^k, h0 = ``step_size`` (None: learned).
CAS_METHODS: tuple[str, ...] = ("cas-dopri5", "cas-bosh3", "cas-heun-euler", "cas-fehlberg2")
METHODS: tuple[str, ...] = FIXED_METHODS + ADAPTIVE_METHODS + CAS_METHODS
#: Largest fixed grid accepted (a tiny step size is almost always a mistake).
MAX_FIXED_STEPS = 1_000_000


class SolverConfigError(ValueError):
    """An invalid solver configuration (unknown method, non-positive T, ...)."""


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """How an ODE block integrates dh/dt = f(t, h) from t = 0 to t = T.

    Args:
        method: one of :data:`METHODS`.
        rtol: relative tolerance (adaptive methods only; a CAS accepts 0, GAINS's choice).
        atol: absolute tolerance (adaptive methods only).
        step_size: grid step for fixed-grid methods; T / step_size must be an integer. For a
            CAS (:data:`CAS_METHODS`) the first step h0 of its grid h0·2^k; None: learned, the
            ODE block's running mean (see :meth:`cas`).
        T: integration end time.
        adjoint: integrate the backward pass with the adjoint method.
        max_steps: cap on accepted + rejected steps of an adaptive solver (None: no cap).

    Raises:
        SolverConfigError: on an unknown method or inconsistent values.
    """

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    step_size: float | None = None
    T: float = 1.0
    adjoint: bool = False
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SolverConfigError(
                f"unknown ODE solver method {self.method!r}; choose one of {', '.join(METHODS)}"
            )
        if not (math.isfinite(self.T) and self.T > 0):
            raise SolverConfigError(f"integration time T must be positive and finite, got {self.T}")
        if self.is_cas:
            self._check_cas()
        elif not (self.rtol > 0 and self.atol > 0):
            raise SolverConfigError(f"rtol and atol must be positive, got {self.rtol}, {self.atol}")
        if self.max_steps is not None and self.max_steps < 1:
            raise SolverConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.is_fixed:
            if self.step_size is None or not self.step_size > 0:
                raise SolverConfigError(
                    f"fixed-grid method {self.method!r} needs a positive step_size "
                    "(or use SolverConfig.fixed(method, n_steps, T))"
                )
            n = self.T / self.step_size
            if n > MAX_FIXED_STEPS:
                raise SolverConfigError(
                    f"T / step_size = {n:g} steps exceeds the limit of {MAX_FIXED_STEPS} fixed-grid steps"
                )
            if abs(n - round(n)) > 1e-6 * max(1.0, n) or round(n) < 1:
                raise SolverConfigError(
                    f"T / step_size must be a whole number of steps, got {self.T}/{self.step_size}={n:g}"
                )

    def _check_cas(self) -> None:
        if not (self.atol > 0 and self.rtol >= 0):
            raise SolverConfigError(f"a CAS needs atol > 0 and rtol >= 0, got atol={self.atol}, rtol={self.rtol}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise SolverConfigError(f"CAS first step h0 (step_size) must be positive or None (learned), "
                                    f"got {self.step_size}")
        if self.adjoint:
            raise SolverConfigError(f"{self.method} integrates by its own step rule; the adjoint method is not "
                                    "available for it")

    @classmethod
    def cas(cls, tableau: str = "dopri5", atol: float = 0.005, rtol: float = 0.0, h0: float | None = None,
            T: float = 1.0, max_steps: int | None = None) -> SolverConfig:
        """A controlled adaptive solver (:mod:`models.cas`, GAINS's ``dopri5_0.005_2a`` by default).

        Args:
            tableau: the embedded pair (``dopri5``, ``bosh3``, ``heun-euler``, ``fehlberg2``).
            atol: absolute tolerance of the error ratio.
            rtol: relative tolerance (GAINS: 0).
            h0: first step and grid base; None: learned as GAINS's running mean of the initial
                step (updated in training mode, stored in the ODE block's ``running_mean_step``).
            T: end time.
            max_steps: cap on the steps tried per example.

        Raises:
            SolverConfigError: an unknown pair or invalid numbers.
        """
        method = tableau if tableau.startswith("cas-") else f"cas-{tableau}"
        if method not in CAS_METHODS:
            raise SolverConfigError(f"no controlled adaptive solver {method!r}; choose one of {', '.join(CAS_METHODS)}")
        return cls(method=method, rtol=rtol, atol=atol, step_size=h0, T=T, max_steps=max_steps)

    @classmethod
    def fixed(cls, method: str, n_steps: int, T: float = 1.0) -> SolverConfig:
        """A fixed-grid configuration with ``n_steps`` equal steps on [0, T]."""
        if int(n_steps) != n_steps or n_steps < 1:
            raise SolverConfigError(f"n_steps must be a positive integer, got {n_steps}")
        if method not in FIXED_METHODS:
            raise SolverConfigError(
                f"{method!r} is not a fixed-grid method; choose one of {', '.join(FIXED_METHODS)}"
            )
        return cls(method=method, step_size=T / n_steps, T=T)

    @classmethod
    def adaptive(cls, method: str = "dopri5", tol: float = 1e-3, T: float = 1.0) -> SolverConfig:
        """An adaptive configuration with rtol = atol = ``tol`` (the seeds' τ); a CAS method gives
        :meth:`cas` with atol = ``tol``, rtol = 0 and a learned h0."""
        if method in CAS_METHODS:
            return cls.cas(method, atol=tol, T=T)
        if method not in ADAPTIVE_METHODS:
            raise SolverConfigError(
                f"{method!r} is not an adaptive method; choose one of {', '.join(ADAPTIVE_METHODS)}"
            )
        return cls(method=method, rtol=tol, atol=tol, T=T)

    @property
    def is_fixed(self) -> bool:
        """True for fixed-grid methods."""
        return self.method in FIXED_METHODS

    @property
    def is_cas(self) -> bool:
        """True for a controlled adaptive solver (:data:`CAS_METHODS`)."""
        return self.method in CAS_METHODS

    @property
    def n_steps(self) -> int | None:
        """Number of grid steps of a fixed-grid method, None for adaptive ones."""
        if not self.is_fixed:
            return None
        assert self.step_size is not None
        return int(round(self.T / self.step_size))

    def grid(self) -> tuple[tuple[float, float], ...]:
        """The (t0, dt) steps of a fixed-grid method: ``n_steps`` equal steps on [0, T].

        Raises:
            SolverConfigError: an adaptive method (its steps depend on the input).
        """
        if not self.is_fixed:
            raise SolverConfigError(f"{self.describe()} is adaptive: its steps depend on the input")
        n = self.n_steps
        dt = self.T / n
        return tuple((k * dt, dt) for k in range(n))

    def replace(self, **changes: Any) -> SolverConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SolverConfig:
        """Inverse of :meth:`to_dict`; rejects unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SolverConfigError(f"unknown solver config keys: {sorted(unknown)}")
        return cls(**d)

    def describe(self) -> str:
        """Short human-readable form, e.g. ``rk4 n=4 T=1`` or ``dopri5 tol=1e-03 T=1``."""
        if self.is_fixed:
            return f"{self.method} n={self.n_steps} T={self.T:g}"
        if self.is_cas:
            h0 = "learned" if self.step_size is None else f"{self.step_size:g}"
            return f"{self.method} atol={self.atol:g} rtol={self.rtol:g} h0={h0} T={self.T:g}"
        return f"{self.method} rtol={self.rtol:.0e} atol={self.atol:.0e} T={self.T:g}"
