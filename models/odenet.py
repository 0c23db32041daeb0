"""Neural ODE classifier: downsampling stem -> ODE block -> pooling head.

References:
    Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018.
    Carrara et al., "On the robustness to adversarial examples of neural ODE image
    classifiers", WIFS 2019.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from ._trunk import make_head, make_stem, trunk_feature_size
from .base import Classifier
from .fields import call_field, make_field
from .solver import SolverConfig


class SolverStepLimitError(RuntimeError):
    """An adaptive solver needed more than ``SolverConfig.max_steps`` steps."""


class ODEBlock(nn.Module):
    """Integrates dh/dt = field(t, h) on [0, T] with torchdiffeq.

    The solver is a plain attribute: assign a new :class:`SolverConfig` to change
    tolerance, method or end time at evaluation time.

    Attributes:
        nfe: function evaluations of the last forward solve (the adjoint backward pass is
            not included), counted by the block for any field.
        accepted_steps: list of (t0, dt) of the last adaptive solve when
            ``record_steps`` is True (fixed grids: the grid steps; a controlled adaptive
            solver: the accepted steps of the batch's first example).
        steps: per example, the :class:`~models.cas.CASStep` ``(t, h, decision)`` tried by the
            last solve of a controlled adaptive solver (``SolverConfig.cas``), always recorded.
        nfe_per_example: per example, the field evaluations of that solve (``nfe`` counts the
            batched calls, as many as the slowest example's when the batch shares its steps).
        running_mean_step: buffer (1,) of a CAS with a learned h0 (``step_size`` None): GAINS's
            running mean of the training batches' initial step, the h0 used in eval mode.

    Args:
        field: the vector field f(t, h): any ``nn.Module`` called as ``field(t, h)``, or an
            ``nn.Sequential`` of layers in which each :class:`~models.fields.ConcatConv2d` is
            handed t (see :func:`~models.fields.call_field`).
        solver: how to integrate.
    """

    def __init__(self, field: nn.Module, solver: SolverConfig) -> None:
        super().__init__()
        if not isinstance(field, nn.Module):
            raise TypeError(f"field must be an nn.Module, got {type(field).__name__}")
        self.field = field
        self.solver = solver
        self.nfe = 0
        self.record_steps = False
        self.accepted_steps: list[tuple[float, float]] = []
        self.steps: list[list[Any]] = []
        self.nfe_per_example: list[int] = []
        if solver.is_cas and solver.step_size is None:
            self.register_buffer("running_mean_step", torch.zeros(1))

    def _solve_cas(self, h: torch.Tensor) -> torch.Tensor:
        """Integrate with the controlled adaptive solver (:mod:`models.cas`), each example on its own steps.

        A learned h0 is the running mean in eval mode; in training mode the batch starts from
        GAINS's initial step (:func:`models.cas.initial_step`), which updates the running mean.

        Raises:
            models.cas.CASError: a learned h0 that is still 0 (untrained) in eval mode.
            SolverStepLimitError: more than ``max_steps`` steps for an example.
        """
        from .cas import REJECT, CASError, CASStepLimitError, initial_step, integrate, rule_for, running_mean

        rule = rule_for(self.solver)
        func = _Counted(self.field)
        h0 = rule.h0
        if h0 is None:
            if not hasattr(self, "running_mean_step"):
                self.register_buffer("running_mean_step", torch.zeros(1, device=h.device))
            if self.training:
                h0 = initial_step(func, h, rule)
                self.running_mean_step.fill_(running_mean(float(self.running_mean_step), h0))
            elif float(self.running_mean_step) <= 0:
                raise CASError(f"{self.solver.describe()}: this block has not learned its first step h0 (trained "
                               "with another solver, or not at all); give one: SolverConfig.cas(..., h0=H) "
                               "(CLI: --solver cas-dopri5:ATOL --steps N for h0 = T/N)")
            else:
                h0 = min(1.0, float(self.running_mean_step))
        try:
            y, self.steps, self.nfe_per_example = integrate(func, h, rule, h0)
        except CASStepLimitError as err:
            raise SolverStepLimitError(str(err)) from err
        self.nfe = func.calls
        if self.record_steps:
            self.accepted_steps = [(s.t, s.h) for s in self.steps[0] if s.decision != REJECT]
        return y

    def _solve(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.solver
        options: dict[str, Any] = {}
        if s.is_fixed:
            # An explicit grid avoids torchdiffeq's float round-off adding a zero-length step.
            n = s.n_steps
            options["grid_constructor"] = lambda func, y0, tt: torch.linspace(
                float(tt[0]), float(tt[-1]), n + 1, dtype=tt.dtype, device=tt.device
            )
        elif s.max_steps is not None:
            options["max_num_steps"] = s.max_steps
        if hasattr(self.field, "nfe"):
            self.field.nfe = 0
        self.accepted_steps = []
        self.steps, self.nfe_per_example = [], []  # records of a controlled adaptive solve only
        func = (_Recorder(self.field, self.accepted_steps) if self.record_steps and not s.is_fixed
                else _Counted(self.field))
        solve = odeint_adjoint if s.adjoint else odeint
        try:
            out = solve(func, h, t, rtol=s.rtol, atol=s.atol, method=s.method, options=options)
        except AssertionError as err:
            if "max_num_steps" in str(err):
                raise SolverStepLimitError(
                    f"{s.method} needed more than max_steps={s.max_steps} steps (rtol={s.rtol:g})"
                ) from err
            raise
        self.nfe = func.calls
        if s.is_fixed and self.record_steps:
            self.accepted_steps = list(s.grid())
        return out

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Within it, every solve records its accepted (t0, dt) steps in :attr:`accepted_steps`."""
        previous, self.record_steps = self.record_steps, True
        try:
            yield
        finally:
            self.record_steps = previous

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """State at t = T, same shape as ``h``."""
        if self.solver.is_cas:
            return self._solve_cas(h)
        t = torch.tensor([0.0, self.solver.T], dtype=h.dtype, device=h.device)
        return self._solve(h, t)[-1]

    def trajectory(self, h: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        """States at ``times`` (default: the fixed grid points, or 0 and T).

        Args:
            h: initial state (N, C, H, W).
            times: increasing 1-D tensor starting at 0.

        Returns:
            tensor of shape (len(times), N, C, H, W).

        Raises:
            ValueError: a controlled adaptive solver with times other than (0, T).
        """
        if self.solver.is_cas:
            if times is not None and times.tolist() != [0.0, self.solver.T]:
                raise ValueError(f"{self.solver.describe()} gives its state at T only: times must be (0, T)")
            return torch.stack([h, self._solve_cas(h)])
        if times is None:
            if self.solver.is_fixed:
                times = torch.linspace(0.0, self.solver.T, self.solver.n_steps + 1, dtype=h.dtype, device=h.device)
            else:
                times = torch.tensor([0.0, self.solver.T], dtype=h.dtype, device=h.device)
        return self._solve(h, times.to(h))


class _Counted(nn.Module):
    """Wraps a field for one solve and counts its calls."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field
        self.calls = 0

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return call_field(self.field, t, h)


class _Recorder(_Counted):
    """Also appends (t0, dt) of every accepted adaptive step to ``steps`` (torchdiffeq calls
    ``callback_accept_step``; fixed-grid solvers take no callbacks)."""

    def __init__(self, field: nn.Module, steps: list[tuple[float, float]]) -> None:
        super().__init__(field)
        self.steps = steps

    def callback_accept_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.steps.append((float(t0.detach()), float(dt.detach())))


class ODEClassifier(Classifier):
    """A classifier with one :class:`ODEBlock` ``self.block``: its solver is the model's (assignable,
    swappable at test time) and its NFE the model's."""

    @property
    def solver(self) -> SolverConfig:
        """The ODE block's solver config (assignable)."""
        return self.block.solver

    @solver.setter
    def solver(self, value: SolverConfig) -> None:
        if not isinstance(value, SolverConfig):
            raise TypeError(f"solver must be a SolverConfig, got {type(value).__name__}")
        self.block.solver = value

    @property
    def nfe(self) -> int:
        """Function evaluations of the last forward."""
        return self.block.nfe


class ODENet(ODEClassifier):
    """Stem -> :class:`ODEBlock` -> head, logits out.

    Args:
        channels: state channels of the ODE block.
        field: vector field kind, ``"verifiable"`` or ``"chen"``.
        solver: solver config (dict form accepted, as stored in checkpoints).
        time_channel: time plane in the verifiable field (the chen field always has one).
        head_pool: average-pool kernel of the head (1 keeps the 7x7 map, 7 pools globally).
        head_hidden: width of a hidden linear layer (and ReLU) in the head, 0 for none.
        in_channels, input_size, num_classes: see :class:`~models.base.Classifier`.
    """

    arch = "ode"

    def __init__(
        self,
        channels: int = 16,
        field: str = "verifiable",
        solver: SolverConfig | dict[str, Any] | None = None,
        time_channel: bool = False,
        head_pool: int = 1,
        head_hidden: int = 0,
        in_channels: int = 1,
        input_size: int = 28,
        num_classes: int = 10,
    ) -> None:
        super().__init__(in_channels, input_size, num_classes)
        if isinstance(solver, dict):
            solver = SolverConfig.from_dict(solver)
        solver = solver or SolverConfig.fixed("rk4", 4)
        self.channels = channels
        self.field_kind = field
        self.time_channel = time_channel
        self.head_pool = head_pool
        self.head_hidden = head_hidden
        norm = field == "chen"
        field_kwargs = {} if norm else {"time_channel": time_channel}
        self.stem = make_stem(in_channels, channels, norm)
        self.block = ODEBlock(make_field(field, channels, **field_kwargs), solver)
        self.head = make_head(channels, trunk_feature_size(input_size), head_pool, num_classes, norm,
                              head_hidden)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))

    def config(self) -> dict[str, Any]:
        out = {
            "channels": self.channels,
            "field": self.field_kind,
            "solver": self.solver.to_dict(),
            "time_channel": self.time_channel,
            "head_pool": self.head_pool,
            "in_channels": self.in_channels,
            "input_size": self.input_size,
            "num_classes": self.num_classes,
        }
        return {**out, "head_hidden": self.head_hidden} if self.head_hidden else out
