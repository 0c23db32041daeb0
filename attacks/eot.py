"""Expectation over Transformation: attack a randomized model through its average gradient.

Randomized models to attack with it, such as the tolerance-randomization defense of
Carrara et al., live in :mod:`models` (``models.ToleranceRandomized``); attacks take any
``nn.Module`` and import nothing from models.

References:
    Athalye, Engstrom, Ilyas & Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018.
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
    Carrara, Caldelli, Falchi & Amato, "Defending Neural ODE Image Classifiers from
    Adversarial Attacks with Tolerance Randomization", ICPR workshops 2021.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

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


__all__ = ["EOT"]
