"""The margin specification every engine bounds: rows e_y − e_j for each class j ≠ y."""

from __future__ import annotations

import torch


def spec_matrix(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """C of shape (N, K-1, K): rows e_y − e_j for j ≠ y, in class order."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    rows = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    keep = ~torch.eye(num_classes, dtype=torch.bool, device=y.device)[y]
    return rows[keep].view(y.shape[0], num_classes - 1, num_classes)
