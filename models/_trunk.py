"""Stem and head shared by :class:`~models.odenet.ODENet` and :class:`~models.resnet.ResNet`.

The stem downsamples 28x28 to 7x7 with two stride-2 convolutions (Chen et al.'s
downsampling layers); the chen variant adds the 3x3 input convolution and GroupNorm as
in their code. The head is ReLU, average pooling, flatten and a linear layer (optionally a hidden linear
layer and ReLU before it).
"""

from __future__ import annotations

from torch import nn

from .base import feature_size
from .fields import chen_groups


def make_stem(in_channels: int, channels: int, norm: bool) -> nn.Sequential:
    """Downsampling stem: (N, in_channels, S, S) -> (N, channels, S/4, S/4)."""
    if not norm:
        return nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            nn.ReLU(),
        )
    groups = chen_groups(channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, stride=1, padding=1),
        nn.GroupNorm(groups, channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 4, stride=2, padding=1),
        nn.GroupNorm(groups, channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 4, stride=2, padding=1),
    )


def trunk_feature_size(input_size: int) -> int:
    """Spatial size of the state after the stem."""
    return feature_size(input_size, 2)


def make_head(channels: int, size: int, pool: int, num_classes: int, norm: bool, hidden: int = 0) -> nn.Sequential:
    """[GroupNorm] -> ReLU -> AvgPool(pool) -> Flatten -> [Linear(hidden) -> ReLU] -> Linear.

    Raises:
        ValueError: ``pool`` does not divide the feature-map size.
    """
    if pool < 1 or size % pool:
        raise ValueError(f"head_pool={pool} must divide the {size}x{size} feature map")
    layers: list[nn.Module] = [nn.GroupNorm(chen_groups(channels), channels)] if norm else []
    layers += [nn.ReLU()]
    if pool > 1:
        layers.append(nn.AvgPool2d(pool))
    if hidden < 0:
        raise ValueError(f"head_hidden must be >= 0, got {hidden}")
    features = channels * (size // pool) ** 2
    layers.append(nn.Flatten())
    if hidden:
        layers += [nn.Linear(features, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden or features, num_classes))
    return nn.Sequential(*layers)
