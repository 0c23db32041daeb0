"""Test-session defaults shared by every test package.

* MNIST is read from ../shared/data when it exists and ODE_ROBUSTNESS_DATA is not set.
* Tests run single-threaded: their tensors are tiny, so extra intra-op threads only add
  contention on a shared machine (float64 conv backward in gradcheck ran ~10x slower).
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "ODE_ROBUSTNESS_DATA" not in os.environ and (_SHARED / "mnist").exists():
    os.environ["ODE_ROBUSTNESS_DATA"] = str(_SHARED)


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
