"""What every study shares: a context that caches finished work, tables with the seed's column, and the writer.

A study is a module in :mod:`studies` exposing ``NAME``, ``SEED`` (the seed paper it
reproduces, or ``"project"``), ``TITLE`` and ``run(ctx: StudyContext) -> StudyReport``. It
computes its table cells through :meth:`StudyContext.cell`, which appends each finished cell
to ``cells.jsonl`` in the output directory, so an interrupted study resumes where it
stopped; models it trains go through :meth:`StudyContext.model`, which keeps checkpoints in
``models/`` of the output directory (training itself resumes per epoch), and zoo models
through :meth:`StudyContext.zoo`, which refuses a retrained checkpoint under old cells.

Outputs, in the output directory: ``<NAME>.md`` (protocol, tables, figures), ``<NAME>.json``
(everything in the report) and the figures (PNG) the study drew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


class StudyError(ValueError):
    """Bad arguments to a study (unknown name, bad options) or an unusable output directory."""


@dataclasses.dataclass(frozen=True)
class Table:
    """One table of a study report.

    Attributes:
        title: caption (one line).
        columns: column headers; by convention one of them is the seed's reported number
            ("seed 000 reported") next to ours.
        rows: cell values (str, int, float or None; None prints as "–").
        note: optional sentence under the table.
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    note: str = ""

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise StudyError(f"table {self.title!r}: row {row!r} has {len(row)} cells, "
                                 f"expected {len(self.columns)}")

    def markdown(self) -> str:
        """The table in GitHub markdown, with its title and note."""
        head = "| " + " | ".join(self.columns) + " |\n|" + "---|" * len(self.columns) + "\n"
        body = "".join("| " + " | ".join(format_cell(v) for v in row) + " |\n" for row in self.rows)
        out = f"**{self.title}**\n\n{head}{body}"
        return out + (f"\n{self.note}\n" if self.note else "")


def format_cell(value: Any) -> str:
    """Markdown text of one cell: floats with 4 significant digits, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


@dataclasses.dataclass(frozen=True)
class StudyReport:
    """What a study found.

    Attributes:
        name, title, seed: identity of the study (``seed`` names the seed paper file stem or
            ``"project"``).
        quick: whether this was the quick mode.
        protocol: data protocol, n, model recipes, attack parameters, solver settings:
            everything needed to rerun it (JSON-serialisable).
        tables: the result tables.
        figures: file names (relative to the output directory) of the figures drawn.
        findings: short sentences stating what the numbers show, including where they differ
            from the seed's and why.
        data: any further JSON-serialisable measurements (curves, per-example values).
    """

    name: str
    title: str
    seed: str
    quick: bool
    protocol: dict[str, Any]
    tables: tuple[Table, ...]
    figures: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def markdown(self, seconds: float | None = None, reused: int = 0) -> str:
        """The full markdown report (``reused``: cells read from an earlier run, not timed here)."""
        mode = "quick mode (a smoke-size run, not for reporting)" if self.quick else "full mode"
        # The alias, not ``python -m studies``: the committed reports were written with it, and
        # regenerating them from their cached cells must reproduce them byte for byte.
        cmd = f"python -m verify study {self.name}" + (" --quick" if self.quick else "")
        lines = [f"# {self.title}", "", f"Study `{self.name}`, {mode}; seed: `{self.seed}`. Regenerate: `{cmd}`."]
        if seconds is not None and reused:
            lines[-1] += (f" Wall time of the last run: {seconds:.0f} s; it read {reused} cells computed by earlier runs "
                          "from `cells.jsonl`.")
        elif seconds is not None:
            lines[-1] += f" Wall time: {seconds:.0f} s."
        lines += ["", "## Protocol", ""]
        lines += [f"- **{k}**: {_protocol_text(v)}" for k, v in self.protocol.items()]
        lines += ["", "## Results", ""]
        for table in self.tables:
            lines += [table.markdown(), ""]
        for fig in self.figures:
            lines += [f"![{fig}]({fig})", ""]
        if self.findings:
            lines += ["## Findings", ""] + [f"- {f}" for f in self.findings] + [""]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Everything in the report as a JSON-serialisable dict."""
        return {"name": self.name, "title": self.title, "seed": self.seed, "quick": self.quick,
                "protocol": self.protocol,
                "tables": [{"title": t.title, "columns": list(t.columns), "rows": [list(r) for r in t.rows],
                            "note": t.note} for t in self.tables],
                "figures": list(self.figures), "findings": list(self.findings), "data": self.data}


def _protocol_text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_protocol_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_protocol_text(v) for v in value)
    return str(value)


