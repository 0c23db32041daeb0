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


def field_activity(model: nn.Module, x: torch.Tensor, batch: int = BATCH) -> dict[str, float]:
    """Per ReLU module of the model's field (modules whose qualified name contains ``field``), the
    fraction of its units that are active (> 0) on at least one image of ``x`` at any evaluation
    of the field (every solver stage and step counts).

    Args:
        model: any module; the model is run on ``x`` in chunks of ``batch`` images, without gradients.
        x: a batch of inputs.
        batch: images per forward pass.

    Returns:
        ``{module name: fraction in [0, 1]}``; empty for a model without a field ReLU.

    Raises:
        ValueError: ``batch`` is not positive.
    """
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def record(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            act = (out > 0).flatten(1).any(0)
            seen[name] = act if name not in seen else seen[name] | act
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
    return {n: float(a.float().mean()) for n, a in seen.items()}


__all__ = ["BATCH", "field_activity"]
