"""The model zoo: small committed checkpoints and the presets that retrain them.

Every zoo model is produced by ``python -m models train --preset NAME`` from a preset in
:data:`PRESETS` (architecture, constructor config, recipe), on the ``mnist-t10k``
protocol (train on images 0-7999 of the official test set, hold out 8000-9999).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from .base import Classifier
from .solver import SolverConfig
from .train import CheckpointError, NotACheckpointError, Recipe, load_checkpoint

#: Directory of the committed zoo checkpoints.
ZOO_DIR = Path(__file__).resolve().parent / "checkpoints"


@dataclasses.dataclass(frozen=True)
class Preset:
    """How a zoo model is built and trained.

    Args:
        name: zoo name.
        arch: key of :data:`models.MODELS`.
        config: constructor arguments.
        recipe: training recipe.
        description: one line for tables.
        dataset: data protocol.
    """

    name: str
    arch: str
    config: dict[str, Any]
    recipe: Recipe
    description: str
    dataset: str = "mnist-t10k"


_ODE_SOLVER = SolverConfig.fixed("rk4", 4, T=1.0).to_dict()

PRESETS: dict[str, Preset] = {
    "ode": Preset(
        "ode", "ode", {"channels": 16, "field": "verifiable", "solver": _ODE_SOLVER},
        Recipe(epochs=15, lr=3e-3, seed=0),
        "ODE-net, verifiable conv-ReLU-conv field, 16 channels, RK4 (3/8 rule) 4 steps, T=1"),
    "ode-chen": Preset(
        "ode-chen", "ode",
        {"channels": 32, "field": "chen", "head_pool": 7,
         "solver": SolverConfig.adaptive("dopri5", 1e-3).to_dict()},
        Recipe(epochs=6, lr=3e-3, seed=0),
        "ODE-net, Chen et al. GroupNorm field, 32 channels, dopri5 tol 1e-3, T=1"),
    "resnet": Preset(
        "resnet", "resnet", {"channels": 16, "n_blocks": 4, "step": 1.0, "tied": False, "field": "verifiable"},
        Recipe(epochs=15, lr=3e-3, seed=0),
        "ResNet matched to `ode`: same stem/field/head, 4 independent blocks, step s=1"),
    "lenet5": Preset(
        "lenet5", "lenet5", {}, Recipe(epochs=20, lr=2e-3, seed=0),
        "LeNet-5 (ReLU, max-pool), the classical model of seed 000"),
    "ode-adv": Preset(
        "ode-adv", "ode", {"channels": 16, "field": "verifiable", "solver": _ODE_SOLVER},
        Recipe(epochs=10, lr=3e-3, seed=0, adv="pgd", adv_eps=0.3, adv_steps=10, adv_warmup=2, adv_ramp=4),
        "`ode` architecture, PGD adversarial training (Madry et al.: L∞ ε=0.3 reached over a 4-epoch ramp, 10 steps)"),
    "lenet5-adv": Preset(
        "lenet5-adv", "lenet5", {},
        Recipe(epochs=20, lr=2e-3, seed=0, adv="pgd", adv_eps=0.3, adv_steps=10, adv_warmup=2, adv_ramp=4),
        "LeNet-5, PGD adversarial training (Madry et al.: L∞ ε=0.3 reached over a 4-epoch ramp, 10 steps)"),
}


class UnknownModelError(ValueError):
    """A name that is neither a zoo model nor an existing checkpoint path."""


def available() -> list[str]:
    """Zoo names whose checkpoint is present."""
    return [n for n in PRESETS if (ZOO_DIR / f"{n}.pt").exists()]


def load(name: str, device: str | torch.device = "cpu") -> Classifier:
    """A ready zoo model in eval mode.

    Raises:
        UnknownModelError: not a zoo name, or its checkpoint has not been trained.
    """
    return load_with_metadata(name, device)[0]


def load_with_metadata(name: str, device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """A zoo model and its checkpoint metadata.

    Raises:
        UnknownModelError: not a zoo name, or its checkpoint has not been trained.
        NotACheckpointError: the zoo's ``.pt`` file is not a checkpoint (e.g. a Git LFS pointer).
        CheckpointError: the checkpoint is corrupt.
    """
    if name not in PRESETS:
        raise UnknownModelError(f"unknown zoo model {name!r}; choose one of {', '.join(PRESETS)}")
    path = ZOO_DIR / f"{name}.pt"
    if not path.exists():
        raise UnknownModelError(
            f"zoo model {name!r} has no checkpoint yet; train it with `python -m models train --preset {name}`"
        )
    return load_checkpoint(path, device)


def resolve(spec: str, device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """A model from a zoo name or a checkpoint path (``.pt``/``.json``/stem).

    Raises:
        UnknownModelError: neither a zoo name nor an existing checkpoint.
        NotACheckpointError: the ``.pt`` file is not a checkpoint (random bytes, a pickle of
            anything but a state_dict of tensors); the message names the file.
        CheckpointError: the checkpoint exists but is corrupt or lacks its metadata.
    """
    if spec in PRESETS:
        return load_with_metadata(spec, device)
    p = Path(spec)
    if p.suffix in (".pt", ".json") or p.with_suffix(".pt").exists() or os.sep in spec:
        if not (p.exists() or p.with_suffix(".pt").exists()):
            raise UnknownModelError(f"no checkpoint at {spec!r}")
        return load_checkpoint(p, device)
    raise UnknownModelError(f"unknown model {spec!r}: not a zoo name ({', '.join(PRESETS)}) or a checkpoint path")


__all__ = ["PRESETS", "ZOO_DIR", "CheckpointError", "NotACheckpointError", "Preset", "UnknownModelError", "available",
           "load", "load_with_metadata", "resolve"]
