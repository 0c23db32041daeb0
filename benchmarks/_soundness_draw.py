"""Random trials of the soundness campaign (``benchmarks/soundness.py``): architectures,
weights, images and the first-order radius that scales ε. Every draw comes from a NumPy
generator the caller seeds per trial, so a trial replays alone."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
def mnist() -> torch.Tensor | None:
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
        data = mnist()
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


def spec_rows(y: int, k: int) -> torch.Tensor:
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
