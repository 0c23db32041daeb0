"""Seed studies, one command each: ``python -m studies NAME [--quick]``.

A consumer of the library, like ``benchmarks/``: it imports ``models``, ``attacks``,
``lipbound`` and ``verify``, and nothing in them imports it (``python -m verify study NAME``
is an alias that loads this package only when it runs). Every study writes a markdown
table, a figure and a JSON file, states its data protocol, n, model recipes and attack
parameters, and puts the number the seed paper reported next to ours. ``--quick`` runs in
a few minutes (what the tests execute); the full mode is what the README reports. See
:mod:`studies._common` for the shared machinery and :mod:`studies.cli` for the command line.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from types import ModuleType

import torch

from ._common import StudyContext as StudyContext
from ._common import StudyError as StudyError
from ._common import StudyReport as StudyReport
from ._common import Table as Table
from ._common import write_report as write_report

#: study name -> module in this package.
STUDIES: dict[str, str] = {
    "girard-attacks": "girard_attacks",
    "girard-advtrain": "girard_advtrain",
    "integration-time": "integration_time",
    "tolerance": "tolerance",
    "tolerance-randomization": "tolerance_randomization",
    "step-size": "step_size",
    "bound-vs-attack": "bound_vs_attack",
    "tightness": "tightness",
    "gradient-masking": "gradient_masking",
    "certified-architectures": "certified_architectures",
}


def study_module(name: str) -> ModuleType:
    """The module implementing study ``name``; raises :class:`StudyError` for an unknown name."""
    if name not in STUDIES:
        raise StudyError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}")
    return importlib.import_module(f"studies.{STUDIES[name]}")


def default_out(name: str, quick: bool) -> Path:
    """``results/<name>`` for the full mode (what the README shows), ``runs/<name>-quick`` otherwise."""
    return Path("runs" if quick else "results") / (f"{name}-quick" if quick else name)


def run_study(name: str, quick: bool = False, out: str | os.PathLike[str] | None = None, seed: int = 0,
              device: str | torch.device = "cpu", n: int | None = None, progress: bool = True) -> StudyReport:
    """Run (or resume) one study and write its outputs.

    Args:
        name: a key of :data:`STUDIES`.
        quick: quick mode.
        out: output directory (default :func:`default_out`).
        seed: random seed.
        device: torch device.
        n: override of the number of evaluation examples.
        progress: progress bars.

    Returns:
        the :class:`StudyReport` (also written to ``out``).

    Raises:
        StudyError: unknown study or bad options.
    """
    module = study_module(name)
    ctx = StudyContext(name, out if out is not None else default_out(name, quick), quick, seed, device, n, progress)
    start = time.perf_counter()
    report = module.run(ctx)
    write_report(report, ctx.out, time.perf_counter() - start, ctx.reused)
    return report


__all__ = ["STUDIES", "StudyContext", "StudyError", "StudyReport", "Table", "default_out", "run_study",
           "study_module", "write_report"]
