"""Lp balls as objects: projection, random start and steepest-ascent direction.

One :class:`LpBall` serves every attack, so an attack is written once and works for
both norms. Norm names are the strings ``"inf"`` and ``"2"`` used across the toolkit
(attacks, bounds and certificates), defined once in :mod:`lipbound.norms`.

References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018 (projected gradient ascent on Lp balls).
"""

from __future__ import annotations

import math

import torch

from lipbound.norms import NORMS as NORMS
from lipbound.norms import UnknownNormError as _UnknownNorm
from lipbound.norms import canonical_norm as _canonical_norm


class AttackError(ValueError):
    """An invalid attack argument or input (negative ε, unknown norm, bad shape, ...)."""


class UnknownNormError(_UnknownNorm, AttackError):
    """A norm name other than ``"inf"`` or ``"2"`` (the toolkit's :class:`lipbound.norms.UnknownNormError`)."""


def canonical_norm(p: str | int | float) -> str:
    """The canonical name ``"inf"`` or ``"2"`` of a norm (:func:`lipbound.norms.canonical_norm`).

    Args:
        p: ``"inf"``, ``"linf"``, ``math.inf``, ``"2"``, ``"l2"`` or ``2``.

    Returns:
        ``"inf"`` or ``"2"``.

    Raises:
        UnknownNormError: any other value.
    """
    return _canonical_norm(p, UnknownNormError)


def lp_norm(delta: torch.Tensor, p: str) -> torch.Tensor:
    """Per-example norm of a batch of perturbations.

    Args:
        delta: (N, ...) perturbations.
        p: ``"inf"`` or ``"2"``.

    Returns:
        (N,) norms.
    """
    flat = delta.flatten(1)
    if p == "inf":
        return flat.abs().amax(dim=1)
    return flat.norm(dim=1)


def _as_eps(eps: float | torch.Tensor) -> float | torch.Tensor:
    if isinstance(eps, torch.Tensor):
        if eps.dim() > 1:
            raise AttackError(f"eps must be a scalar or a 1-D tensor of per-example values, got shape "
                              f"{tuple(eps.shape)}")
        if not torch.isfinite(eps).all() and not (eps[~torch.isfinite(eps)] == math.inf).all():
            raise AttackError("eps contains NaN values")
        if (eps < 0).any():
            raise AttackError(f"eps must be >= 0, got min {float(eps.min()):g}")
        return eps.detach().float()
    try:
        value = float(eps)
    except (TypeError, ValueError) as err:
        raise AttackError(f"eps must be a number, got {eps!r}") from err
    if math.isnan(value):
        raise AttackError("eps must be a number >= 0, got nan")
    if value < 0:
        raise AttackError(f"eps must be >= 0, got {value:g}")
    return value


class LpBall:
    """The ball {δ : ‖δ‖_p ≤ ε}, ε a scalar or one radius per example.

    Args:
        p: norm name (see :func:`canonical_norm`).
        eps: radius >= 0 (``math.inf`` for no constraint), or a (N,) tensor of radii.

    Raises:
        UnknownNormError: unknown norm.
        AttackError: negative or NaN ε.
    """

    def __init__(self, p: str | int | float, eps: float | torch.Tensor) -> None:
        self.p = canonical_norm(p)
        self.eps = _as_eps(eps)

    def __repr__(self) -> str:
        eps = f"tensor{tuple(self.eps.shape)}" if isinstance(self.eps, torch.Tensor) else f"{self.eps:g}"
        return f"LpBall(p={self.p!r}, eps={eps})"

    @property
    def bounded(self) -> bool:
        """False when every radius is infinite."""
        if isinstance(self.eps, torch.Tensor):
            return bool(torch.isfinite(self.eps).any())
        return math.isfinite(self.eps)

    def radius(self, like: torch.Tensor) -> float | torch.Tensor:
        """ε broadcastable against a (N, C, H, W) batch ``like``.

        Raises:
            AttackError: per-example ε whose length is not N.
        """
        if isinstance(self.eps, torch.Tensor):
            if self.eps.numel() == 1:
                return self.eps.reshape(()).to(like.device)
            if self.eps.shape[0] != like.shape[0]:
                raise AttackError(f"eps has {self.eps.shape[0]} per-example values for a batch of {like.shape[0]}")
            return self.eps.to(like.device).view(-1, *([1] * (like.dim() - 1)))
        return self.eps

    def subset(self, index: torch.Tensor) -> LpBall:
        """The ball restricted to the examples ``index`` (same ball when ε is a scalar)."""
        if isinstance(self.eps, torch.Tensor) and self.eps.numel() > 1:
            return LpBall(self.p, self.eps[index.to(self.eps.device)])
        return self

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """(N,) norms of ``delta``."""
        return lp_norm(delta, self.p)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """Nearest point of the ball (Euclidean projection; exact for both norms).

        Args:
            delta: (N, C, H, W) perturbations.

        Returns:
            projected perturbations, same shape.
        """
        eps = self.radius(delta)
        if self.p == "inf":
            if isinstance(eps, float):
                return delta if math.isinf(eps) else delta.clamp(-eps, eps)
            return torch.maximum(torch.minimum(delta, eps), -eps)
        if isinstance(eps, float) and math.isinf(eps):
            return delta
        norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
        # eps / norm is inf or nan for zero norms; the factor then must be 1.
        factor = torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)
        return delta * factor

    def random_start(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator,
                     device: torch.device | str = "cpu") -> torch.Tensor:
        """A point drawn uniformly from the ball (for L∞: from the cube; infinite radii give 0).

        Args:
            shape: (N, C, H, W).
            generator: CPU random generator.
            device: where the result goes.

        Returns:
            perturbations of the given shape.
        """
        eps = self.radius(torch.empty(shape))
        if isinstance(eps, float):
            eps_t = torch.tensor(0.0 if math.isinf(eps) else eps)
        else:
            eps_t = torch.where(torch.isfinite(eps), eps, torch.zeros_like(eps)).cpu()
        if self.p == "inf":
            delta = (2 * torch.rand(shape, generator=generator) - 1) * eps_t
        else:
            direction = torch.randn(shape, generator=generator)
            direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            d = math.prod(shape[1:])
            radius = torch.rand(shape[0], generator=generator).pow(1.0 / d).view(-1, 1, 1, 1)
            delta = direction * radius * eps_t
        return delta.to(device)

    def normalize_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """The unit-norm steepest-ascent direction for this norm.

        L∞: sign(g); L2: g / ‖g‖₂ (0 where g = 0).

        Args:
            grad: (N, C, H, W) gradients.

        Returns:
            directions, same shape.
        """
        if self.p == "inf":
            return grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        return grad / norms
