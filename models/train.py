"""Training loop, evaluation and checkpoints.

A checkpoint is two files: ``<stem>.pt`` (a plain ``state_dict``, loadable with
``torch.load(weights_only=True)``) and ``<stem>.json`` (architecture, constructor config,
solver, data protocol, recipe, measured held-out accuracy and NFE, git commit).

Training is resumable: after every epoch the model, optimiser and scheduler state go to
``<stem>.resume.pt``; every epoch draws its randomness from ``(seed, epoch)``, so a
resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import subprocess
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import build_model
from .base import Classifier

#: ``adversary(model, x, y, eps) -> x_adv``: the adversarial-training hook (model in eval
#: mode); ``eps`` is the L∞ budget of this step (:func:`adv_eps_at`).
Adversary = Callable[[nn.Module, torch.Tensor, torch.Tensor, float], torch.Tensor]


class LossHook(Protocol):
    """A training loss the trainer calls instead of cross-entropy (e.g. a certified loss that
    :mod:`verify.certified_training` supplies, so that ``models`` never imports ``verify``).

    ``recipe`` is a JSON-serialisable description of the loss (its kind, ε schedule, ...);
    it is part of the resume state, so a resume under another loss is refused.
    ``__call__(model, x, y, step, steps_per_epoch)`` returns the batch's scalar loss and
    per-batch statistics in [0, 1] (e.g. ``{"clean": ..., "verified": ...}`` accuracies),
    which the progress bar shows as running means; ``step`` counts batches over all epochs.
    """

    recipe: dict[str, Any]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int,
                 steps_per_epoch: int) -> tuple[torch.Tensor, dict[str, float]]: ...


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or inconsistent with its metadata."""


class NotACheckpointError(CheckpointError):
    """A weights file that is not a checkpoint: random bytes, or a pickle of anything but tensors."""


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return b""


