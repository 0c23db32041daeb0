"""Soundness campaign (issue 12): random small networks, every verifier, bounds vs attacked margins.

Each trial draws, from ``numpy.random.default_rng([seed, trial])`` (so trial i replays alone),
one random small classifier and one image, then bounds the margins f_y − f_j (y = the model's
prediction, every j ≠ y) with every method and engine over the ε-ball ∩ [0, 1] and checks the
bounds against the smallest margins found in that set:

* networks: ``nn.Sequential`` of Conv2d (kernel 1–4, stride 1/2, padding 0/1/2 or "same",
  padding modes zeros/reflect/replicate/circular, dilation 1/2, groups, with/without bias),
  AvgPool2d (padding, count_include_pad, ceil_mode), MaxPool2d (padding, dilation, ceil_mode),
  Identity, nested Sequentials, Flatten, Linear and ReLU anywhere (first and last included);
  ``ODENet`` with the verifiable field (time channel or not, hidden width ≠ channels, every
  fixed-step method of ``models.solver.FIXED_METHODS``, 1–3 steps, random T; a few adaptive
  solvers, which certification should refuse); ``ResNet`` (tied or not, step s, time
  channel); ``MLP``. Weights are rescaled by a random gain and biases redrawn so that ReLUs
  are unstable; 1–2 channels, 6x6 to 14x14 inputs, 2–10 classes.
* images: MNIST crops and downsamples (many exact 0 pixels) or random uniform, sparse, binary
  and mid-grey images.
* ε: 0 in 4 % of trials, else r0·10^U(−2, 1.3) with r0 = min_j m_j / ‖∇m_j‖_dual, the
  first-order radius, so ε is both far below and far above the radius; norm inf or 2.
* methods: ibp, crown (engine "auto": the dense engine when the model has a dense graph, else
  auto_LiRPA; and engine "auto_lirpa"), forward, lipschitz on every trial; alpha-crown (slow
  through auto_LiRPA) on trials with ``trial % alpha_every == 0``.
* attack: the clean point, 32 sampled points (L∞: random clipped corners and uniform points of
  the box [x−ε, x+ε] ∩ [0, 1]; L2: random directions at radius ε and uniform points of the ball,
  clipped to [0, 1], which keeps them in the ball) and a per-margin PGD (each margin minimised
  separately, 2 restarts, one from x, 20 steps of 2.5ε/20, projected to ball ∩ [0, 1]); every
  point evaluated scores every margin. For ``norm="2"`` the certificate covers the whole ball,
  of which this checks the part inside [0, 1].
* violation: a found margin m < bound − tol with tol = 1e-5·(1 + |bound| + max_j |f_j(x)|):
  float32 round-off of a margin f_y − f_j is relative to the logits it subtracts, not to the
  difference, and two evaluations of the same network in another summation order differ by a
  few 1e-7 of that scale; 1e-5 leaves a factor of ~30 while a real unsoundness of 1e-5·scale
  is still caught. Slack = m − bound (min over found points). A method that raises is
  "refused" (a clear refusal: UnsupportedLayerError, GraphError, CertifyError, LipschitzError,
  TableauError, NotImplementedError) or "crashed" (any other exception), never a pass.

Usage: ``python -m benchmarks.soundness --trials 10000 [--jobs 2] [--seed 0] [--out runs/soundness]``
(``--start`` and ``--trials`` select a subset; one JSON line per finished trial is appended to
``OUT/trials.jsonl`` and trials already there for the same seed and the same code are skipped on
rerun; the code fingerprint hashes verify/, lipbound/, models/ and :data:`CAMPAIGN`, the version
of the trial drawing, attack and check). ``--replay I`` reruns trial I alone and prints its
record; ``--report`` only summarises the records already in OUT (the latest one of each trial).
Writes benchmarks/results/soundness.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import math
import multiprocessing as mp
import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: (method, engine) pairs bounded on every trial; alpha-crown on a fraction (``alpha_every``).
METHODS: tuple[tuple[str, str], ...] = (("ibp", "auto"), ("crown", "auto"), ("crown", "auto_lirpa"),
                                        ("forward", "auto"), ("lipschitz", "auto"), ("alpha-crown", "auto"))
REFUSALS = ("UnsupportedLayerError", "GraphError", "_LayoutError", "CertifyError", "LipschitzError",
            "TableauError", "NotImplementedError", "SolverConfigError")
TOL = 1e-5
#: version of what a trial is (drawing, attack, check); bump it when they change, so that a
#: resumed run redoes the trials (edits to the report only do not change it).
CAMPAIGN = "soundness-1"
SAMPLES, PGD_STEPS, RESTARTS = 32, 20, 2
_MNIST: list[torch.Tensor | None] = []


# ---- random architectures -------------------------------------------------------------------
def _conv_spec(rng: np.random.Generator, cin: int) -> dict[str, Any]:
    g = int(rng.choice([d for d in (2, 3) if cin % d == 0])) if cin > 1 and rng.random() < 0.3 else 1
    s = int(rng.choice([1, 2]))
    pad: Any = int(rng.choice([0, 1, 2]))
    if s == 1 and rng.random() < 0.1:
        pad = "same"
    mode = str(rng.choice(["zeros", "reflect", "replicate", "circular"], p=[0.55, 0.15, 0.15, 0.15]))
    return {"t": "conv", "cin": cin, "cout": g * int(rng.integers(1, 4)), "k": int(rng.integers(1, 5)), "s": s,
            "p": pad, "mode": mode, "d": 2 if rng.random() < 0.2 else 1, "g": g, "bias": bool(rng.random() < 0.8)}


def _pool_spec(rng: np.random.Generator) -> dict[str, Any]:
    k = int(rng.choice([2, 3]))
    if rng.random() < 0.5:
        return {"t": "avgpool", "k": k, "s": int(rng.choice([1, 2, k])), "p": int(rng.integers(0, k // 2 + 1)),
                "cip": bool(rng.random() < 0.7), "ceil": bool(rng.random() < 0.1)}
    return {"t": "maxpool", "k": k, "s": int(rng.choice([1, 2])), "p": int(rng.integers(0, k // 2 + 1)),
            "d": 2 if rng.random() < 0.1 else 1, "ceil": bool(rng.random() < 0.1)}


def _layer(spec: dict[str, Any]) -> nn.Module:
    t = spec["t"]
    if t == "conv":
        return nn.Conv2d(spec["cin"], spec["cout"], spec["k"], spec["s"], spec["p"], spec["d"], spec["g"],
                         spec["bias"], spec["mode"])
    if t == "avgpool":
        return nn.AvgPool2d(spec["k"], spec["s"], spec["p"], spec["ceil"], spec["cip"])
    if t == "maxpool":
        return nn.MaxPool2d(spec["k"], spec["s"], spec["p"], spec["d"], ceil_mode=spec["ceil"])
    if t == "linear":
        return nn.Linear(spec["in"], spec["out"], spec["bias"])
    if t == "seq":
        return nn.Sequential(*(_layer(s) for s in spec["layers"]))
    return {"relu": nn.ReLU, "flatten": nn.Flatten, "identity": nn.Identity}[t]()


def _out_shape(spec: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Output shape of one layer on ``shape``, None when the layer does not apply there."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = _layer(spec)(torch.zeros(1, *shape))
    except (RuntimeError, ValueError, NotImplementedError):
        return None
    return tuple(out.shape[1:]) if out.numel() > 0 else None


def _draw_sequential(rng: np.random.Generator) -> dict[str, Any]:
    c, h = int(rng.choice([1, 1, 1, 2])), int(rng.integers(6, 15))
    shape: tuple[int, ...] = (c, h, h if rng.random() < 0.8 else int(rng.integers(6, 15)))
    k = int(rng.integers(2, 11))
    layers: list[dict[str, Any]] = [{"t": "relu"}] if rng.random() < 0.25 else []
    input_shape = shape
    for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
        for _try in range(10):
            spec = _conv_spec(rng, shape[0]) if rng.random() < 0.7 else _pool_spec(rng)
            out = _out_shape(spec, shape)
            if out is not None and math.prod(out) <= 400:
                layers.append(spec)
                shape = out
                break
        if rng.random() < 0.6:
            layers.append({"t": "relu"})
        if rng.random() < 0.05:
            layers.append({"t": "identity"})
    layers.append({"t": "flatten"})
    width = math.prod(shape)
    for _ in range(int(rng.integers(0, 3))):
        out_w = int(rng.integers(3, 17))
        layers.append({"t": "linear", "in": width, "out": out_w, "bias": bool(rng.random() < 0.9)})
        width = out_w
        if rng.random() < 0.85:
            layers.append({"t": "relu"})
    layers.append({"t": "linear", "in": width, "out": k, "bias": bool(rng.random() < 0.9)})
    if rng.random() < 0.05:
        layers.append({"t": "relu"})
    if rng.random() < 0.1 and len(layers) > 2:
        a = int(rng.integers(0, len(layers) - 1))
        b = int(rng.integers(a + 1, len(layers) + 1))
        layers[a:b] = [{"t": "seq", "layers": layers[a:b]}]
    return {"kind": "sequential", "input_shape": list(input_shape), "num_classes": k, "layers": layers}


def draw_arch(rng: np.random.Generator) -> dict[str, Any]:
    """A JSON-able architecture spec (kind sequential 55 %, ode 25 %, resnet 15 %, mlp 5 %)."""
    from models.solver import FIXED_METHODS

    kind = str(rng.choice(["sequential", "ode", "resnet", "mlp"], p=[0.55, 0.25, 0.15, 0.05]))
    if kind == "sequential":
        spec = _draw_sequential(rng)
    else:
        size, k = int(rng.integers(8, 15)), int(rng.integers(2, 11))
        spec = {"kind": kind, "input_size": size, "num_classes": k}
        if kind == "mlp":
            spec["hidden"] = [int(rng.integers(2, 17)) for _ in range(int(rng.integers(0, 3)))]
        else:
            feat = (size // 2) // 2  # the stem's two stride-2 convolutions (kernel 4, padding 1)
            spec.update(channels=int(rng.integers(1, 4)), time_channel=bool(rng.random() < 0.5),
                        head_pool=int(rng.choice([p for p in range(1, feat + 1) if feat % p == 0])))
        if kind == "ode":
            adaptive = rng.random() < 0.03
            spec.update(hidden=int(rng.integers(1, 5)) if rng.random() < 0.15 else spec["channels"],
                        method=str(rng.choice(("dopri5", "bosh3") if adaptive else FIXED_METHODS)),
                        steps=int(rng.integers(1, 4)), T=round(float(rng.uniform(0.25, 2.0)), 3))
        elif kind == "resnet":
            spec.update(n_blocks=int(rng.integers(1, 4)), tied=bool(rng.random() < 0.3),
                        step=1.0 if rng.random() < 0.4 else round(float(rng.uniform(0.2, 1.0)), 3))
    spec.update(weight_seed=int(rng.integers(2**31)), gain=[1.0, round(float(rng.uniform(1.0, 3.0)), 3)],
                bias_scale=round(float(rng.uniform(0.0, 0.5)), 3))
    return spec


def build_model(spec: dict[str, Any]) -> nn.Module:
    """The model of an architecture spec, in eval mode (weights from ``spec["weight_seed"]``)."""
    from models import MLP, ODENet, ResNet, SolverConfig, VerifiableField

    torch.manual_seed(spec["weight_seed"])
    kind = spec["kind"]
    common = {"input_size": spec.get("input_size", 28), "num_classes": spec["num_classes"]}
    if kind == "sequential":
        model: nn.Module = nn.Sequential(*(_layer(s) for s in spec["layers"]))
        model.input_shape = tuple(spec["input_shape"])  # type: ignore[assignment]
        model.num_classes = spec["num_classes"]  # type: ignore[assignment]
    elif kind == "mlp":
        model = MLP(hidden=tuple(spec["hidden"]), **common)
    elif kind == "ode":
        fixed = spec["method"] not in ("dopri5", "bosh3")
        solver = (SolverConfig.fixed(spec["method"], spec["steps"], spec["T"]) if fixed
                  else SolverConfig(spec["method"], rtol=1e-2, atol=1e-2, T=spec["T"]))
        model = ODENet(spec["channels"], solver=solver, time_channel=spec["time_channel"],
                       head_pool=spec["head_pool"], **common)
        if spec["hidden"] != spec["channels"]:
            model.block.field = VerifiableField(spec["channels"], spec["hidden"], spec["time_channel"])
    else:
        model = ResNet(spec["channels"], spec["n_blocks"], spec["step"], spec["tied"],
                       time_channel=spec["time_channel"], head_pool=spec["head_pool"], **common)
    g = torch.Generator().manual_seed(spec["weight_seed"] + 1)
    lo, hi = spec["gain"]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(lo + (hi - lo) * float(torch.rand((), generator=g)))
                if m.bias is not None:
                    m.bias.copy_(spec["bias_scale"] * torch.randn(m.bias.shape, generator=g))
    return model.eval()


# ---- images, ε ------------------------------------------------------------------------------
def _mnist() -> torch.Tensor | None:
    if not _MNIST:
        try:
            from models.data import load_dataset

            _MNIST.append(load_dataset("mnist-t10k", "test")[0])
        except Exception:  # noqa: BLE001 - no data: random images only (recorded per trial)
            _MNIST.append(None)
    return _MNIST[0]


def make_image(spec: dict[str, Any], shape: Sequence[int]) -> torch.Tensor:
    """(1, C, H, W) image in [0, 1] of an image spec."""
    c, h, w = shape
    g = torch.Generator().manual_seed(spec["seed"])
    if spec["src"] == "mnist":
        data = _mnist()
        assert data is not None
        planes = []
        for j in range(c):
            img = data[(spec["index"] + 997 * j) % len(data)][:1].unsqueeze(0)
            if spec["op"] == "crop":
                top, left = (int(torch.randint(0, 29 - n, (), generator=g)) for n in (h, w))
                img = img[..., top:top + h, left:left + w]
            else:
                img = F.interpolate(img, size=(h, w), mode="area")
            planes.append(img)
        return torch.cat(planes, 1).clamp(0, 1).contiguous()
    u = torch.rand(1, c, h, w, generator=g)
    if spec["src"] == "sparse":
        return torch.where(torch.rand(1, c, h, w, generator=g) < 0.6, torch.zeros(()), u)
    if spec["src"] == "binary":
        return (u < 0.3).float()
    return 0.3 + 0.4 * u if spec["src"] == "mid" else u


def _spec_rows(y: int, k: int) -> torch.Tensor:
    """C (K-1, K): rows e_y − e_j, j ≠ y in class order (built here, not by the code under test)."""
    eye = torch.eye(k)
    return torch.stack([eye[y] - eye[j] for j in range(k) if j != y])


def first_order_radius(model: nn.Module, x: torch.Tensor, C: torch.Tensor, norm: str) -> float:
    """min_j m_j(x) / ‖∇m_j(x)‖_dual: the radius a linearisation predicts (a scale for ε)."""
    z = x.expand(C.shape[0], *x.shape[1:]).clone().requires_grad_(True)
    m = (model(z) * C).sum(1)
    (grad,) = torch.autograd.grad(m.sum(), z)
    dual = grad.flatten(1).abs().sum(1) if norm == "inf" else grad.flatten(1).norm(dim=1)
    r = (m.detach().clamp(min=0) / dual.clamp(min=1e-12)).min()
    return float(r) if math.isfinite(float(r)) and float(r) > 0 else (0.05 if norm == "inf" else 0.5)


# ---- the attack -----------------------------------------------------------------------------
class _Best:
    """Smallest margin found per row, and the point that attained it."""

    def __init__(self, model: nn.Module, C: torch.Tensor, x: torch.Tensor) -> None:
        self.model, self.C = model, C
        self.value = torch.full((C.shape[0],), math.inf)
        self.point = x.expand(C.shape[0], *x.shape[1:]).clone()
        self.count = 0

    def score(self, z: torch.Tensor, margins: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            m = margins if margins is not None else self.model(z) @ self.C.T  # (B, K-1)
            val, idx = m.min(0)
            better = val < self.value
            self.value = torch.where(better, val, self.value)
            self.point[better] = z[idx[better]]
            self.count += z.shape[0]

    def finish(self, x: torch.Tensor, eps: float, norm: str) -> None:
        """Check that every point lies in the set; re-score each alone (a batched adaptive solve
        shares its steps across the batch, so only a lone evaluation is the model's margin)."""
        d = (self.point - x).flatten(1)
        size = d.abs().amax(1) if norm == "inf" else d.norm(dim=1)
        if bool((size > eps * (1 + 1e-5) + 1e-6).any()) or self.point.min() < 0 or self.point.max() > 1:
            raise AssertionError(f"attack left the perturbation set: size {float(size.max())} > eps {eps}")
        with torch.no_grad():
            self.value = torch.stack([(self.model(p[None]) @ self.C[i])[0] for i, p in enumerate(self.point)])


def _to_set(x: torch.Tensor, z: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "inf":
        return torch.minimum(torch.maximum(z, (x - eps).clamp(0, 1)), (x + eps).clamp(0, 1))
    d = z - x
    n = d.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, *[1] * (x.dim() - 1))
    return (x + d * (eps / n).clamp(max=1.0)).clamp(0, 1)  # clipping to [0, 1] stays in the ball


def _random_points(x: torch.Tensor, eps: float, norm: str, n: int, g: torch.Generator) -> torch.Tensor:
    shape = (n, *x.shape[1:])
    if norm == "inf":
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        corner = torch.where(torch.rand(shape, generator=g) < 0.5, lo, hi)
        uniform = lo + (hi - lo) * torch.rand(shape, generator=g)
        return torch.cat([corner[: n // 2], uniform[n // 2:]])
    d = torch.randn(shape, generator=g)
    d = d / d.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, *[1] * (x.dim() - 1))
    r = torch.ones(n)
    r[n // 2:] = torch.rand(n - n // 2, generator=g) ** (1.0 / x[0].numel())
    return (x + eps * (1 - 1e-6) * r.view(-1, *[1] * (x.dim() - 1)) * d).clamp(0, 1)


def attack(model: nn.Module, x: torch.Tensor, C: torch.Tensor, eps: float, norm: str, seed: int) -> _Best:
    """The clean point, sampled points and a per-margin PGD inside the ε-ball ∩ [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    best = _Best(model, C, x)
    best.score(x)
    if eps == 0:
        best.finish(x, eps, norm)
        return best
    best.score(_random_points(x, eps, norm, SAMPLES, g))
    rows = C.shape[0]
    target = torch.arange(rows).repeat(RESTARTS)
    z = torch.cat([x.expand(rows, *x.shape[1:]), _random_points(x, eps, norm, rows * (RESTARTS - 1), g)])
    alpha = 2.5 * eps / PGD_STEPS
    for _ in range(PGD_STEPS):
        z = z.detach().requires_grad_(True)
        m = model(z) @ C.T
        best.score(z.detach(), m.detach())
        (grad,) = torch.autograd.grad(m.gather(1, target.view(-1, 1)).sum(), z)
        with torch.no_grad():
            if norm == "inf":
                step = grad.sign()
            else:
                step = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, *[1] * (x.dim() - 1))
            z = _to_set(x, z - alpha * step, eps, norm)
    best.score(z.detach())
    best.finish(x, eps, norm)
    return best


def check(bounds: torch.Tensor, found: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(slack, violated) per margin row: slack = found − bound; violated when found < bound − tol.

    ``tol = TOL·(1 + |bound| + scale)``, scale = max |logit| at the clean point (see the module
    docstring). A NaN bound is the caller's to reject; +inf is always violated.
    """
    tol = TOL * (1.0 + bounds.abs() + scale)
    slack = found - bounds
    return slack, (slack < -tol) | (bounds == math.inf)


# ---- one trial ------------------------------------------------------------------------------
def draw_trial(seed: int, trial: int) -> dict[str, Any]:
    """Everything a trial is made of except ε (which depends on the model), from its own RNG."""
    rng = np.random.default_rng([seed, trial])
    arch = draw_arch(rng)
    src = str(rng.choice(["mnist", "uniform", "sparse", "binary", "mid"], p=[0.6, 0.1, 0.15, 0.1, 0.05]))
    image = {"src": src, "seed": int(rng.integers(2**31)), "index": int(rng.integers(2000)),
             "op": str(rng.choice(["crop", "down"]))}
    return {"seed": seed, "trial": trial, "arch": arch, "image": image, "norm": str(rng.choice(["inf", "2"])),
            "eps_zero": bool(rng.random() < 0.04), "eps_log10_rel": float(rng.uniform(-2.0, 1.3)),
            "attack_seed": int(rng.integers(2**31))}


def _bound(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, method: str,
           engine: str, res: dict[str, Any]) -> torch.Tensor:
    """Margin lower bounds (K-1,) through :class:`verify.certify.Certifier`; records the engine used."""
    from verify.certify import Certifier

    res["stage"] = "init"
    cert = Certifier(model, norm, method, 1, x, None, engine)
    res.update(stage="bound", used=cert.engine)
    return cert.margins(x, y, eps)[0].detach().float()


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"


def run_trial(seed: int, trial: int, alpha_every: int = 20, bound_shift: float = 0.0,
              eps: float | None = None) -> dict[str, Any]:
    """One trial's record (see the module docstring).

    Args:
        seed, trial: the trial's RNG is ``default_rng([seed, trial])``.
        alpha_every: alpha-crown runs when ``trial % alpha_every == 0`` (0: never).
        bound_shift: added to every bound before the check (tests: a raised bound must be flagged).
        eps: override the drawn ε.
    """
    start = time.perf_counter()
    t = draw_trial(seed, trial)
    if t["image"]["src"] == "mnist" and _mnist() is None:
        t["image"]["src"] = "sparse"
    model = build_model(t["arch"])
    shape = tuple(getattr(model, "input_shape"))
    x = make_image(t["image"], shape)
    norm = t["norm"]
    with torch.no_grad():
        logits = model(x)[0]
    y = int(logits.argmax())
    C = _spec_rows(y, logits.numel())
    r0 = first_order_radius(model, x, C, norm)
    if eps is None:
        cap = 1.0 if norm == "inf" else math.sqrt(x.numel())  # the whole box
        eps = 0.0 if t["eps_zero"] else float(min(max(r0 * 10 ** t["eps_log10_rel"], 1e-5), cap))
    best = attack(model, x, C, eps, norm, t["attack_seed"])
    scale = float(logits.abs().max())
    rec: dict[str, Any] = {**t, "eps": eps, "r0": r0, "label": y, "scale": scale,
                           "clean_margins": (C @ logits).tolist(), "found": best.value.tolist(),
                           "points": best.count, "attack_seconds": time.perf_counter() - start, "methods": {}}
    for method, engine in METHODS:
        if method == "alpha-crown" and not (alpha_every and trial % alpha_every == 0):
            continue
        key = f"{method}/{engine}"
        t0 = time.perf_counter()
        res: dict[str, Any] = {"method": method, "engine": engine}
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                bounds = _bound(model, x, torch.tensor([y]), eps, norm, method, engine, res)
        except Exception as err:  # noqa: BLE001 - every failure is recorded, never a pass
            refused = any(c.__name__ in REFUSALS for c in type(err).__mro__)
            res.update(status="refused" if refused else "crashed", error=_error(err))
        else:
            bounds = bounds + bound_shift
            res.update(bounds=bounds.tolist())
            if bounds.shape != best.value.shape or torch.isnan(bounds).any():
                res.update(status="invalid", error=f"bounds of shape {tuple(bounds.shape)} / NaN")
            else:
                slack, bad = check(bounds, best.value, scale)
                res.update(status="violated" if bool(bad.any()) else "checked", slack=float(slack.min()))
                if bad.any():
                    res["violations"] = [{"row": int(i), "j": [j for j in range(C.shape[1]) if j != y][int(i)],
                                          "bound": float(bounds[i]), "attacked_margin": float(best.value[i]),
                                          "point": best.point[i].flatten().tolist()} for i in bad.nonzero()[:, 0]]
        res["seconds"] = time.perf_counter() - t0
        rec["methods"][key] = res
    rec["seconds"] = time.perf_counter() - start
    return rec


# ---- campaign: resumable runs, workers, summary ---------------------------------------------
def fingerprint() -> str:
    """sha256 (12 hex) of the code under test and of :data:`CAMPAIGN`."""
    h = hashlib.sha256(CAMPAIGN.encode())
    for p in (p for d in ("verify", "lipbound", "models") for p in sorted((ROOT / d).rglob("*.py"))):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def quiet() -> None:
    """Silence auto_LiRPA's logger and the tracing warnings; one thread per process."""
    from verify._lirpa_compat import import_auto_lirpa

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.showwarning = lambda *args, **kwargs: None  # its import resets the filters to "once"
        import_auto_lirpa()
    warnings.simplefilter("ignore")
    logging.getLogger("auto_LiRPA").setLevel(logging.ERROR)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("auto_LiRPA"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _job(args: tuple[int, int, int]) -> dict[str, Any]:
    quiet()
    return run_trial(*args)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interrupted run: redone
                    continue


def run_campaign(trials: Sequence[int], seed: int, out: Path, jobs: int = 1, alpha_every: int = 20,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the trials; returns their records under the current code fingerprint."""
    out.mkdir(parents=True, exist_ok=True)
    path, fp = out / "trials.jsonl", fingerprint()
    done = {r["trial"]: r for r in read_records(path) if r.get("seed") == seed and r.get("fingerprint") == fp
            and r.get("alpha_every") == alpha_every}
    todo = [i for i in trials if i not in done]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="soundness", unit="trial", file=sys.stderr)
    with path.open("a") as fh:
        def keep(rec: dict[str, Any]) -> None:
            rec.update(fingerprint=fp, alpha_every=alpha_every, finished_at=time.time(), jobs=jobs)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            done[rec["trial"]] = rec
            if bar is not None:
                bar.update(1)

        args = [(seed, i, alpha_every) for i in todo]
        if jobs > 1 and todo:
            with mp.get_context("spawn").Pool(jobs) as pool:
                for rec in pool.imap_unordered(_job, args, chunksize=4):
                    keep(rec)
        else:
            quiet()
            for a in args:
                keep(_job(a))
    if bar is not None:
        bar.close()
    return [done[i] for i in trials]


def _reason(err: str) -> str:
    """An error message with its numbers, shapes and layer names blurred, to group alike errors."""
    return re.sub(r"\d+(\.\d+)?", "#", re.sub(r"layer [\w.]+ ", "layer _ ", err))[:160]


def _leaves(layers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [leaf for spec in layers for leaf in (_leaves(spec["layers"]) if spec["t"] == "seq" else [spec])]


def features(rec: dict[str, Any]) -> list[str]:
    """The options of a trial's network that a verifier may mishandle (to classify violations)."""
    arch, norm = rec["arch"], rec["norm"]
    if arch["kind"] != "sequential":
        tags = [arch["kind"]]
        if arch.get("time_channel"):
            tags.append("time channel")
        if arch["kind"] == "ode" and arch["hidden"] != arch["channels"]:
            tags.append("hidden != channels")
        if arch["kind"] == "ode" and arch["method"] in ("dopri5", "bosh3"):
            tags.append("adaptive solver")
        if arch.get("head_pool", 1) > 1:
            tags.append("avgpool head")
        return tags
    leaves = _leaves(arch["layers"])
    tags = []
    if norm == "2" and leaves[0]["t"] in ("relu", "maxpool", "avgpool", "flatten"):
        tags.append(f"L2 with {leaves[0]['t']} on the input")
    checks = [("conv", lambda v: v["mode"] != "zeros", "non-zero padding mode"),
              ("conv", lambda v: v["g"] > 1, "conv groups"), ("conv", lambda v: v["d"] > 1, "conv dilation"),
              ("conv", lambda v: v["p"] == "same", "padding 'same'"),
              ("avgpool", lambda v: v["s"] < v["k"], "avgpool stride < kernel"),
              ("maxpool", lambda v: v["s"] < v["k"], "maxpool stride < kernel"),
              ("avgpool", lambda v: v["p"] > 0, "avgpool padding"),
              ("avgpool", lambda v: not v["cip"] and v["p"] > 0, "avgpool count_include_pad=False"),
              ("maxpool", lambda v: v["p"] > 0, "maxpool padding"), ("maxpool", lambda v: v["d"] > 1, "maxpool dilation"),
              ("avgpool", lambda v: v["ceil"], "ceil_mode"), ("maxpool", lambda v: v["ceil"], "ceil_mode"),
              ("avgpool", lambda v: True, "avgpool"), ("maxpool", lambda v: True, "maxpool")]
    for t, test, tag in checks:
        if tag not in tags and any(v["t"] == t and test(v) for v in leaves):
            tags.append(tag)
    return tags


def _kind(rec: dict[str, Any], used: str) -> str:
    """Known bug (1) / (2) of the dense engine, (3) an adaptive solver certified, else the
    suspicious options the network has."""
    tags = features(rec)
    if used == "dense" and "non-zero padding mode" in tags:
        return "(1) dense engine, non-zero padding mode"
    if used == "dense" and any(t.startswith("L2 with relu") for t in tags):
        return "(2) dense engine, L2 with ReLU on the input"
    if "adaptive solver" in tags:
        return f"(3) adaptive solver certified ({used})"
    return f"{used}: " + (", ".join(tags) or "no listed option")


def summarize(records: Sequence[dict[str, Any]], wall: float | None, max_records: int = 1000) -> dict[str, Any]:
    """Counts per (method, engine, norm) and per architecture, refusal reasons, violations, worst slack.

    ``wall`` is used when a record lacks its ``finished_at`` time; else wall time is the span from
    the first trial's start to the last trial's end (an over-estimate across interrupted runs).
    """
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    reasons: dict[str, Counter] = defaultdict(Counter)
    coverage: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    violations = []
    for rec in records:
        for key, res in rec["methods"].items():
            row = rows.setdefault((res["method"], res["engine"], rec["norm"]), {
                "method": res["method"], "engine": res["engine"], "norm": rec["norm"], "trials": 0, "checked": 0,
                "margins_checked": 0, "violated": 0, "refused": 0, "crashed": 0, "invalid": 0, "used": Counter(),
                "worst_slack": math.inf, "worst_at": None, "slacks": []})
            status = res["status"]
            row["trials"] += 1
            row[status] += 1
            coverage[key][rec["arch"]["kind"]][status] += 1
            if status not in ("checked", "violated"):
                where = res.get("used", res.get("stage"))
                reasons[f"{key} {rec['norm']}"][f"{status} ({where}): {_reason(res['error'])}"] += 1
                continue
            if status == "violated":
                row["checked"] += 1
            row["margins_checked"] += len(res["bounds"])
            row["used"][res["used"]] += 1
            row["slacks"].append(res["slack"])
            if res["slack"] < row["worst_slack"]:
                row["worst_slack"], row["worst_at"] = res["slack"], rec["trial"]
            if status == "violated":
                kind = _kind(rec, res["used"])
                g = groups.setdefault((res["method"], res["engine"], res["used"], kind), {
                    "method": res["method"], "engine": res["engine"], "used": res["used"], "kind": kind,
                    "trials": 0, "margins": 0, "worst_slack": 0.0, "examples": []})
                g["trials"] += 1
                g["margins"] += len(res["violations"])
                g["worst_slack"] = min(g["worst_slack"], res["slack"])
                if len(g["examples"]) < 8:
                    g["examples"].append(rec["trial"])
                violations += [{"seed": rec["seed"], "trial": rec["trial"], "kind": kind, "features": features(rec),
                                "arch": rec["arch"], "image": rec["image"], "norm": rec["norm"], "eps": rec["eps"],
                                "label": rec["label"], "method": res["method"], "engine": res["engine"],
                                "used": res["used"], **{k: v[k] for k in ("row", "j", "bound", "attacked_margin")}}
                               for v in res["violations"]]
    table = []
    for row in sorted(rows.values(), key=lambda r: (METHODS.index((r["method"], r["engine"])), r["norm"])):
        sl = sorted(row.pop("slacks"))
        row["median_slack"] = sl[len(sl) // 2] if sl else None
        row["worst_slack"] = None if math.isinf(row["worst_slack"]) else row["worst_slack"]
        row["used"] = dict(row["used"])
        table.append(row)
    checked = [r for r in table if r["worst_slack"] is not None]
    if records and all("finished_at" in r for r in records):  # first trial's start to last trial's end
        wall = max(r["finished_at"] for r in records) - min(r["finished_at"] - r["seconds"] for r in records)
    return {"trials": len(records), "seeds": sorted({r["seed"] for r in records}),
            "fingerprints": sorted({r.get("fingerprint", "") for r in records}),
            "alpha_every": sorted({r.get("alpha_every") for r in records}),
            "violations": len(violations), "violating_trials": sorted({(v["seed"], v["trial"]) for v in violations}),
            "worst_slack": min((r["worst_slack"] for r in checked), default=None),
            "trial_seconds": sum(r["seconds"] for r in records), "wall_seconds": wall,
            "architectures": dict(Counter(r["arch"]["kind"] for r in records)),
            "norms": dict(Counter(r["norm"] for r in records)), "tolerance": f"{TOL}*(1+|bound|+max|logit|)",
            "attack": {"samples": SAMPLES, "pgd_steps": PGD_STEPS, "restarts": RESTARTS},
            "table": table, "coverage": {k: {a: dict(c) for a, c in v.items()} for k, v in coverage.items()},
            "violation_groups": sorted(groups.values(), key=lambda g: -g["trials"]),
            "refused": {k: dict(v) for k, v in reasons.items()},
            "violation_records": violations[:max_records], "violation_records_truncated": len(violations) > max_records}


def markdown(s: dict[str, Any]) -> str:
    """The summary as a Markdown report."""
    fmt = lambda v: "–" if v is None else f"{v:.3g}"  # noqa: E731
    lines = [f"# Soundness campaign: {s['trials']} trials, seed(s) {s['seeds']}, code {s['fingerprints']}", "",
             f"Violations: **{s['violations']}** margins in {len(s['violating_trials'])} trials. Worst slack of a "
             f"checked bound {fmt(s['worst_slack'])}. Trial time {s['trial_seconds']:.0f} s (sum over workers), "
             f"wall {fmt(s['wall_seconds'])} s. Architectures {s['architectures']}; norms {s['norms']}; alpha-crown on "
             f"trials i % {s['alpha_every']} == 0; tolerance {s['tolerance']}; attack {s['attack']} plus the clean "
             "point.", "",
             "| method | engine | norm | trials | checked | margins | violated | refused | crashed | invalid "
             "| engine used | worst slack (trial) | median slack |", "|" + "---|" * 13]
    for r in s["table"]:
        used = ", ".join(f"{k} {v}" for k, v in r["used"].items())
        lines.append(f"| {r['method']} | {r['engine']} | {r['norm']} | {r['trials']} | {r['checked']} | "
                     f"{r['margins_checked']} | {r['violated']} | {r['refused']} | {r['crashed']} | {r['invalid']} | "
                     f"{used} | {fmt(r['worst_slack'])} ({r['worst_at']}) | {fmt(r['median_slack'])} |")
    kinds = sorted(s["architectures"])
    lines += ["", "## Coverage by architecture: checked (violated) / trials", "",
              "| method/engine | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 1)]
    for key, per in s["coverage"].items():
        cells = []
        for k in kinds:
            c = per.get(k, {})
            n, v = sum(c.values()), c.get("violated", 0)
            cells.append(f"{c.get('checked', 0) + v} ({v}) / {n}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if s["violation_groups"]:
        lines += ["", "## Violations by method, engine used and kind", "",
                  "| method | engine (used) | kind | trials | margins | worst slack | example trials |", "|" + "---|" * 7]
        for g in s["violation_groups"]:
            lines.append(f"| {g['method']} | {g['engine']} ({g['used']}) | {g['kind']} | {g['trials']} | "
                         f"{g['margins']} | {fmt(g['worst_slack'])} | {', '.join(map(str, g['examples']))} |")
    lines += ["", "## Refused / crashed, by reason (engine or stage)", ""]
    for key, reasons in sorted(s["refused"].items()):
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"- `{key}` ×{n}: {reason}")
    lines += ["", f"Replay a trial: `python -m benchmarks.soundness --seed SEED --replay TRIAL` (the JSON has every "
              "violating margin's architecture, image, ε, norm, bound and attacked margin)."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soundness", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10000)
    p.add_argument("--start", type=int, default=0, help="first trial index")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--alpha-every", type=int, default=20, help="alpha-crown on trials with i %% N == 0 (0: never)")
    p.add_argument("--out", default="runs/soundness")
    p.add_argument("--replay", type=int, help="run this one trial and print its record")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/soundness.*")
    p.add_argument("--report", action="store_true", help="only summarise the records already in --out")
    a = p.parse_args(argv)
    if a.replay is not None:
        quiet()
        print(json.dumps(run_trial(a.seed, a.replay, a.alpha_every), indent=1))
        return 0
    wall = time.perf_counter()
    trials = range(a.start, a.start + a.trials)
    if a.report:
        latest = {r["trial"]: r for r in read_records(Path(a.out) / "trials.jsonl") if r.get("seed") == a.seed}
        records = [latest[i] for i in trials if i in latest]
    else:
        records = run_campaign(trials, a.seed, Path(a.out), a.jobs, a.alpha_every)
    s = summarize(records, None if a.report else time.perf_counter() - wall)
    md = markdown(s)
    if not a.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soundness.json").write_text(json.dumps(s, indent=1))
        (RESULTS / "soundness.md").write_text(md)
    print(md)
    return 1 if s["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
