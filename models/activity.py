"""How much of a model's residual / ODE field is alive: the fraction of its ReLU units that fire.

Certified training with interval bounds rewards inactive ReLUs (an inactive unit adds no interval
width), and it can switch an ODE-net's field off entirely, after which the ODE block adds a
constant and the solver no longer matters. Any comparison of ODE-nets with ResNets on certified
models should state this measure next to its verdict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: images per forward pass.
BATCH = 250


def field_usage(model: nn.Module, x: torch.Tensor, batch: int = BATCH) -> dict[str, dict[str, float]]:
    """Per ReLU module of the model's field (modules whose qualified name contains ``field``): how
    many of its units are alive and how often they fire, over every evaluation of the field (every
    solver stage and step counts).

    Args:
        model: any module; the model is run on ``x`` in chunks of ``batch`` images, without gradients.
        x: a batch of inputs.
        batch: images per forward pass.

    Returns:
        ``{module name: {"alive": a, "mean_active": m, "units": u}}``: ``a`` the fraction of the
        module's ``u`` units active (> 0) on at least one image at some evaluation, ``m`` the
        fraction of units active averaged over images and evaluations; empty for a model without
        a field ReLU.

    Raises:
        ValueError: ``batch`` is not positive.
    """
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    alive: dict[str, torch.Tensor] = {}
    fired: dict[str, list[float]] = {}

    def hook(name: str) -> Any:
        def record(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            act = (out > 0).flatten(1)
            alive[name] = act.any(0) if name not in alive else alive[name] | act.any(0)
            total = fired.setdefault(name, [0.0, 0.0])
            total[0] += float(act.sum())
            total[1] += act.numel()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, nn.ReLU) and "field" in n]
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch):
                model(x[i:i + batch])
    finally:
        for h in handles:
            h.remove()
    return {n: {"alive": float(a.float().mean()), "mean_active": fired[n][0] / fired[n][1], "units": int(a.numel())}
            for n, a in alive.items()}


def field_activity(model: nn.Module, x: torch.Tensor, batch: int = BATCH) -> dict[str, float]:
    """Per ReLU module of the model's field, the fraction of its units alive: active (> 0) on at
    least one image of ``x`` at some evaluation (``field_usage``'s ``alive``).

    Args:
        model: any module, run on ``x`` in chunks of ``batch`` images.
        x: a batch of inputs.
        batch: images per forward pass.

    Returns:
        ``{module name: fraction in [0, 1]}``; empty for a model without a field ReLU.

    Raises:
        ValueError: ``batch`` is not positive.
    """
    return {n: u["alive"] for n, u in field_usage(model, x, batch).items()}


__all__ = ["BATCH", "field_activity", "field_usage"]
