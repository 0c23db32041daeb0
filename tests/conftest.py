"""Test-session defaults: read MNIST from ../shared/data when it exists and nothing else is set."""

import os
from pathlib import Path

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "ODE_ROBUSTNESS_DATA" not in os.environ and (_SHARED / "mnist").exists():
    os.environ["ODE_ROBUSTNESS_DATA"] = str(_SHARED)
