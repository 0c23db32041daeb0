"""Certified training losses through the unrolled fixed-step solver, and their ε schedule.

The losses are computed on the verification IR (:func:`verify.lower`), whose ops are the live
modules of the model, so one lowering serves a whole training run and every bound is
differentiable in the weights, through every Runge–Kutta stage of every step:

* ``ibp`` (Gowal et al. 2018): ``κ·CE(f(x), y) + (1 − κ)·CE(z̲, y)``, z̲ the worst-case
  logits of the IBP margin bounds (:mod:`verify._ibp`), κ ramped from ``kappa_start`` to
  ``kappa_end`` with ε.
* ``crown-ibp`` (Zhang et al. 2020): the same with the margin bound
  ``β·CROWN-IBP + (1 − β)·IBP``, β ramped 1 → 0 with ε. The CROWN pass covers the network's
  dense tail (:mod:`verify._crown_ibp`), not the whole network: a documented, sound
  simplification of the paper's full backward pass.
  Through a controlled adaptive solver both bounds follow every step sequence of the ball
  (:mod:`verify._cas_ibp`, :mod:`verify._cas_crown_ibp`), so ``ibp``, ``crown-ibp`` and
  ``mtl-ibp`` all train the model as deployed.
* ``mtl-ibp`` (De Palma et al. 2024): the robust term is ``α·CE(f(x_adv), y) + (1 − α)·
  CE(z̲, y)``, x_adv a PGD point of the ε-ball ∩ [0, 1]. Chosen over SABR because it is a
  convex combination of two losses the toolkit already computes (the PGD attack of
  :mod:`attacks` and the IBP bound), with one coefficient and no search for a sub-box, while
  matching SABR's reported MNIST results.

The ε schedule follows Shi et al. 2021: ``warmup_epochs`` of clean training (ε = 0), then a
smooth ramp over ``ramp_epochs`` to ``eps`` (polynomial of degree 4 up to a quarter of the
ramp, then linear, with a continuous slope: auto_LiRPA's ``SmoothedScheduler``), and
optionally their IBP initialisation (:func:`ibp_init`). The perturbation set is the L∞ ball
∩ [0, 1].

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", 2018. Zhang et al., "Towards Stable and Efficient Training of Verifiably
    Robust Neural Networks", ICLR 2020. Shi et al., "Fast Certified Robust Training with
    Short Warmup", NeurIPS 2021. De Palma et al., "Expressive Losses for Verified Robustness
    via Convex Combinations", ICLR 2024.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._cas_crown_ibp import cas_crown_ibp_margins
from ._cas_ibp import cas_ibp_bounds, cas_index
from ._crown_ibp import crown_ibp_margins
from ._ibp import ibp_margins
from ._lower import Lowered, lower

#: certified-training losses, by CLI name.
LOSSES: tuple[str, ...] = ("ibp", "crown-ibp", "mtl-ibp")
#: weight initialisations: ``ibp`` (Shi et al.) or the model's own (``default``).
INITS: tuple[str, ...] = ("ibp", "default")


@dataclasses.dataclass(frozen=True)
class CertConfig:
    """A certified-training loss and its schedule (stored in checkpoint metadata).

    Args:
        loss: one of :data:`LOSSES`.
        eps: L∞ training radius ε_train reached at the end of the ramp.
        eval_eps: the radius the certified accuracy is measured at (default ``eps``).
        warmup_epochs: epochs of clean training (ε = 0) first.
        ramp_epochs: epochs over which ε grows smoothly from 0 to ``eps``.
        kappa_start, kappa_end: weight of the clean loss at the start and end of the ramp.
        mid_point, exponent: the smooth ramp: ε ∝ progress^exponent up to ``mid_point`` of
            the ramp, then linear.
        beta_start, beta_end: crown-ibp's weight of the CROWN-IBP bound over the ramp.
        alpha: mtl-ibp's weight of the adversarial loss.
        pgd_steps: mtl-ibp's PGD steps.
        init: ``"ibp"`` (Shi et al.'s initialisation) or ``"default"`` (the model's own): Shi et
            al. pair theirs with BatchNorm; without it, σ = √(2π)/fan_in shrinks the clean
            signal by about √fan_in per layer, and a small BatchNorm-free net starts at the
            uniform prediction and stays there (measured on the tests' tiny ODE-net).

    Raises:
        ValueError: an unknown loss or init, ε < 0, negative epochs, weights outside [0, 1].
    """

    loss: str = "ibp"
    eps: float = 0.1
    eval_eps: float | None = None
    warmup_epochs: int = 1
    ramp_epochs: int = 10
    kappa_start: float = 1.0
    kappa_end: float = 0.5
    mid_point: float = 0.25
    exponent: float = 4.0
    beta_start: float = 1.0
    beta_end: float = 0.0
    alpha: float = 0.5
    pgd_steps: int = 8
    init: str = "default"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown certified loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.init not in INITS:
            raise ValueError(f"unknown initialisation {self.init!r}; choose one of {', '.join(INITS)}")
        for name in ("eps", "eval_eps"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name.replace('_', '-')} must be a finite number >= 0, got {v}")
        if self.warmup_epochs < 0 or self.ramp_epochs < 0:
            raise ValueError(f"warm-up and ramp epochs must be >= 0, got {self.warmup_epochs}, {self.ramp_epochs}")
        for name in ("kappa_start", "kappa_end", "beta_start", "beta_end", "alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.mid_point < 1.0 or self.exponent < 1.0:
            raise ValueError(f"the ramp needs 0 < mid_point < 1 and exponent >= 1, got {self.mid_point}, "
                             f"{self.exponent}")
        if self.pgd_steps < 1:
            raise ValueError(f"pgd_steps must be >= 1, got {self.pgd_steps}")

    @property
    def certify_eps(self) -> float:
        """The radius certified accuracy is reported at."""
        return self.eps if self.eval_eps is None else self.eval_eps


def ramp_progress(cfg: CertConfig, step: int, steps_per_epoch: int) -> float:
    """Fraction in [0, 1] of the ε ramp done at batch ``step`` (0 in the warm-up, 1 after)."""
    done = step + 1 - cfg.warmup_epochs * steps_per_epoch
    if done <= 0:
        return 0.0
    length = cfg.ramp_epochs * steps_per_epoch
    return 1.0 if done >= length else done / length


def eps_at(cfg: CertConfig, step: int, steps_per_epoch: int) -> float:
    """ε of batch ``step``: 0 during the warm-up, then Shi et al.'s smooth ramp to ``cfg.eps``.

    Up to ``mid_point`` of the ramp ε = a·p^k; after it ε is linear in p, with the value and
    slope continuous at the mid point and ε = ``cfg.eps`` at p = 1.
    """
    p = ramp_progress(cfg, step, steps_per_epoch)
    m, k = cfg.mid_point, cfg.exponent
    # a·m^k + slope·(1 − m) = eps with slope = a·k·m^(k−1)
    a = cfg.eps / (m ** k + k * m ** (k - 1) * (1 - m))
    if p <= m:
        return a * p ** k
    return a * m ** k + a * k * m ** (k - 1) * (p - m)


def _linear(start: float, end: float, p: float) -> float:
    return start + (end - start) * p


def worst_case_ce(margins: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the worst-case logits of margin lower bounds (N, K-1).

    The worst case within the bounds puts f_y − f_j at its lower bound m_j; cross-entropy
    depends on logit differences only, so it equals CE of the logits (0, −m_1, …, −m_{K-1})
    with label 0: ``log(1 + Σ_j exp(−m_j))``.
    """
    z = torch.cat([torch.zeros_like(margins[:, :1]), -margins], dim=1)
    return F.cross_entropy(z, torch.zeros_like(y))


def ibp_init(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Shi et al.'s IBP initialisation: each conv / linear weight ~ N(0, σ²), σ = √(2π)/fan_in,
    which keeps the expected interval width constant through a ReLU layer; biases zero.

    Args:
        model: initialised in place.
        generator: randomness (default torch's global generator).
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()


def ibp_loss(ir: Lowered, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE of the IBP worst-case logits, the margin lower bounds (N, K-1)); a model with a controlled
    adaptive solver is bounded through its trajectory graph (:func:`verify._cas_ibp.cas_ibp_bounds`)."""
    m = cas_ibp_bounds(ir, x, y, eps).margins if cas_index(ir) is not None else ibp_margins(ir, x, y, eps)
    return worst_case_ce(m, y), m


def crown_ibp_loss(ir: Lowered, x: torch.Tensor, y: torch.Tensor, eps: float, beta: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE of the worst-case logits of β·CROWN-IBP + (1 − β)·IBP margin bounds, those bounds); a model
    with a controlled adaptive solver is bounded through its trajectory graph (both bounds from one
    forward pass: :func:`verify._cas_crown_ibp.cas_crown_ibp_margins`)."""
    if cas_index(ir) is not None:
        if beta == 0:
            m = cas_ibp_bounds(ir, x, y, eps).margins
        else:
            crown, bounds = cas_crown_ibp_margins(ir, x, y, eps)
            m = beta * crown + (1 - beta) * bounds.margins
        return worst_case_ce(m, y), m
    m = ibp_margins(ir, x, y, eps)
    if beta > 0:
        m = beta * crown_ibp_margins(ir, x, y, eps) + (1 - beta) * m
    return worst_case_ce(m, y), m


def pgd_point(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int
              ) -> torch.Tensor:
    """A PGD point (random start, last iterate) of the L∞ ε-ball ∩ [0, 1], detached."""
    from attacks import PGD

    was_training = model.training
    atk = PGD(model, norm="inf", eps=eps, steps=steps, step_size=2.5 * eps / steps, random_start=True,
              output="last", seed=seed)
    x_adv = atk(x, y).x_adv.detach()
    model.train(was_training)
    return x_adv


class CertifiedLoss:
    """The certified-training loss hook :func:`models.train.train` calls (``loss_fn=``).

    Args:
        cfg: the loss and its schedule.
        seed: seed of the PGD starts of ``mtl-ibp`` (one stream per batch index).

    Attributes:
        recipe: the JSON form of ``cfg``, recorded in the trainer's resume state.
    """

    def __init__(self, cfg: CertConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.recipe: dict[str, Any] = {**dataclasses.asdict(cfg), "seed": seed}
        self._ir: tuple[int, Lowered] | None = None

    def lowered(self, model: nn.Module) -> Lowered:
        """The IR of ``model``, lowered once (its ops are the live modules)."""
        if self._ir is None or self._ir[0] != id(model):
            self._ir = (id(model), lower(model))
        return self._ir[1]

    def schedule(self, step: int, steps_per_epoch: int) -> dict[str, float]:
        """ε, κ and β of batch ``step``."""
        p = ramp_progress(self.cfg, step, steps_per_epoch)
        return {"eps": eps_at(self.cfg, step, steps_per_epoch),
                "kappa": _linear(self.cfg.kappa_start, self.cfg.kappa_end, p),
                "beta": _linear(self.cfg.beta_start, self.cfg.beta_end, p)}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int,
                 steps_per_epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, {"clean": accuracy, "verified": IBP-verified accuracy at this batch's ε, "eps"})."""
        s = self.schedule(step, steps_per_epoch)
        eps, kappa = s["eps"], s["kappa"]
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        stats = {"clean": float((logits.argmax(1) == y).float().mean())}
        if eps == 0.0:
            return clean, {**stats, "verified": stats["clean"], "eps": 0.0}
        ir = self.lowered(model)
        if self.cfg.loss == "crown-ibp":
            robust, m = crown_ibp_loss(ir, x, y, eps, s["beta"])
        else:
            robust, m = ibp_loss(ir, x, y, eps)
            if self.cfg.loss == "mtl-ibp":
                x_adv = pgd_point(model, x, y, eps, self.cfg.pgd_steps, self.seed * 1_000_003 + step)
                robust = self.cfg.alpha * F.cross_entropy(model(x_adv), y) + (1 - self.cfg.alpha) * robust
        stats["verified"] = float((m.detach() > 0).all(dim=1).float().mean())
        stats["eps"] = eps
        return kappa * clean + (1 - kappa) * robust, stats


def certified_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "ibp",
                   beta: float = 1.0) -> torch.Tensor:
    """The robust term alone (κ = 0) of ``ibp`` or ``crown-ibp`` at one ε, for checks and tests.

    Raises:
        ValueError: a loss other than ``ibp`` / ``crown-ibp``.
    """
    ir = lower(model)
    if loss == "ibp":
        return ibp_loss(ir, x, y, eps)[0]
    if loss == "crown-ibp":
        return crown_ibp_loss(ir, x, y, eps, beta)[0]
    raise ValueError(f"certified_loss computes ibp or crown-ibp, got {loss!r}")


__all__ = ["INITS", "LOSSES", "CertConfig", "CertifiedLoss", "certified_loss", "crown_ibp_loss", "eps_at",
           "ibp_init", "ibp_loss", "pgd_point", "ramp_progress", "worst_case_ce"]
