"""StudyContext.zoo: cells computed with one zoo checkpoint are never reused with another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models.zoo as zoo
from models import MLP
from models.train import save_checkpoint
from studies._common import StudyContext, StudyError


def _save(zoo_dir: Path, seed: int) -> None:
    torch.manual_seed(seed)
    save_checkpoint(zoo_dir / "tiny", MLP(hidden=(4,)), {"held_out_accuracy": 0.5})


def test_a_retrained_zoo_checkpoint_stops_a_study_with_old_cells(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    monkeypatch.setattr(zoo, "PRESETS", {**zoo.PRESETS, "tiny": zoo.Preset("tiny", "mlp", {"hidden": [4]},
                                                                           zoo.Recipe(), "test")})
    (tmp_path / "zoo").mkdir()
    _save(tmp_path / "zoo", 0)
    out = tmp_path / "study"
    ctx = StudyContext("t", out, quick=True)
    first = ctx.zoo("tiny")
    ctx.cell("tiny|clean", lambda: 1.0)
    again = StudyContext("t", out, quick=True).zoo("tiny")  # same checkpoint: fine
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    _save(tmp_path / "zoo", 1)  # retrained
    with pytest.raises(StudyError, match="zoo checkpoint 'tiny' changed since the cells"):
        StudyContext("t", out, quick=True).zoo("tiny")
    (out / "cells.jsonl").unlink()
    (out / "zoo-checkpoints.json").unlink()
    StudyContext("t", out, quick=True).zoo("tiny")  # a fresh directory records the new checkpoint