class StudyContext:
    """Where a study runs: options, output directory, cached cells and models.

    Args:
        name: the study's name.
        out: output directory (created).
        quick: quick mode (small n, few epochs: minutes).
        seed: the seed every random choice derives from.
        device: torch device for models and attacks.
        n: optional override of the number of evaluation examples.
        progress: show progress bars.

    Raises:
        StudyError: ``out`` exists and is not a directory, or n < 1.
    """

    def __init__(self, name: str, out: str | os.PathLike[str], quick: bool = False, seed: int = 0,
                 device: str | torch.device = "cpu", n: int | None = None, progress: bool = True) -> None:
        if n is not None and n < 1:
            raise StudyError(f"n must be >= 1, got {n}")
        self.name, self.quick, self.seed, self.n_override, self.progress = name, quick, seed, n, progress
        self.device = torch.device(device)
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise StudyError(f"output path {self.out} exists and is not a directory")
        self.out.mkdir(parents=True, exist_ok=True)
        self._cells_path = self.out / "cells.jsonl"
        self._cells: dict[str, Any] = {}
        #: cells this run read from an earlier run's ``cells.jsonl`` instead of computing them.
        self.reused = 0
        self._zoo_path = self.out / "zoo-checkpoints.json"  # zoo name -> checkpoint digest the cells used
        self._zoo_digests: dict[str, str] = json.loads(self._zoo_path.read_text()) if self._zoo_path.exists() else {}
        self._zoo_checked: set[str] = set()
        if self._cells_path.exists():
            for line in self._cells_path.read_text().splitlines():
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill: recomputed
                    self._cells[rec["key"]] = rec["value"]

    def n(self, quick: int, full: int) -> int:
        """Number of evaluation examples: the ``--n`` override, else ``quick`` or ``full``."""
        if self.n_override is not None:
            return self.n_override
        return quick if self.quick else full

    def pick(self, quick: Any, full: Any) -> Any:
        """``quick`` in quick mode, else ``full`` (epochs, grids, steps ...)."""
        return quick if self.quick else full

    def cell(self, key: str, compute: Callable[[], Any]) -> Any:
        """The cached value of ``key``, or ``compute()`` (JSON-serialisable), appended to ``cells.jsonl``.

        Keys must name everything the value depends on (model, attack, ε, n ...): a cell once
        written is never recomputed in this output directory.
        """
        if key in self._cells:
            self.reused += 1
            return self._cells[key]
        value = compute()
        json.dumps(value)  # fail before writing if it is not serialisable
        with self._cells_path.open("a") as f:
            f.write(json.dumps({"key": key, "value": value}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._cells[key] = value
        return value

    def zoo(self, name: str) -> nn.Module:
        """Zoo model ``name`` on the context's device, checked against the one earlier cells used.

        The first load records the checkpoint's SHA-256 in ``zoo-checkpoints.json`` of the
        output directory; a retrained checkpoint then stops the study instead of letting it
        reuse cells computed with the old weights.

        Raises:
            StudyError: the checkpoint differs from the one recorded in this directory.
            models.zoo.UnknownModelError: no such zoo model, or it has no checkpoint.
        """
        from models import zoo

        model = zoo.load(name, self.device)
        if name not in self._zoo_checked:
            digest = hashlib.sha256((zoo.ZOO_DIR / f"{name}.pt").read_bytes()).hexdigest()[:16]
            if self._zoo_digests.get(name, digest) != digest:
                raise StudyError(f"zoo checkpoint {name!r} changed since the cells in {self.out} were computed "
                                 f"(sha256 {self._zoo_digests[name]} -> {digest}): delete {self._cells_path} and "
                                 f"{self._zoo_path} to recompute, or choose another output directory")
            if name not in self._zoo_digests:
                self._zoo_digests[name] = digest
                self._zoo_path.write_text(json.dumps(self._zoo_digests, indent=1, sort_keys=True) + "\n")
            self._zoo_checked.add(name)
        return model.eval()

    def model(self, key: str, build: Callable[[], nn.Module], train_fn: Callable[[nn.Module, Path], dict[str, Any]]
              ) -> tuple[nn.Module, dict[str, Any]]:
        """A model trained once per output directory.

        Args:
            key: file-name-safe name of this model within the study (e.g. ``"ode-small-T10"``).
            build: returns the untrained model.
            train_fn: ``train_fn(model, resume_path) -> metadata`` trains in place (pass
                ``resume_path`` to :func:`models.train.train`) and returns JSON metadata.

        Returns:
            the model in eval mode on the context's device and its metadata.
        """
        from models.train import load_checkpoint, save_checkpoint

        path = self.out / "models" / f"{key}.pt"
        if path.exists() and path.with_suffix(".json").exists():
            model, meta = load_checkpoint(path, self.device)
            return model.eval(), meta
        path.parent.mkdir(parents=True, exist_ok=True)
        model = build().to(self.device)
        start = time.perf_counter()
        meta = dict(train_fn(model, path.with_suffix(".resume.pt")))
        meta.setdefault("train_seconds", round(time.perf_counter() - start, 1))
        save_checkpoint(path, model, meta)
        resume = path.with_suffix(".resume.pt")
        if resume.exists():
            resume.unlink()
        return model.eval(), meta


def write_report(report: StudyReport, out: str | os.PathLike[str], seconds: float | None = None,
                 reused: int = 0) -> Path:
    """Write ``<name>.md`` and ``<name>.json`` into ``out``; returns the markdown path."""
    out = Path(out)
    md = out / f"{report.name}.md"
    md.write_text(report.markdown(seconds, reused))
    payload = report.to_json()
    if seconds is not None:
        payload["seconds"] = round(seconds, 1)
        payload["cells_reused"] = reused
    (out / f"{report.name}.json").write_text(json.dumps(payload, indent=1))
    return md


def figure_path(ctx: StudyContext, stem: str) -> tuple[Path, str]:
    """(absolute path, name relative to the output directory) of a study figure ``<NAME>-<stem>.png``."""
    rel = f"{ctx.name}-{stem}.png"
    return ctx.out / rel, rel


def discordant(a: list[bool], b: list[bool]) -> tuple[int, int]:
    """(images true in ``a`` only, images true in ``b`` only) of two verdict lists on the same images."""
    return sum(1 for u, v in zip(a, b) if u and not v), sum(1 for u, v in zip(a, b) if v and not u)


def paired_difference(a: list[bool], b: list[bool]) -> tuple[float, float]:
    """(mean(a) − mean(b), paired standard error √(b' + c' − (b' − c')²/n)/n) on the same images."""
    n = len(a)
    only_a, only_b = discordant(a, b)
    return (only_a - only_b) / n, math.sqrt(max(0.0, only_a + only_b - (only_a - only_b) ** 2 / n)) / n


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean, None for an empty sequence."""
    return float(sum(values) / len(values)) if values else None
