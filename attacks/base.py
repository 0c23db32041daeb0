"""The attack template: validate, switch to eval mode, perturb, project, clamp, measure.

A subclass of :class:`Attack` implements only :meth:`Attack._perturb`; everything an
evaluation must get right every time (input checks, restoring the model's mode and
``requires_grad`` flags, the final projection onto the ε-ball and onto [0, 1], the
success test and the norms, solver swapping on ODE nets, NFE accounting) lives here.

References:
    Rauber et al., "Foolbox: A Python toolbox to benchmark the robustness of machine
    learning models", 2017 (the template-method design).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._solver import model_nfe, with_solver
from .norms import NORMS, AttackError, LpBall, canonical_norm, lp_norm

#: Loss names accepted by gradient attacks.
LOSSES: tuple[str, ...] = ("ce", "margin")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example margin max_{j≠y} z_j − z_y (> 0 exactly when misclassified).

    Args:
        logits: (N, K).
        y: (N,) labels.

    Returns:
        (N,) margins.
    """
    real = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return other - real


def attack_loss(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example loss that an untargeted attack maximises.

    Args:
        name: ``"ce"`` (cross-entropy) or ``"margin"`` (Carlini–Wagner margin).
        logits: (N, K).
        y: (N,) labels.

    Returns:
        (N,) losses.
    """
    if name == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return margin(logits, y)


def _check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise AttackError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return loss


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AttackError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_float(name: str, value: float, minimum: float = 0.0, strict: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise AttackError(f"{name} must be a number, got {value!r}") from err
    if math.isnan(v) or v < minimum or (strict and v == minimum):
        raise AttackError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return v


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """What an attack produced for a batch.

    Attributes:
        x_adv: (N, C, H, W) adversarial inputs in [0, 1] (inside the ε-ball).
        success: (N,) bool, the model misclassifies ``x_adv`` (evaluated with ``eval_solver``).
        l2: (N,) ‖x_adv − x‖₂.
        linf: (N,) ‖x_adv − x‖∞.
        queries: (N,) forward passes of the model spent on each example (gradient
            attacks: forwards incl. EOT samples; Boundary Attack: its queries).
        iterations: iterations (steps) the attack ran, over all restarts / binary-search steps.
        seconds: wall time of the whole call.
        nfe: ODE function evaluations over all forwards (0 for models without an ODE block).
        attack: attack name.
        norm: ``"inf"`` or ``"2"``.
        eps: the ε-ball radius (``inf`` for minimum-norm attacks without a budget).
        clean_correct: (N,) bool, the model classifies the clean ``x`` correctly (scored like
            ``x_adv``, with ``eval_solver``; None: unknown, every example counts as attacked).
            An example that is already misclassified is not a success of the attack:
            :attr:`success_rate` and :meth:`summary` count only the others, as
            :func:`~attacks.evaluate` does.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    queries: torch.Tensor
    iterations: int
    seconds: float
    nfe: int
    attack: str
    norm: str
    eps: float
    clean_correct: torch.Tensor | None = None

    @property
    def attacked(self) -> torch.Tensor:
        """(N,) bool: the examples the attack had to break (those classified correctly when clean)."""
        if self.clean_correct is None:
            return torch.ones_like(self.success, dtype=torch.bool)
        return self.clean_correct.to(device=self.success.device, dtype=torch.bool)

    @property
    def already_misclassified(self) -> int:
        """How many examples the model misclassifies before any perturbation (not counted as successes)."""
        return int((~self.attacked).sum())

    @property
    def broken(self) -> torch.Tensor:
        """(N,) bool: correctly classified when clean and misclassified at ``x_adv``."""
        return self.success & self.attacked

    @property
    def success_rate(self) -> float:
        """Fraction of the initially correct examples misclassified at ``x_adv`` (0 when there are none)."""
        n = int(self.attacked.sum())
        return float(self.broken.sum()) / n if n else 0.0

    def norms(self, p: str | None = None) -> torch.Tensor:
        """(N,) perturbation norms in ``p`` (default: the attack's norm)."""
        return self.linf if canonical_norm(p or self.norm) == "inf" else self.l2

    def summary(self) -> str:
        """One line: success rate and mean / median norms over the initially correct examples that
        the attack broke, the count of already misclassified ones apart, time, NFE."""
        ok = self.broken
        l2 = self.l2[ok]
        mean_l2 = float(l2.mean()) if l2.numel() else math.nan
        med_l2 = float(l2.median()) if l2.numel() else math.nan
        linf = self.linf[ok]
        mean_linf = float(linf.mean()) if linf.numel() else math.nan
        eps = "unbounded" if math.isinf(self.eps) else f"eps={self.eps:g}"
        n = ok.numel()
        wrong = self.already_misclassified
        return (f"{self.attack} L{self.norm} {eps}: success {self.success_rate:.2%} of {n - wrong} correctly "
                f"classified ({wrong} of {n} already misclassified, not counted), "
                f"L2 mean {mean_l2:.4f} median {med_l2:.4f}, Linf mean {mean_linf:.4f}, "
                f"{self.seconds:.2f}s, NFE {self.nfe}")


class Attack:
    """Base class of every attack (template method).

    ``__call__(x, y)`` validates the inputs, puts the model in eval mode with frozen
    parameters, calls :meth:`_perturb`, projects the result onto the ε-ball and [0, 1],
    evaluates success (untargeted: ``argmax ≠ y``), then restores the model's per-module
    train/eval flags and ``requires_grad`` flags.

    Args:
        model: classifier returning logits for (N, C, H, W) inputs in [0, 1].
        eps: radius of the perturbation ball (``math.inf``: unbounded) or (N,) radii.
        norm: ``"inf"`` or ``"2"``.
        seed: seed of the attack's own random generator, or a ``torch.Generator`` (CPU) to draw from.
        attack_solver: ``SolverConfig`` the ODE net integrates with while the attack runs
            (None: the model's own).
        eval_solver: ``SolverConfig`` used to score the final adversarial inputs (None: the model's own).

    Raises:
        AttackError: invalid ε, norm, or a norm this attack does not support.
    """

    #: CLI name.
    name: ClassVar[str] = "attack"
    #: Norms this attack supports.
    supported_norms: ClassVar[tuple[str, ...]] = NORMS
    #: Constructor argument that ``--steps`` sets on the CLI (None: single step).
    budget_arg: ClassVar[str | None] = None
    #: True for attacks that minimise the norm rather than work at a fixed ε.
    minimal: ClassVar[bool] = False
    #: True for gradient attacks whose gradients :class:`~attacks.EOT` can average.
    supports_eot: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        eps: float | torch.Tensor = math.inf,
        norm: str = "inf",
        *,
        seed: int | torch.Generator = 0,
        attack_solver: Any | None = None,
        eval_solver: Any | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise AttackError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.norm = canonical_norm(norm)
        if self.norm not in self.supported_norms:
            raise AttackError(f"{type(self).__name__} supports norm(s) {', '.join(self.supported_norms)}, "
                              f"not {self.norm!r}")
        self.ball = LpBall(self.norm, eps)
        self.eps = self.ball.eps
        if isinstance(seed, torch.Generator):
            self.generator = seed
        elif isinstance(seed, int) and not isinstance(seed, bool):
            self.generator = torch.Generator().manual_seed(seed)
        else:
            raise AttackError(f"seed must be an int or a torch.Generator, got {seed!r}")
        self.attack_solver = attack_solver
        self.eval_solver = eval_solver
        #: forward passes whose loss gradients are averaged (> 1: expectation over transformation).
        self.grad_samples = 1
        self._nfe = 0
        self._queries = torch.zeros(0, dtype=torch.long)
        self._iterations = 0
        self._known_success: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(norm={self.norm!r}, eps={self.ball!r})"

    # ------------------------------------------------------------------ template
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """Attack a batch.

        Args:
            x: (N, C, H, W) float inputs in [0, 1].
            y: (N,) integer labels.

        Returns:
            the :class:`AttackResult`.

        Raises:
            AttackError: malformed inputs (shape, range, NaN, label count or range) or per-example
                ε of the wrong length.
        """
        x, y = self._check_inputs(x, y)
        self.ball.radius(x)  # validates per-example eps against the batch size
        model = self.model
        modes = [(m, m.training) for m in model.modules()]
        flags = [(p, p.requires_grad) for p in model.parameters()]
        self._nfe = 0
        self._iterations = 0
        self._queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self._known_success = None
        try:
            model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            # Reference pass, outside the attack's time, NFE and query counts: which examples
            # were already misclassified (they are no success of the attack).
            with torch.no_grad(), with_solver(model, self.eval_solver):
                clean_correct = model(x).argmax(dim=1) == y
            start = time.perf_counter()
            with with_solver(model, self.attack_solver):
                raw = self._perturb(x, y).detach()
            x_adv, success = self._project_and_score(x, y, raw)
        finally:
            for m, training in modes:
                m.training = training
            for p, requires_grad in flags:
                p.requires_grad_(requires_grad)
        seconds = time.perf_counter() - start
        delta = x_adv - x
        eps = self.eps if isinstance(self.eps, float) else float(self.eps.max())
        return AttackResult(
            x_adv=x_adv, success=success, l2=lp_norm(delta, "2"), linf=lp_norm(delta, "inf"),
            queries=self._queries, iterations=self._iterations, seconds=seconds, nfe=self._nfe,
            attack=self.name, norm=self.norm, eps=eps, clean_correct=clean_correct,
        )

    def _project_and_score(self, x: torch.Tensor, y: torch.Tensor,
                           raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_adv, success): ``_perturb``'s output projected onto the ball and the box, and scored."""
        if raw.shape != x.shape:
            raise RuntimeError(f"{type(self).__name__}._perturb returned shape {tuple(raw.shape)}")
        delta = raw - x
        if self.ball.bounded:
            delta = self.ball.project(delta)
        x_adv = (x + delta).clamp(0.0, 1.0)
        if self._all_known(raw, x_adv):
            # every returned point is an iterate the attack itself found misclassified,
            # under the scoring solver and bit for bit: scoring it again would repeat that pass
            return x_adv, torch.ones_like(y, dtype=torch.bool)
        with torch.no_grad(), with_solver(self.model, self.eval_solver):
            success = self.model(x_adv).argmax(dim=1) != y
            self._nfe += model_nfe(self.model)
        return x_adv, success

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The algorithm: candidate adversarial inputs for (x, y), same shape as x.

        Runs with the model in eval mode, parameters frozen and ``attack_solver`` in place.
        The result is projected and clamped by the caller.
        """
        raise NotImplementedError

    def _all_known(self, raw: torch.Tensor, x_adv: torch.Tensor) -> bool:
        """Whether ``_perturb`` marked every returned point misclassified (``_known_success``),
        the scoring solver is the attack's, the model is deterministic (a model with
        ``randomized = True`` is always scored by a fresh pass) and projection left the points
        unchanged."""
        known = self._known_success
        # the attack marked its points under attack_solver; scoring runs under eval_solver (None:
        # the model's own), so the marks stand only where the two solvers are the same
        return (known is not None and self.eval_solver == self.attack_solver and self.grad_samples == 1
                and not getattr(self.model, "randomized", False) and bool(known.all()) and torch.equal(raw, x_adv))

    # ------------------------------------------------------------------ helpers for subclasses
    def _forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the model, counting NFE and per-example queries (``index``: rows of x)."""
        logits = self.model(x)
        self._nfe += model_nfe(self.model)
        if index is None:
            self._queries += 1
        else:
            self._queries[index] += 1
        return logits

    def _loss_grad(self, x: torch.Tensor, y: torch.Tensor, loss: str = "ce",
                   index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient of the per-example loss w.r.t. the input, averaged over ``grad_samples`` passes.

        Args:
            x: (M, C, H, W) inputs.
            y: (M,) labels.
            loss: loss name (see :data:`LOSSES`).
            index: the rows of the full batch that x holds (for query counting).

        Returns:
            (gradient (M, C, H, W), logits of the last pass (M, K), loss of the last pass (M,)),
            all detached.
        """
        xr = x.detach().requires_grad_(True)
        grad: torch.Tensor | None = None
        for _ in range(self.grad_samples):
            logits = self._forward(xr, index)
            value = attack_loss(loss, logits, y)
            (g,) = torch.autograd.grad(value.sum(), xr)
            grad = g if grad is None else grad + g
        assert grad is not None
        if self.grad_samples > 1:
            grad = grad / self.grad_samples
        return grad, logits.detach(), value.detach()

    def _rand(self, shape: tuple[int, ...] | torch.Size, like: torch.Tensor) -> torch.Tensor:
        """U[0, 1) noise from the attack's generator, on ``like``'s device and dtype."""
        return torch.rand(shape, generator=self.generator).to(device=like.device, dtype=like.dtype)

    def _randn(self, shape: tuple[int, ...] | torch.Size, like: torch.Tensor) -> torch.Tensor:
        """N(0, 1) noise from the attack's generator, on ``like``'s device and dtype."""
        return torch.randn(shape, generator=self.generator).to(device=like.device, dtype=like.dtype)

    def _diameter(self, x: torch.Tensor) -> float:
        """Largest possible distance between two points of [0, 1]^d in this norm."""
        return 1.0 if self.norm == "inf" else math.sqrt(x[0].numel())

    def _effective_eps(self, x: torch.Tensor) -> float | torch.Tensor:
        """ε capped at the diameter of [0, 1]^d, broadcastable against x (for step sizes)."""
        eps = self.ball.radius(x)
        cap = self._diameter(x)
        if isinstance(eps, float):
            return min(eps, cap)
        return eps.clamp(max=cap)

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor):
            raise AttackError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not isinstance(y, torch.Tensor):
            raise AttackError(f"y must be a torch.Tensor of labels, got {type(y).__name__}")
        if x.dim() != 4:
            raise AttackError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise AttackError("x is an empty batch")
        expected = getattr(self.model, "input_shape", None)
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise AttackError(f"x has per-example shape {tuple(x.shape[1:])}, the model expects {tuple(expected)}")
        if not x.is_floating_point():
            raise AttackError(f"x must be a floating-point tensor, got {x.dtype}")
        if not torch.isfinite(x).all():
            raise AttackError("x contains NaN or infinite values")
        if float(x.min()) < 0.0 or float(x.max()) > 1.0:
            raise AttackError(f"x must lie in [0, 1], got values in [{float(x.min()):g}, {float(x.max()):g}]")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise AttackError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise AttackError(f"y must hold integer class labels, got {y.dtype}")
        classes = getattr(self.model, "num_classes", None)
        if int(y.min()) < 0 or (isinstance(classes, int) and int(y.max()) >= classes):
            raise AttackError(f"labels must lie in [0, {classes}), got [{int(y.min())}, {int(y.max())}]")
        return x.detach(), y.detach().to(device=x.device, dtype=torch.long)


__all__ = ["LOSSES", "Attack", "AttackError", "AttackResult", "attack_loss", "margin"]
