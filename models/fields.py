"""Vector fields f(t, h) for ODE blocks and residual blocks.

Two families:

* :class:`VerifiableField` — conv–ReLU–conv, optional time channel, no normalisation, so
  bound propagation (auto_LiRPA) and Lipschitz bounds handle it exactly.
* :class:`ChenField` — GroupNorm–ReLU–ConcatConv twice and a final GroupNorm, the
  vector field of Chen et al. and of Carrara et al.'s code, for faithful reproductions.

Both count their evaluations in ``nfe`` (reset by the ODE block before each solve).

References:
    Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ConcatConv2d(nn.Module):
    """Convolution of ``[t·1, h]``: the time enters as a constant extra input plane.

    Args:
        in_channels: channels of h.
        out_channels: output channels.
        time_channel: prepend the time plane (else a plain convolution of h).
        kernel_size, stride, padding, bias: as for ``nn.Conv2d`` (default a 3x3, stride-1,
            zero-padded convolution that keeps the spatial size).
    """

    def __init__(self, in_channels: int, out_channels: int, time_channel: bool = True, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.time_channel = time_channel
        self.conv = nn.Conv2d(in_channels + int(time_channel), out_channels, kernel_size, stride=stride,
                              padding=padding, bias=bias)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Convolve; ``t`` is a scalar tensor, ``h`` has shape (N, C, H, W)."""
        if self.time_channel:
            h = torch.cat([torch.ones_like(h[:, :1]) * t, h], dim=1)
        return self.conv(h)


def call_field(field: nn.Module, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """f(t, h) of a vector field: a module taking ``(t, h)``, or an ``nn.Sequential`` of layers
    in which each :class:`ConcatConv2d` is handed t and every other layer only h."""
    if isinstance(field, nn.Sequential):
        for layer in field:
            h = layer(t, h) if isinstance(layer, ConcatConv2d) else layer(h)
        return h
    return field(t, h)


class VectorField(nn.Module):
    """Base class: ``forward(t, h)`` returns dh/dt and increments ``nfe``."""

    kind: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.nfe = 0

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """dh/dt at time ``t`` (scalar tensor) for state ``h`` (N, C, H, W)."""
        self.nfe += 1
        return self._f(t, h)

    def _f(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor arguments."""
        raise NotImplementedError


class VerifiableField(VectorField):
    """f(t, h) = conv2(relu(conv1(h))), 3x3 convolutions, optional time channel.

    Args:
        channels: state channels C.
        hidden: hidden channels (default C).
        time_channel: feed t as an extra input plane to both convolutions.
    """

    kind = "verifiable"

    def __init__(self, channels: int, hidden: int | None = None, time_channel: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.hidden = hidden or channels
        self.time_channel = time_channel
        self.conv1 = ConcatConv2d(channels, self.hidden, time_channel)
        self.act = nn.ReLU()
        self.conv2 = ConcatConv2d(self.hidden, channels, time_channel)

    def _f(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.conv2(t, self.act(self.conv1(t, h)))

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "hidden": self.hidden, "time_channel": self.time_channel}


def chen_groups(channels: int) -> int:
    """GroupNorm groups for the chen models: two channels per group, at most 32 groups.

    Chen et al. use GroupNorm(32, 64); keeping two channels per group at other widths
    matters: with one channel per group, the head's norm -> ReLU -> global pooling maps
    every channel to nearly the same value and the features carry no information.
    """
    return max(1, min(32, channels // 2))


class ChenField(VectorField):
    """GroupNorm–ReLU–ConcatConv, twice, then GroupNorm (Chen et al.'s ``ODEfunc``).

    Args:
        channels: state channels C.
        groups: GroupNorm groups (default :func:`chen_groups`).
    """

    kind = "chen"

    def __init__(self, channels: int, groups: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.groups = groups or chen_groups(channels)
        if channels % self.groups:
            raise ValueError(f"GroupNorm groups {self.groups} must divide channels {channels}")
        self.norm1 = nn.GroupNorm(self.groups, channels)
        self.conv1 = ConcatConv2d(channels, channels, True)
        self.norm2 = nn.GroupNorm(self.groups, channels)
        self.conv2 = ConcatConv2d(channels, channels, True)
        self.norm3 = nn.GroupNorm(self.groups, channels)
        self.act = nn.ReLU()

    def _f(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, self.act(self.norm1(h)))
        out = self.conv2(t, self.act(self.norm2(out)))
        return self.norm3(out)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "groups": self.groups}


#: CLI name -> vector-field class.
FIELDS: dict[str, type[VectorField]] = {"verifiable": VerifiableField, "chen": ChenField}


def make_field(kind: str, channels: int, **kwargs: Any) -> VectorField:
    """Build a vector field by name.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in FIELDS:
        raise ValueError(f"unknown vector field {kind!r}; choose one of {', '.join(FIELDS)}")
    return FIELDS[kind](channels, **kwargs)
