"""A file that is not a checkpoint: a specific exception naming it, one CLI line, exit 2.

torch's own message on such a file advises ``weights_only=False``, i.e. executing the
file's pickle; neither the API nor the CLI may pass that advice on.
"""

from __future__ import annotations

import collections
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models import MLP
from models.cli import main as models_main
from models.train import CheckpointError, NotACheckpointError, Recipe, load_checkpoint, save_checkpoint, train
from models.zoo import resolve
from verify.cli import main as verify_main


class Payload:
    """A pickled object that ``torch.load(weights_only=True)`` refuses."""


def _random_bytes(p: Path) -> None:
    p.write_bytes(torch.randint(0, 256, (2048,), generator=torch.Generator().manual_seed(0),
                                dtype=torch.uint8).numpy().tobytes())


WRITERS: dict[str, Callable[[Path], None]] = {
    "random-bytes": _random_bytes,
    "empty": lambda p: p.write_bytes(b""),
    "plain-pickle": lambda p: p.write_bytes(pickle.dumps({"weights": Payload()})),
    "torch-save-object": lambda p: torch.save(Payload(), p),
    "torch-save-list": lambda p: torch.save([torch.zeros(2)], p),
    "dict-of-non-tensors": lambda p: torch.save(collections.Counter(a=1), p),
    "truncated-archive": lambda p: (torch.save(MLP(hidden=(4,)).state_dict(), p),
                                    p.write_bytes(p.read_bytes()[:200])),
}


def _garbage(tmp_path: Path, kind: str, with_json: bool = True) -> Path:
    pt = tmp_path / f"{kind}.pt"
    WRITERS[kind](pt)
    if with_json:
        pt.with_suffix(".json").write_text(json.dumps({"arch": "mlp", "config": {"hidden": [4]}}))
    return pt


def _check_message(msg: str, pt: Path) -> None:
    assert "weights_only" not in msg and "Weights only" not in msg, msg
    assert len(msg.strip().splitlines()) == 1, msg
    assert str(pt) in msg and "is not a checkpoint" in msg, msg


@pytest.mark.parametrize("kind", sorted(WRITERS))
@pytest.mark.parametrize("with_json", [True, False])
def test_load_checkpoint_and_resolve_say_not_a_checkpoint(tmp_path: Path, kind: str, with_json: bool) -> None:
    pt = _garbage(tmp_path, kind, with_json)
    for load in (load_checkpoint, resolve):
        with pytest.raises(NotACheckpointError) as info:
            load(str(pt))
        assert isinstance(info.value, CheckpointError) and isinstance(info.value, ValueError)
        _check_message(str(info.value), pt)
    with pytest.raises(NotACheckpointError):  # the .json path and the stem find the same weights
        load_checkpoint(pt.with_suffix(".json") if with_json else pt.with_suffix(""))


def test_a_real_checkpoint_still_loads_and_a_missing_json_is_named(tmp_path: Path) -> None:
    model = MLP(hidden=(4,))
    pt = save_checkpoint(tmp_path / "ok", model, {})
    loaded, meta = resolve(str(pt))
    assert meta["arch"] == "mlp"
    pt.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*ok.json") as info:
        load_checkpoint(pt)
    assert not isinstance(info.value, NotACheckpointError)


@pytest.mark.parametrize("kind", ["random-bytes", "plain-pickle", "torch-save-object", "empty"])
@pytest.mark.parametrize("argv", [
    ["models", "eval", "{pt}"],
    ["verify", "certify", "--model", "{pt}"],
    ["verify", "bounds", "--model", "{pt}"],
    ["verify", "attack", "--model", "{pt}", "--attack", "fgsm", "--eps", "0.1"],
])
def test_cli_one_line_exit_2(tmp_path: Path, kind: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    pt = _garbage(tmp_path, kind)
    cli = models_main if argv[0] == "models" else verify_main
    assert cli([a.format(pt=pt) for a in argv[1:]]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ")
    _check_message(captured.err, pt)


def test_garbage_resume_state_is_not_a_checkpoint(tmp_path: Path) -> None:
    resume = tmp_path / "m.resume.pt"
    _random_bytes(resume)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    with pytest.raises(NotACheckpointError) as info:
        train(MLP(hidden=(4,)), x, y, Recipe(epochs=1, batch_size=8, shift=0), resume_path=resume, progress=False)
    _check_message(str(info.value), resume)
