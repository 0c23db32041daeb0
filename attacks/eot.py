"""Expectation over Transformation: attack a randomized model through its average gradient.

Also provides :class:`RandomTolerance`, the tolerance-randomization defense of Carrara et
al. (each forward integrates the ODE net with a tolerance drawn log-uniformly), as a
randomized model to evaluate with and without EOT.

References:
    Athalye, Engstrom, Ilyas & Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018.
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
    Carrara, Caldelli, Falchi & Amato, "Defending Neural ODE Image Classifiers from
    Adversarial Attacks with Tolerance Randomization", ICPR workshops 2021.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ._solver import has_solver, model_nfe
from .base import Attack, AttackError, AttackResult, _check_int


class EOT(Attack):
    """Wrap a gradient attack so that every gradient is the mean over ``samples`` forward passes.

    The wrapped attack runs unchanged otherwise (same ε, norm, steps, seed); only its loss
    gradient becomes an estimate of ∇ E[loss] for a model whose forward pass is random.

    Args:
        attack: a gradient attack (:class:`~attacks.PGD`, :class:`~attacks.FGSM`,
            :class:`~attacks.DI2FGSM`).
        samples: forward/backward passes averaged per gradient (>= 1).

    Raises:
        AttackError: ``attack`` is not a gradient attack that supports EOT, or ``samples`` < 1.
    """

    name = "eot"

    def __init__(self, attack: Attack, samples: int = 10) -> None:
        if not isinstance(attack, Attack) or not getattr(attack, "supports_eot", False):
            raise AttackError(f"EOT wraps a gradient attack (pgd, fgsm, di2fgsm), got {type(attack).__name__}")
        self.samples = _check_int("samples", samples, 1)
        self.inner = copy.copy(attack)
        self.inner.grad_samples = self.samples
        super().__init__(attack.model, attack.eps, attack.norm, seed=attack.generator,
                         attack_solver=attack.attack_solver, eval_solver=attack.eval_solver)
        self.grad_samples = self.samples
        self.budget_arg = attack.budget_arg

    def __getattr__(self, key: str) -> Any:
        # Hyper-parameters (steps, step_size, ...) read through to the wrapped attack.
        if key == "inner":
            raise AttributeError(key)
        return getattr(self.inner, key)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """Run the wrapped attack with averaged gradients (see :meth:`Attack.__call__`)."""
        result = self.inner(x, y)
        return dataclasses.replace(result, attack=f"eot-{result.attack}")


class RandomTolerance(nn.Module):
    """An ODE net whose every forward uses an adaptive solver with a random tolerance.

    τ is drawn log-uniformly from [``low``, ``high``] per forward pass (rtol = atol = τ),
    as in the tolerance-randomization defense; the wrapped model's solver is restored
    after each pass.

    Args:
        model: an ODE net (``model.solver`` assignable).
        low: smallest tolerance.
        high: largest tolerance.
        method: adaptive method.
        seed: seed of the tolerance draws.

    Raises:
        AttackError: a model without a solver or an invalid tolerance range.
    """

    def __init__(self, model: nn.Module, low: float = 1e-5, high: float = 1e-1, method: str = "dopri5",
                 seed: int = 0) -> None:
        super().__init__()
        if not has_solver(model):
            raise AttackError(f"{type(model).__name__} has no ODE solver to randomize")
        if not 0 < low <= high:
            raise AttackError(f"need 0 < low <= high, got low={low!r}, high={high!r}")
        self.model = model
        self.low, self.high, self.method = float(low), float(high), method
        self.generator = torch.Generator().manual_seed(seed)
        self.nfe = 0
        self.last_tol = math.nan
        self.num_classes = getattr(model, "num_classes", None)
        self.input_shape = getattr(model, "input_shape", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits with a freshly drawn tolerance."""
        u = float(torch.rand((), generator=self.generator))
        tol = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        saved = self.model.solver
        self.model.solver = saved.replace(method=self.method, rtol=tol, atol=tol, step_size=None)
        try:
            out = self.model(x)
        finally:
            self.model.solver = saved
        self.nfe = model_nfe(self.model)
        self.last_tol = tol
        return out


__all__ = ["EOT", "RandomTolerance"]