def _read_weights(path: Path, device: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` whose failures say the file is not a checkpoint.

    torch's own message on a file it will not unpickle advises ``weights_only=False``, which
    would execute whatever the file holds; it is never passed on. Its warnings (e.g. about
    the pickle protocol of a foreign file) are silenced so that the CLI error stays one line.

    Raises:
        NotACheckpointError: the file cannot be read as tensors written by ``torch.save``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True, map_location=device)
    except Exception as err:  # torch raises many types (pickle, zip, runtime, EOF) on foreign files
        head = _head(path)
        if path.is_file() and path.stat().st_size == 0:
            detail = "the file is empty"
        elif not head.startswith(b"PK"):  # torch.save writes a zip archive
            detail = "not a file written by torch.save"
        elif not zipfile.is_zipfile(path):
            detail = "a truncated or damaged torch.save archive"
        elif "weights_only" in str(err) or "Weights only" in str(err):
            detail = "it holds pickled Python objects, not a state_dict of tensors"
        else:
            detail = "an unreadable torch.save archive"
        raise NotACheckpointError(f"{path} is not a checkpoint: corrupt checkpoint weights ({detail})") from err


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters (stored in checkpoint metadata).

    Args:
        epochs: passes over the training set.
        batch_size: examples per step.
        lr: peak learning rate (Adam).
        weight_decay: decoupled weight decay (AdamW).
        schedule: "cosine" (one-cycle cosine with 1-epoch warm-up) or "constant".
        shift: random translation augmentation, in pixels (0 disables).
        seed: seed of initialisation, shuffling and augmentation.
        adv: adversarial training attack name ("pgd", "fgsm") or None.
        adv_eps: L∞ budget of adversarial training.
        adv_steps: PGD steps of adversarial training.
        adv_warmup: epochs of clean training before adversarial examples are used.
        adv_ramp: epochs after the warm-up over which the budget grows linearly, step by
            step, from 0 to ``adv_eps`` (0: the full budget at once).
        T_range: if set, each batch integrates an ODE-net to T ~ U[T_range] (seed 000's
            "10-100" recipe); None keeps the model's solver T.
        grad_clip: clip the gradient's global L2 norm to this value before each step
            (None: no clipping).
        lr_steps: epochs (0-based, increasing) at whose start the learning rate is multiplied
            by ``lr_step_factor``, on top of ``schedule`` (the step decay of the certified-training
            literature: Gowal et al. 2018, Shi et al. 2021); () for none.
        lr_step_factor: the factor of each step of ``lr_steps``.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    shift: int = 2
    seed: int = 0
    adv: str | None = None
    adv_eps: float = 0.3
    adv_steps: int = 10
    adv_warmup: int = 0
    adv_ramp: int = 0
    T_range: tuple[float, float] | None = None
    grad_clip: float | None = None
    lr_steps: tuple[int, ...] = ()
    lr_step_factor: float = 0.2

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose cosine or constant")
        if self.adv is not None and self.adv not in ("pgd", "fgsm"):
            raise ValueError(f"unknown adversarial training attack {self.adv!r}; choose pgd or fgsm")
        if self.adv_eps < 0:
            raise ValueError(f"adv_eps must be >= 0, got {self.adv_eps}")
        if self.adv_warmup < 0 or self.adv_ramp < 0:
            raise ValueError(f"adv_warmup and adv_ramp must be >= 0, got {self.adv_warmup}, {self.adv_ramp}")
        if self.T_range is not None and not (0 < self.T_range[0] <= self.T_range[1]):
            raise ValueError(f"T_range must satisfy 0 < lo <= hi, got {self.T_range}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive (or None), got {self.grad_clip}")
        steps = tuple(self.lr_steps)
        if any(not 0 < a < self.epochs for a in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"lr_steps must be increasing epochs in 1..{self.epochs - 1}, got {list(steps)}")
        object.__setattr__(self, "lr_steps", tuple(int(a) for a in steps))
        if not 0 < self.lr_step_factor <= 1:
            raise ValueError(f"lr_step_factor must be in (0, 1], got {self.lr_step_factor}")

    def key(self) -> dict[str, Any]:
        """The recipe as recorded in a resume state (fields left at None that older versions
        lacked are omitted, so their resume states stay valid)."""
        d = dataclasses.asdict(self)
        if d["grad_clip"] is None:
            del d["grad_clip"]
        if not d["lr_steps"]:
            del d["lr_steps"], d["lr_step_factor"]
        else:
            d["lr_steps"] = list(d["lr_steps"])
        return d


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training run measured."""

    epoch_loss: tuple[float, ...]
    seconds: float
    epoch_stats: tuple[dict[str, float], ...] = ()


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]², zero fill."""
    if max_shift == 0:
        return x
    n, _, hgt, wid = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(hgt))[:, :, None].expand(n, hgt, wid)
    cols = (dx[:, None] + torch.arange(wid))[:, None, :].expand(n, hgt, wid)
    idx = torch.arange(n)[:, None, None]
    return pad[idx, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def _lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    epoch = step // steps_per_epoch
    decay = recipe.lr_step_factor ** sum(epoch >= a for a in recipe.lr_steps)
    return decay * _schedule_factor(recipe, step, steps_per_epoch)


def _schedule_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    if recipe.schedule == "constant":
        return 1.0
    warm = steps_per_epoch
    total = recipe.epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def adv_eps_at(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """The adversarial budget of training step ``step`` (0-based, counted over all epochs).

    0 during the ``adv_warmup`` epochs, then a linear ramp over ``adv_ramp`` epochs, reaching
    ``adv_eps`` at the last step of the ramp.
    """
    done = step - recipe.adv_warmup * steps_per_epoch
    if done < 0:
        return 0.0
    ramp = recipe.adv_ramp * steps_per_epoch
    return recipe.adv_eps if done + 1 >= ramp else recipe.adv_eps * (done + 1) / ramp


def train(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    adversary: Adversary | None = None,
    resume_path: Path | None = None,
    progress: bool = True,
    loss_fn: LossHook | None = None,
) -> TrainResult:
    """Train ``model`` in place on (x, y) with Adam(W) and cross-entropy.

    Args:
        model: the classifier (its device decides where training runs).
        x: images (N, C, H, W) in [0, 1].
        y: labels (N,).
        recipe: hyper-parameters.
        adversary: optional ``adversary(model, x, y, eps) -> x_adv`` used instead of clean
            batches after ``recipe.adv_warmup`` epochs (adversarial training), at the
            budget :func:`adv_eps_at` gives for the step.
        resume_path: where to keep the per-epoch resumable state (None: no resume).
        progress: show a tqdm bar.
        loss_fn: optional :class:`LossHook` computing each batch's loss instead of the
            cross-entropy of the logits (certified training); its ``recipe`` is recorded
            in the resume state.

    Returns:
        per-epoch mean loss (and the hook's mean statistics) and wall time.

    Raises:
        ValueError: mismatched x / y; both an adversary and a loss hook.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    if adversary is not None and loss_fn is not None:
        raise ValueError("give an adversary or a loss hook, not both (a loss hook runs its own attack)")
    device = next(model.parameters()).device
    torch.manual_seed(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(x.shape[0] / recipe.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(recipe, s, steps_per_epoch))
    losses: list[float] = []
    stats: list[dict[str, float]] = []
    start_epoch = 0
    key: dict[str, Any] = recipe.key()
    if loss_fn is not None:
        key = {**key, "loss_hook": loss_fn.recipe}
    recipe_key = json.dumps(key, sort_keys=True)
    if resume_path is not None and resume_path.exists():
        losses, stats, start_epoch = _resume(resume_path, recipe_key, model, opt, sched, device)
    base_solver = getattr(model, "solver", None)
    t0 = time.perf_counter()
    for epoch in range(start_epoch, recipe.epochs):
        loss, epoch_stats = _train_epoch(model, x, y, recipe, epoch, opt, sched, adversary, progress, loss_fn)
        losses.append(loss)
        stats.append(epoch_stats)
        if base_solver is not None:
            model.solver = base_solver
        if resume_path is not None:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "losses": torch.tensor(losses), "epoch": epoch + 1, "recipe": recipe_key,
                        "stats": json.dumps(stats)}, resume_path)
    model.eval()
    return TrainResult(tuple(losses), time.perf_counter() - t0, tuple(stats) if loss_fn is not None else ())


def _resume(resume_path: Path, recipe_key: str, model: nn.Module, opt: torch.optim.Optimizer,
            sched: torch.optim.lr_scheduler.LRScheduler, device: torch.device
            ) -> tuple[list[float], list[dict[str, float]], int]:
    """Load the per-epoch state into model, optimiser and scheduler; returns (losses so far, the
    loss hook's statistics so far, next epoch).

    Raises:
        NotACheckpointError: the file is not a resume state.
        CheckpointError: it was written by another recipe.
    """
    state = _read_weights(resume_path, device)
    if not isinstance(state, dict):
        raise NotACheckpointError(f"resume state {resume_path} is not a checkpoint "
                                  f"(it holds a {type(state).__name__}); delete it to train from scratch")
    if state.get("recipe") != recipe_key:
        raise CheckpointError(f"resume state {resume_path} was written by another recipe or training loss "
                              "(or an older version); delete it to train from scratch")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    losses = [float(v) for v in state["losses"]]
    stats = json.loads(state["stats"]) if isinstance(state.get("stats"), str) else [{} for _ in losses]
    return losses, stats, int(state["epoch"])


def _train_epoch(model: Classifier, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, epoch: int,
                 opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                 adversary: Adversary | None, progress: bool, loss_fn: LossHook | None = None
                 ) -> tuple[float, dict[str, float]]:
    """One pass over (x, y) in the order drawn from ``(seed, epoch)``; returns the mean loss and
    the loss hook's mean statistics.

    With ``recipe.T_range`` each batch sets its own ``model.solver`` (the caller restores it).
    """
    device = next(model.parameters()).device
    base_solver = getattr(model, "solver", None)
    steps_per_epoch = math.ceil(x.shape[0] / recipe.batch_size)
    gen = torch.Generator().manual_seed(recipe.seed * 100_003 + epoch)
    order = torch.randperm(x.shape[0], generator=gen)
    total, count = 0.0, 0
    sums: dict[str, float] = {}
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress, leave=False)
    for i in bar:
        idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
        xb = random_shift(x[idx], recipe.shift, gen).to(device)
        yb = y[idx].to(device)
        if recipe.T_range is not None and base_solver is not None:
            lo, hi = recipe.T_range
            T = lo + (hi - lo) * float(torch.rand((), generator=gen))
            model.solver = base_solver.replace(T=T, step_size=T / base_solver.n_steps if base_solver.is_fixed
                                               else base_solver.step_size)
        if adversary is not None and epoch >= recipe.adv_warmup:
            model.eval()
            xb = adversary(model, xb, yb, adv_eps_at(recipe, epoch * steps_per_epoch + i, steps_per_epoch)).detach()
        model.train()
        if loss_fn is None:
            loss, batch_stats = F.cross_entropy(model(xb), yb), {}
        else:
            loss, batch_stats = loss_fn(model, xb, yb, epoch * steps_per_epoch + i, steps_per_epoch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
        for k, v in batch_stats.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
        bar.set_postfix(loss=f"{total / count:.4f}", **{k: f"{v / count:.3f}" for k, v in sums.items()})
    return total / count, {k: v / count for k, v in sums.items()}


def _build_from_metadata(arch: Any, config: Any, js: Path) -> Classifier:
    """``build_model(arch, **config)`` from a sidecar, whose ``config`` must fit the constructor.

    Raises:
        CheckpointError: ``config`` is not an object of the constructor's arguments.
        UnknownArchitectureError: ``arch`` is not a key of :data:`models.MODELS`.
    """
    from . import MODELS

    if not isinstance(config, dict):
        raise CheckpointError(f"corrupt checkpoint metadata {js}: 'config' must be an object, "
                              f"got a {type(config).__name__}")
    if isinstance(arch, str) and arch in MODELS:
        try:  # bind, not call: a TypeError inside the constructor is a bug, not a bad sidecar
            inspect.signature(MODELS[arch]).bind(**config)
        except TypeError as err:
            raise CheckpointError(f"corrupt checkpoint metadata {js}: 'config' does not fit arch {arch!r}: "
                                  f"{err}") from err
    return build_model(str(arch), **config)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    """Accuracy and mean NFE per forward (0 for models without an ODE block).

    Args:
        model: classifier (switched to eval mode).
        x: images (N, C, H, W).
        y: labels (N,).
        batch_size: evaluation batch size.

    Returns:
        (accuracy in [0, 1], mean NFE over batches).
    """
    model.eval()
    device = next(model.parameters()).device
    correct, nfes = 0, []
    for i in range(0, x.shape[0], batch_size):
        logits = model(x[i:i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[i:i + batch_size]).sum())
        nfes.append(getattr(model, "nfe", 0))
    return correct / x.shape[0], sum(nfes) / len(nfes)


def git_commit() -> str | None:
    """Current commit of the source tree (``-dirty`` if it has uncommitted changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=here).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if dirty else "")) or None


def _stem(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".pt", ".json") else p


def sidecar(stem: Path, ext: str) -> Path:
    """``<stem><ext>``: the extension appended, so that a dotted stem (``ode-cert-0.1``) keeps its name."""
    return stem.with_name(stem.name + ext)


def save_checkpoint(path: str | os.PathLike[str], model: Classifier, metadata: dict[str, Any]) -> Path:
    """Write ``<stem>.pt`` (state_dict) and ``<stem>.json`` (metadata + arch + config).

    Returns:
        the ``.pt`` path.
    """
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta = {"arch": model.arch, "config": model.config(), **metadata}
    tmp = sidecar(stem, ".pt.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, sidecar(stem, ".pt"))
    sidecar(stem, ".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return sidecar(stem, ".pt")


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a model from ``<stem>.pt`` + ``<stem>.json``, in eval mode.

    Raises:
        NotACheckpointError: the weights file is not a state_dict of tensors written by
            ``torch.save`` (random bytes, a pickle of other objects, an empty file).
        CheckpointError: missing files, corrupt metadata, metadata that does not describe
            the weights.
    """
    stem = _stem(path)
    pt, js = sidecar(stem, ".pt"), sidecar(stem, ".json")
    # The weights first: a foreign .pt is "not a checkpoint", whether or not a .json lies beside it.
    if not pt.exists():
        raise CheckpointError(f"checkpoint file not found: {pt}")
    state = _read_weights(pt)
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        what = type(state).__name__ + (" of non-tensors" if isinstance(state, dict) else "")
        raise NotACheckpointError(f"{pt} is not a checkpoint: corrupt checkpoint weights (it holds a {what}, "
                                  "not a state_dict of tensors)")
    if not js.exists():
        raise CheckpointError(f"checkpoint file not found: {js}")
    try:
        meta = json.loads(js.read_text())
        arch, config = meta["arch"], meta["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"corrupt checkpoint metadata {js}: {err}") from err
    model = _build_from_metadata(arch, config, js)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        # torch's first line only names the class; the second says which tensors differ
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = " ".join(lines[:2])
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise CheckpointError(f"checkpoint {pt} does not match its metadata: {detail}") from err
    return model.to(device).eval(), meta
