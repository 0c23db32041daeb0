"""The field's exchange formats: a model as ONNX and its robustness properties as VNN-LIB.

:func:`export_benchmark` lays a model out as a VNN-COMP benchmark: ``onnx/<name>.onnx`` (the
unrolled static network of :func:`verify.unroll.static_module`, fixed-step solver steps as
plain operators, input (1, C, H, W) in [0, 1], logits out), one ``vnnlib/<name>_<i>_eps<ε>.vnnlib``
per example (the ε-box clipped to [0, 1] and the unsafe region "another class ≥ the true
class", :mod:`verify._vnnlib`), and ``instances.csv`` (onnx path, vnnlib path, timeout in
seconds per row, paths relative to the benchmark folder, no header), so that α,β-CROWN,
NNV, Marabou and the other VNN-COMP verifiers can check the project's ODE-nets.

References:
    Brix et al., "The Fifth International Verification of Neural Networks Competition
    (VNN-COMP 2024)", arXiv 2024 (benchmark layout).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._errors import CertifyError
from ._lower import Lowered, lower
from ._vnnlib import VnnlibProperty as VnnlibProperty
from ._vnnlib import read_vnnlib as read_vnnlib
from ._vnnlib import robustness_property, write_vnnlib
from .unroll import static_module

#: ONNX operator set of the exported graphs.
OPSET = 17
#: default per-instance timeout written to instances.csv (seconds).
TIMEOUT = 300.0


@dataclasses.dataclass(frozen=True)
class BenchmarkExport:
    """What :func:`export_benchmark` wrote.

    Attributes:
        onnx: the network file.
        properties: one VNN-LIB file per exported example.
        instances: the instances.csv file.
        indices: the held-out index of each exported example.
        skipped: indices left out because the model misclassifies them.
    """

    onnx: Path
    properties: tuple[Path, ...]
    instances: Path
    indices: tuple[int, ...]
    skipped: tuple[int, ...]


def export_onnx(model: nn.Module | Lowered, path: str | os.PathLike[str]) -> Path:
    """Write the model's unrolled static network as ONNX (input "input" (1, C, H, W), output "logits").

    Raises:
        UnsupportedLayerError: a model the lowering refuses (e.g. an adaptive solver).
    """
    ir = model if isinstance(model, Lowered) else lower(model.eval())
    net = static_module(ir).eval()
    x = torch.zeros(1, *ir.input_shape, dtype=ir.dtype, device=ir.device)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # torch's TorchScript exporter is deprecated in favour of torch.export, which needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["logits"])
    return path


def _eps_text(eps: float) -> str:
    return f"{eps:g}".replace("-", "m")


def export_benchmark(model: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor, eps: float,
                     out: str | os.PathLike[str], timeout: float = TIMEOUT,
                     indices: tuple[int, ...] | None = None) -> BenchmarkExport:
    """Write ``model`` and an L∞ robustness property per correctly classified example as a VNN-COMP benchmark.

    Args:
        model: a classifier the lowering accepts, in eval mode.
        name: stem of the ONNX and property files.
        x: (N, C, H, W) in [0, 1].
        y: (N,) labels.
        eps: the L∞ radius (> 0) of every property.
        out: the benchmark folder (created).
        timeout: seconds per instance in instances.csv.
        indices: the examples' indices in their data set (default 0..N−1), for the file names.

    Returns:
        a :class:`BenchmarkExport`.

    Raises:
        CertifyError: ε or timeout not a positive number, shapes that disagree, a bad name.
        UnsupportedLayerError: a model the lowering refuses.
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise CertifyError(f"eps must be a finite number > 0, got {eps!r}")
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise CertifyError(f"timeout must be a finite number > 0, got {timeout!r}")
    if not name or any(c in name for c in "/\\,"):
        raise CertifyError(f"name {name!r} must be a non-empty file stem without '/', '\\' or ','")
    if x.dim() != 4 or y.shape != x.shape[:1]:
        raise CertifyError(f"x must be (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    indices = tuple(range(x.shape[0])) if indices is None else tuple(indices)
    out = Path(out)
    (out / "vnnlib").mkdir(parents=True, exist_ok=True)
    ir = lower(model.eval())
    onnx_path = export_onnx(ir, out / "onnx" / f"{name}.onnx")
    with torch.no_grad():
        pred = model(x).argmax(1)
    props, kept, skipped, rows = [], [], [], []
    for k, idx in enumerate(indices):
        if int(pred[k]) != int(y[k]):
            skipped.append(idx)
            continue
        x0 = x[k].detach().double().cpu().numpy().reshape(-1)
        prop = robustness_property(np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1), int(y[k]), ir.num_classes)
        path = out / "vnnlib" / f"{name}_{idx}_eps{_eps_text(eps)}.vnnlib"
        write_vnnlib(path, prop, f"{name}: held-out example {idx}, label {int(y[k])}, L-inf eps {eps:g} "
                                 f"clipped to [0, 1]; inputs X_i in (C, H, W) row-major order")
        props.append(path)
        kept.append(idx)
        rows.append(f"onnx/{onnx_path.name},vnnlib/{path.name},{timeout:g}")
    instances = out / "instances.csv"
    instances.write_text("".join(r + "\n" for r in rows))
    return BenchmarkExport(onnx_path, tuple(props), instances, tuple(kept), tuple(skipped))


__all__ = ["OPSET", "TIMEOUT", "BenchmarkExport", "VnnlibProperty", "export_benchmark", "export_onnx",
           "read_vnnlib"]
