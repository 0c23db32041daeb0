"""GAINS's released MNIST Neural ODEs as models of this toolkit (``--model gains:PATH``).

GAINS (Zeqiri et al., ICLR 2023) publishes ODE-nets trained for certifiability and deployed
with a controlled adaptive solver. :func:`load_gains` reads one of its checkpoints
(``*.pth.tar``: a dict whose ``state_dict`` holds the network) with
``torch.load(weights_only=True)`` and rebuilds the network as a chain the verifier lowers:

* GAINS's ``Normalization((x − 0.1307) / 0.3081)`` as a frozen 1x1 convolution,
* the stem ``Conv(1→C, 5×5, stride 2)`` – ReLU – ``Conv(C→C, 5×5, stride 2)`` – ReLU,
* a :class:`~models.odenet.ODEBlock` whose field is ``ConcatConv`` – ReLU – ``ConcatConv`` – ReLU
  (:class:`~models.fields.ConcatConv2d`, time plane first as in GAINS), integrated on [0, 1] by
  the controlled adaptive solver GAINS names in the file (``dopri5_0.005_2a``:
  ``SolverConfig.cas("dopri5", atol=0.005)``) with its ``running_mean_step`` as the learned h0,
* the head: global average pool (``AvgPool2d`` over the 4x4 state), flatten, ``Linear(C→10)``.

Its logits equal GAINS's own forward (``tests/models/test_cas.py`` compares them with logits
GAINS's code computed, ``benchmarks/gains_reference.py``). GAINS integrates a batch on one
step sequence driven by the batch's mean error ratio; here each example follows its own, which
is GAINS's forward at batch size 1.

References:
    Zeqiri, Müller, Fischer, Vechev, "Efficient Certified Training and Robustness Verification
    of Neural ODEs", ICLR 2023.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fields import ConcatConv2d
from .odenet import ODEBlock, ODEClassifier
from .solver import SolverConfig

#: GAINS's MNIST normalisation.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
#: GAINS's controlled-adaptive ``--method`` names -> (pair, atol); rtol 0, factor 2. Its
#: ``dopri5_0.01_2a`` is defined twice in its ``model.py`` and the second definition (atol 0.001) wins.
GAINS_METHODS: dict[str, tuple[str, float]] = {
    "dopri5_0.005_2a": ("dopri5", 0.005),
    "dopri5_0.002_2a": ("dopri5", 0.002),
    "dopri5_0.001_2a": ("dopri5", 0.001),
    "dopri5_0.0001_2a": ("dopri5", 0.0001),
    "dopri5_0.01_2a": ("dopri5", 0.001),
    "bosh3_0.005_2a": ("bosh3", 0.005),
}
#: the configuration of every released model, assumed for a file whose name does not say.
DEFAULT_METHOD = "dopri5_0.005_2a"
_METHOD_IN_NAME = re.compile(r"method_([a-z0-9]+_[0-9.]+_[0-9.]+a)_")
#: GAINS's key -> this model's key.
_KEYS: dict[str, str] = {
    "net.1.weight": "stem.0.weight", "net.1.bias": "stem.0.bias",
    "net.3.weight": "stem.2.weight", "net.3.bias": "stem.2.bias",
    "net.5.running_mean_step": "block.running_mean_step",
    "net.5.odefunc.conv1._layer.weight": "block.field.0.conv.weight",
    "net.5.odefunc.conv1._layer.bias": "block.field.0.conv.bias",
    "net.5.odefunc.conv2._layer.weight": "block.field.2.conv.weight",
    "net.5.odefunc.conv2._layer.bias": "block.field.2.conv.bias",
    "net.8.weight": "head.2.weight", "net.8.bias": "head.2.bias",
}


class GainsODENet(ODEClassifier):
    """GAINS's ``ODENet_mini_MNIST`` as a chain: normalisation, stem, ODE block, head.

    Args:
        channels: state channels C (GAINS: 32).
        solver: the ODE block's solver (default GAINS's ``dopri5_0.005_2a`` with a learned h0).
        input_size: image side (GAINS: 28, a 4x4 state).
        num_classes: logits.
    """

    arch = "gains"

    def __init__(self, channels: int = 32, solver: SolverConfig | dict[str, Any] | None = None,
                 input_size: int = 28, num_classes: int = 10) -> None:
        super().__init__(1, input_size, num_classes)
        if isinstance(solver, dict):
            solver = SolverConfig.from_dict(solver)
        solver = solver or SolverConfig.cas("dopri5", atol=0.005)
        self.channels = channels
        self.normalize = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.normalize.weight.fill_(1.0 / MNIST_STD)
            self.normalize.bias.fill_(-MNIST_MEAN / MNIST_STD)
        self.normalize.requires_grad_(False)
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 5, 2), nn.ReLU(), nn.Conv2d(channels, channels, 5, 2), nn.ReLU())
        field = nn.Sequential(ConcatConv2d(channels, channels), nn.ReLU(), ConcatConv2d(channels, channels), nn.ReLU())
        self.block = ODEBlock(field, solver)
        side = ((input_size - 5) // 2 + 1 - 5) // 2 + 1
        self.head = nn.Sequential(nn.AvgPool2d(side), nn.Flatten(), nn.Linear(channels, num_classes))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(self.normalize(x))))

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "solver": self.solver.to_dict(), "input_size": self.input_size,
                "num_classes": self.num_classes}


def gains_solver(path: str | Path) -> tuple[str, SolverConfig]:
    """GAINS's method named in a checkpoint's file name (``..._method_dopri5_0.005_2a_...``) and its
    :class:`SolverConfig` (:data:`DEFAULT_METHOD` when the name does not say).

    Raises:
        CheckpointError: a method that is not one of GAINS's controlled adaptive solvers with factor 2.
    """
    from .train import CheckpointError

    m = _METHOD_IN_NAME.search(Path(path).name)
    name = m.group(1) if m else DEFAULT_METHOD
    if name not in GAINS_METHODS:
        raise CheckpointError(f"GAINS checkpoint {path} was trained with method {name!r}; supported: "
                              f"{', '.join(GAINS_METHODS)} (controlled adaptive solvers with step factor 2)")
    pair, atol = GAINS_METHODS[name]
    return name, SolverConfig.cas(pair, atol=atol)


def load_gains(path: str | Path, device: str | torch.device = "cpu") -> tuple[GainsODENet, dict[str, Any]]:
    """A GAINS MNIST checkpoint as a :class:`GainsODENet` in eval mode, and its metadata.

    Args:
        path: GAINS's ``*.pth.tar`` (e.g. ``../shared/peers/gains/models/pre-trained/MNIST/box...``).
        device: where the model goes.

    Returns:
        (model, metadata: ``arch``, ``config``, ``gains_checkpoint``, ``gains_method``, ``solver``,
        ``running_mean_step``, ``gains_epoch``, ``dataset`` (``mnist-t10k``: its held-out split,
        images 8000-9999, which GAINS never saw either), ``input_shape``, ``num_classes``).

    Raises:
        CheckpointError: no such file, or not GAINS's MNIST ODE-net (the message names the first
            missing key or mismatched shape).
        NotACheckpointError: a file ``torch.load(weights_only=True)`` cannot read as plain data.
    """
    from .train import CheckpointError, NotACheckpointError, _read_weights

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no GAINS checkpoint at {str(path)!r}")
    saved = _read_weights(path)
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise NotACheckpointError(f"{path} is not a GAINS checkpoint: expected a dict with a 'state_dict' of "
                                  f"tensors, got a {type(saved).__name__}"
                                  + (f" with keys {sorted(saved)[:6]}" if isinstance(saved, dict) else ""))
    method, solver = gains_solver(path)
    state = dict(state)
    state.setdefault("net.5.running_mean_step", torch.full((1,), 0.2))  # GAINS's own default for older files
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not GAINS's MNIST ODE-net (ODENet_mini_MNIST): no {missing[0]!r} in its "
                              f"state_dict (it has {sorted(state)[:4]}...)")
    conv = state["net.1.weight"]
    if conv.dim() != 4 or conv.shape[1] != 1:
        raise CheckpointError(f"{path}: only GAINS's MNIST models (1 input channel) are supported, "
                              f"its first convolution has shape {tuple(conv.shape)}")
    model = GainsODENet(channels=int(conv.shape[0]), solver=solver)
    ours = model.state_dict()
    mapped = {_KEYS[k]: v.detach().to(torch.float32).cpu() for k, v in state.items() if k in _KEYS}
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(ours[k].shape):
            gk = next(g for g, o in _KEYS.items() if o == k)
            raise CheckpointError(f"{path}: {gk!r} has shape {tuple(v.shape)}, GAINS's MNIST ODE-net needs "
                                  f"{tuple(ours[k].shape)}")
    model.load_state_dict({**ours, **mapped})
    epoch = saved.get("epoch")
    meta = {"arch": "gains", "config": model.config(), "gains_checkpoint": str(path), "gains_method": method,
            "solver": solver.describe(), "running_mean_step": float(model.block.running_mean_step),
            "gains_epoch": epoch if isinstance(epoch, int) else None, "dataset": "mnist-t10k",
            "input_shape": list(model.input_shape), "num_classes": model.num_classes}
    return model.to(device).eval(), meta
