"""Solver swapping and NFE accounting for attacks on ODE nets.

References:
    Carrara et al., "On the robustness to adversarial examples of neural ODE image
    classifiers", WIFS 2019 (τ_attack ≠ τ_test).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn


def has_solver(model: nn.Module) -> bool:
    """True when ``model`` exposes an assignable ``solver`` (an ODE net)."""
    return hasattr(model, "solver") and getattr(model, "solver") is not None


@contextlib.contextmanager
def with_solver(model: nn.Module, solver: Any | None) -> Iterator[nn.Module]:
    """Temporarily integrate ``model`` with another ``SolverConfig``.

    Example: ``with with_solver(net, SolverConfig.fixed("rk4", 4)): ...`` computes
    gradients through a fixed-step surrogate of an adaptive model; the original solver
    is restored on exit, also after an exception.

    Args:
        model: an ODE net (``model.solver`` assignable); with ``solver=None`` any module.
        solver: the configuration to use inside the block, or None for no change.

    Yields:
        the model.

    Raises:
        ValueError: a solver is given for a model without a ``solver`` attribute.
    """
    if solver is None:
        yield model
        return
    if not has_solver(model):
        raise ValueError(f"{type(model).__name__} has no ODE solver to replace")
    saved = model.solver
    model.solver = solver
    try:
        yield model
    finally:
        model.solver = saved


def model_nfe(model: nn.Module) -> int:
    """Function evaluations of the model's last forward (0 for models without ODE blocks)."""
    value = getattr(model, "nfe", 0)
    return int(value) if isinstance(value, (int, float)) else 0
