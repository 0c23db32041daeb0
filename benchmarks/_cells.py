"""Resumable benchmark cells: one JSON line per finished cell, and the json/md result files.

A cell is a dict whose ``key_fields`` identify it; finished cells are appended to
``<tag>.jsonl`` as they are produced, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch


def read_cells(path: Path) -> list[dict[str, Any]]:
    """The finished cells of ``path`` in the order they were appended (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def resumable_cells(path: Path, key_fields: Sequence[str], keys: Iterable[tuple[Any, ...]],
                    compute: Callable[..., dict[str, Any]], defaults: dict[str, Any] | None = None
                    ) -> list[dict[str, Any]]:
    """The cell of every key in ``keys``: read from ``path`` if already there, else ``compute(*key)``
    (appended to ``path`` and printed as soon as it is done). ``defaults`` gives the value of a key
    field that older cells lack."""
    defaults = defaults or {}
    done = {tuple(r[k] if k in r else defaults[k] for k in key_fields): r for r in read_cells(path)}
    rows = []
    for key in keys:
        if key not in done:
            done[key] = compute(*key)
            with path.open("a") as f:
                f.write(json.dumps(done[key]) + "\n")
            print(json.dumps(done[key]), flush=True)
        rows.append(done[key])
    return rows


def pct(k: int, n: int, digits: int = 1) -> str:
    """``k`` of ``n`` in percent ± its binomial standard error √(p(1−p)/n) ("–" for n = 0)."""
    if not n:
        return "–"
    p = k / n
    return f"{100 * p:.{digits}f} ± {100 * math.sqrt(p * (1 - p) / n):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table: one header row, its separator, one line per row (cells as given, str()-ed)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(results: Path, tag: str, args: argparse.Namespace, rows: list[dict[str, Any]],
                  markdown: Callable[[list[dict[str, Any]]], str]) -> None:
    """Write ``<tag>.json`` (rows and run metadata) and ``<tag>.md``, and print the markdown."""
    meta = {"torch_threads": 1, "torch": torch.__version__, "args": vars(args)}
    (results / f"{tag}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (results / f"{tag}.md").write_text(markdown(rows))
    print(markdown(rows))
