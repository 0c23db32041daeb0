"""ResNet matched to the ODE-net: the same stem and head, n residual blocks h <- h + s·f(t, h).

With weight-tied blocks and s = T/n this is exactly the explicit Euler discretisation
of the ODE-net's block (seed 003: a ResNet block is one Euler step with h = 1).

References:
    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    "Towards natural robustness against adversarial examples" (seed 003).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._trunk import make_head, make_stem, trunk_feature_size
from .base import Classifier
from .fields import make_field


class ResNet(Classifier):
    """Stem -> n residual blocks -> head.

    Args:
        channels: state channels.
        n_blocks: number of residual blocks n.
        step: the step size s multiplying each residual branch (1 = the usual ResNet).
        tied: share one vector field across blocks (then the Euler ODE-net with s = T/n).
        field: vector field kind, ``"verifiable"`` or ``"chen"``.
        time_channel: time plane in the verifiable field; block k sees t = k·s.
        head_pool, head_hidden: see :class:`~models.odenet.ODENet`.
        in_channels, input_size, num_classes: see :class:`~models.base.Classifier`.

    Raises:
        ValueError: n_blocks < 1 or step not positive.
    """

    arch = "resnet"

    def __init__(
        self,
        channels: int = 16,
        n_blocks: int = 4,
        step: float = 1.0,
        tied: bool = False,
        field: str = "verifiable",
        time_channel: bool = False,
        head_pool: int = 1,
        head_hidden: int = 0,
        in_channels: int = 1,
        input_size: int = 28,
        num_classes: int = 10,
    ) -> None:
        super().__init__(in_channels, input_size, num_classes)
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        if not step > 0:
            raise ValueError(f"step size s must be positive, got {step}")
        self.channels, self.n_blocks, self.step, self.tied = channels, n_blocks, step, tied
        self.field_kind, self.time_channel, self.head_pool = field, time_channel, head_pool
        self.head_hidden = head_hidden
        norm = field == "chen"
        field_kwargs = {} if norm else {"time_channel": time_channel}
        self.stem = make_stem(in_channels, channels, norm)
        n_fields = 1 if tied else n_blocks
        self.fields = nn.ModuleList(make_field(field, channels, **field_kwargs) for _ in range(n_fields))
        self.head = make_head(channels, trunk_feature_size(input_size), head_pool, num_classes, norm,
                              head_hidden)

    def block_field(self, k: int) -> nn.Module:
        """The vector field used by block k."""
        return self.fields[0 if self.tied else k]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for k in range(self.n_blocks):
            t = torch.tensor(k * self.step, dtype=h.dtype, device=h.device)
            h = h + self.step * self.block_field(k)(t, h)
        return self.head(h)

    def config(self) -> dict[str, Any]:
        out = {
            "channels": self.channels, "n_blocks": self.n_blocks, "step": self.step,
            "tied": self.tied, "field": self.field_kind, "time_channel": self.time_channel,
            "head_pool": self.head_pool, "in_channels": self.in_channels,
            "input_size": self.input_size, "num_classes": self.num_classes,
        }
        return {**out, "head_hidden": self.head_hidden} if self.head_hidden else out
