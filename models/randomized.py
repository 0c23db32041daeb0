"""Tolerance randomization: an ODE net that votes over randomly drawn solver tolerances.

The defense of Carrara et al.: at prediction time the adaptive solver's tolerance τ
(rtol = atol = τ) is drawn log-uniformly from [``low``, ``high``], the same image is
classified V times with independent draws, and the plurality class is accepted only
when it received more than ``v_min`` of the V votes; otherwise the input is rejected
as possibly adversarial. Natural images are classified the same way at every τ, while
minimal adversarial examples crafted at one tolerance sit so close to the decision
boundary that other tolerances disagree with them.

:class:`ToleranceRandomized` is the single implementation in the toolkit:
``forward`` is a randomized classifier
(the logits of one freshly drawn τ, what EOT attacks differentiate), ``predict`` is
the voting classifier with rejection.

Batching: one draw of τ serves a whole batch, and torchdiffeq's step-size control
measures the local error over the whole batch tensor, so the steps an adaptive solver
takes (hence, slightly, the logits of one image) depend on the other images of the
batch. Compare predictions made with equal batch compositions.

References:
    Carrara, Caldelli, Falchi & Amato, "Defending Neural ODE Image Classifiers from
    Adversarial Attacks with Tolerance Randomization", ICPR workshops (MMForWild) 2021.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from attacks import with_solver

from .solver import ADAPTIVE_METHODS, SolverConfig

#: Label ``predict`` returns for a rejected input.
REJECT = -1


class RandomizationError(ValueError):
    """An invalid argument of the tolerance-randomized classifier (model, range, votes, threshold)."""


@dataclasses.dataclass(frozen=True)
class VoteResult:
    """What the voting classifier decided for a batch.

    Attributes:
        label: (N,) int64 accepted class, :data:`REJECT` (-1) where the input was rejected.
        votes: (N, K) int64 votes per class; every row sums to V.
        tolerances: (V,) float64 tolerances drawn, one per vote (shared by the batch).
        v_min: the threshold: accepted exactly when the top class has more than ``v_min`` votes.
        nfe: ODE function evaluations over the V forward passes.
    """

    label: torch.Tensor
    votes: torch.Tensor
    tolerances: torch.Tensor
    v_min: int
    nfe: int

    @property
    def n_votes(self) -> int:
        """V, the number of votes per input."""
        return int(self.tolerances.numel())

    @property
    def top_class(self) -> torch.Tensor:
        """(N,) the most voted class (lowest index among ties), whether accepted or not."""
        return self.votes.argmax(dim=1)

    @property
    def agreement(self) -> torch.Tensor:
        """(N,) v_agree: votes given to the most voted class."""
        return self.votes.amax(dim=1)

    @property
    def accepted(self) -> torch.Tensor:
        """(N,) bool, the input is accepted (``agreement > v_min``)."""
        return self.agreement > self.v_min

    def accepts(self, v_min: int) -> torch.Tensor:
        """(N,) bool acceptance under another threshold (ROC sweeps over ``v_min``)."""
        return self.agreement > v_min


def _log_uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RandomizationError(f"seed must be an int or a torch.Generator, got {seed!r}")
    return torch.Generator().manual_seed(seed)


class ToleranceRandomized(nn.Module):
    """An ODE net classified with randomly drawn adaptive-solver tolerances, with voting and rejection.

    ``forward(x)`` is a randomized classifier (the logits of one freshly drawn τ, what attacks
    and EOT differentiate); ``predict(x, seed)`` is the defended classifier (V votes, the class
    or :data:`REJECT`). One draw of τ serves a whole batch (see the module docstring).

    Args:
        model: an ODE net whose ``solver`` is an assignable :class:`~models.SolverConfig`
            (e.g. :class:`~models.ODENet`); its solver is restored after every pass.
        low: smallest tolerance τ (> 0).
        high: largest tolerance τ (> ``low``).
        votes: V, forward passes per :meth:`predict` (>= 1).
        v_min: accept only when the top class has more than ``v_min`` votes, 0 <= v_min < V
            (default ``V // 2``: a strict majority).
        method: adaptive method to integrate with (default: the model's own, which must then be
            adaptive).
        seed: seed (or CPU ``torch.Generator``) of the draws made by :meth:`forward` and by
            :meth:`predict` calls without their own seed.

    Attributes:
        last_tol: τ of the last :meth:`forward` (NaN before the first).
        nfe: ODE function evaluations of the last :meth:`forward`.

    Raises:
        RandomizationError: ``model`` has no solver, ``low >= high`` or not positive and finite,
            ``votes < 1``, ``v_min`` outside [0, V), or a non-adaptive method.

    References:
        Carrara et al., "Defending Neural ODE Image Classifiers from Adversarial Attacks
        with Tolerance Randomization", ICPR workshops 2021.
    """

    #: a randomized classifier: attacks score their results with a fresh forward pass.
    randomized = True

    def __init__(self, model: nn.Module, low: float = 1e-5, high: float = 1e-1, votes: int = 10,
                 v_min: int | None = None, method: str | None = None, seed: int | torch.Generator = 0) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not isinstance(getattr(model, "solver", None), SolverConfig):
            raise RandomizationError(
                f"tolerance randomization wraps an ODE net with a SolverConfig `solver` (e.g. models.ODENet), "
                f"got {type(model).__name__}")
        try:
            low, high = float(low), float(high)
        except (TypeError, ValueError) as err:
            raise RandomizationError(f"low and high must be numbers, got {low!r}, {high!r}") from err
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
            raise RandomizationError(f"need finite tolerances 0 < low < high, got low={low!r}, high={high!r}")
        if isinstance(votes, bool) or not isinstance(votes, int) or votes < 1:
            raise RandomizationError(f"votes V must be an integer >= 1, got {votes!r}")
        if v_min is None:
            v_min = votes // 2
        if isinstance(v_min, bool) or not isinstance(v_min, int) or not 0 <= v_min < votes:
            raise RandomizationError(
                f"v_min must be an integer in [0, V) = [0, {votes}) (the top class needs more than v_min "
                f"votes), got {v_min!r}")
        method = model.solver.method if method is None else method
        if method not in ADAPTIVE_METHODS:
            raise RandomizationError(
                f"tolerance randomization needs an adaptive solver ({', '.join(ADAPTIVE_METHODS)}), got "
                f"{method!r}; pass method='dopri5' to integrate a fixed-step model adaptively")
        self.model = model
        self.low, self.high, self.votes, self.v_min, self.method = low, high, votes, v_min, method
        self.generator = _generator(seed)
        self.last_tol = math.nan
        self.nfe = 0
        self.num_classes = getattr(model, "num_classes", None)
        self.input_shape = getattr(model, "input_shape", None)

    def extra_repr(self) -> str:
        return (f"tau~logU[{self.low:g}, {self.high:g}], method={self.method}, votes={self.votes}, "
                f"v_min={self.v_min}")

    def sample_tolerances(self, count: int, seed: int | torch.Generator | None = None) -> torch.Tensor:
        """``count`` tolerances drawn log-uniformly from [low, high].

        Args:
            count: number of draws (>= 1).
            seed: int or generator to draw from (None: the wrapper's own generator, which advances).

        Returns:
            (count,) float64 tensor.

        Raises:
            RandomizationError: ``count`` < 1 or a bad seed.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise RandomizationError(f"count must be an integer >= 1, got {count!r}")
        gen = self.generator if seed is None else _generator(seed)
        return _log_uniform(torch.rand(count, generator=gen).double(), self.low, self.high)

    def logits_at(self, x: torch.Tensor, tol: float) -> torch.Tensor:
        """Logits with the given tolerance (rtol = atol = ``tol``), differentiable.

        Args:
            x: (N, C, H, W) inputs in [0, 1].
            tol: the tolerance τ (> 0).

        Returns:
            (N, K) logits.

        Raises:
            SolverConfigError: ``tol`` is not positive.
        """
        solver = self.model.solver.replace(method=self.method, rtol=float(tol), atol=float(tol), step_size=None)
        with with_solver(self.model, solver):
            out = self.model(x)
        self.nfe = int(getattr(self.model, "nfe", 0))
        self.last_tol = float(tol)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ONE freshly drawn tolerance: the randomized classifier that attacks (and EOT) see.

        Every call draws a new τ from the wrapper's generator, so two calls on the same input
        generally differ; use :meth:`predict` for the voting classifier with rejection.

        Args:
            x: (N, C, H, W) inputs in [0, 1].

        Returns:
            (N, K) logits, differentiable w.r.t. ``x``.
        """
        return self.logits_at(x, float(self.sample_tolerances(1)[0]))

    def vote_labels(self, x: torch.Tensor, tolerances: torch.Tensor) -> torch.Tensor:
        """Predicted class of every input under every given tolerance (no gradients, eval mode).

        Args:
            x: (N, C, H, W) inputs in [0, 1].
            tolerances: (V,) tolerances, e.g. from :meth:`sample_tolerances`.

        Returns:
            (V, N) int64 labels.
        """
        return self._vote(x, tolerances)[0]

    @torch.no_grad()
    def _vote(self, x: torch.Tensor, tolerances: torch.Tensor) -> tuple[torch.Tensor, int]:
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        labels, nfe = [], 0
        try:
            for tol in tolerances.tolist():
                labels.append(self.logits_at(x, tol).argmax(dim=1))
                nfe += self.nfe
        finally:
            for m, training in modes:
                m.training = training
        return torch.stack(labels), nfe

    def predict(self, x: torch.Tensor, seed: int | torch.Generator | None = None) -> VoteResult:
        """The voting classifier: V passes with independent τ, accept when the top class has > v_min votes.

        Args:
            x: (N, C, H, W) inputs in [0, 1].
            seed: int or generator for the V draws (the same seed gives the same votes);
                None draws from the wrapper's own generator.

        Returns:
            the :class:`VoteResult` (label -1 = rejected).

        Raises:
            RandomizationError: a bad seed.
            ModelInputError: malformed input (raised by the wrapped model).
        """
        tolerances = self.sample_tolerances(self.votes, seed)
        labels, nfe = self._vote(x, tolerances)
        classes = self.num_classes if isinstance(self.num_classes, int) else int(labels.max()) + 1
        votes = torch.nn.functional.one_hot(labels, classes).sum(dim=0)
        top = votes.amax(dim=1)
        label = torch.where(top > self.v_min, votes.argmax(dim=1), torch.full_like(top, REJECT))
        return VoteResult(label=label, votes=votes, tolerances=tolerances, v_min=self.v_min, nfe=nfe)


__all__ = ["REJECT", "RandomizationError", "ToleranceRandomized", "VoteResult"]
