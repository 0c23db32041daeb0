"""LeNet-5 (the "classical" model of seed 000) and a small MLP for tests.

References:
    LeCun et al., "Gradient-based learning applied to document recognition", 1998.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Classifier


class LeNet5(Classifier):
    """conv5(6) -> pool -> conv5(16) -> pool -> 120 -> 84 -> classes, ReLU and max-pooling.

    Args:
        in_channels, input_size, num_classes: see :class:`~models.base.Classifier`
        (input_size must be 28).
    """

    arch = "lenet5"

    def __init__(self, in_channels: int = 1, input_size: int = 28, num_classes: int = 10) -> None:
        super().__init__(in_channels, input_size, num_classes)
        if input_size != 28:
            raise ValueError(f"LeNet5 is defined for 28x28 inputs, got {input_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "input_size": self.input_size, "num_classes": self.num_classes}


class MLP(Classifier):
    """Flatten -> [Linear -> ReLU]* -> Linear. ``hidden=()`` is a linear classifier.

    Args:
        hidden: widths of the hidden layers.
        in_channels, input_size, num_classes: see :class:`~models.base.Classifier`.
    """

    arch = "mlp"

    def __init__(
        self,
        hidden: tuple[int, ...] | list[int] = (64,),
        in_channels: int = 1,
        input_size: int = 28,
        num_classes: int = 10,
    ) -> None:
        super().__init__(in_channels, input_size, num_classes)
        self.hidden = tuple(int(h) for h in hidden)
        widths = [in_channels * input_size * input_size, *self.hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def config(self) -> dict[str, Any]:
        return {"hidden": list(self.hidden), "in_channels": self.in_channels,
                "input_size": self.input_size, "num_classes": self.num_classes}
