"""Base class shared by every classifier of the toolkit.

A :class:`Classifier` takes float32 NCHW images in [0, 1] and returns logits. It checks
its input (shape, channels, NaN) so that a wrong call fails with a clear message
instead of a shape error deep inside a convolution, and it can describe itself as a
JSON-serialisable config so a checkpoint can rebuild it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class ModelInputError(ValueError):
    """An input tensor that the model cannot classify (shape, channels, NaN)."""


class Classifier(nn.Module):
    """An image classifier with validated input and a rebuildable config.

    Subclasses set ``arch`` (the key in :data:`models.MODELS`), implement
    :meth:`_forward` and :meth:`config`.

    Args:
        in_channels: image channels C.
        input_size: image height = width.
        num_classes: number of logits.
    """

    arch: str = ""

    def __init__(self, in_channels: int = 1, input_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_size = input_size
        self.num_classes = num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Expected per-example shape (C, H, W)."""
        return (self.in_channels, self.input_size, self.input_size)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ModelInputError` unless ``x`` is a finite (N, C, H, W) batch.

        Args:
            x: candidate input.

        Raises:
            ModelInputError: wrong type, rank, channel count, spatial size, or NaN/inf values.
        """
        if not isinstance(x, torch.Tensor):
            raise ModelInputError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ModelInputError(
                f"{type(self).__name__} expects a batch of shape (N, {self.in_channels}, "
                f"{self.input_size}, {self.input_size}), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ModelInputError(
                f"{type(self).__name__} expects {self.in_channels} input channel(s), got {x.shape[1]}"
            )
        if tuple(x.shape[2:]) != (self.input_size, self.input_size):
            raise ModelInputError(
                f"{type(self).__name__} expects {self.input_size}x{self.input_size} images, "
                f"got {x.shape[2]}x{x.shape[3]}"
            )
        if not x.is_floating_point():
            raise ModelInputError(f"{type(self).__name__} expects floating-point input, got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ModelInputError(f"{type(self).__name__} got NaN or infinite input values")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch.

        Args:
            x: images, shape (N, C, H, W), values in [0, 1].

        Returns:
            logits, shape (N, num_classes).

        Raises:
            ModelInputError: see :meth:`check_input`.
        """
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable, so ``MODELS[arch](**config)`` rebuilds it."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def feature_size(input_size: int, downsample: int) -> int:
    """Spatial size after ``downsample`` stride-2 convolutions (kernel 4, padding 1)."""
    size = input_size
    for _ in range(downsample):
        size = math.floor((size + 2 - 4) / 2) + 1
    return size
