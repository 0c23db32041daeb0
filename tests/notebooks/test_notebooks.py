"""Every notebook in notebooks/ executes top to bottom in quick mode, so none of them rots.

The kernel is this test's own interpreter: a kernel spec for ``sys.executable`` is written
into a temporary ``JUPYTER_PATH`` (searched before user and system kernel directories), so
a ``python3`` spec elsewhere on the machine cannot pick another Python. Each notebook runs
with ``ODE_ROBUSTNESS_QUICK=1`` and one thread, its working directory being notebooks/.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "ode-robustness-test"
#: seconds any single cell may take (a quick-mode notebook takes well under 30 s in all).
CELL_TIMEOUT = 240


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for a kernel running ``sys.executable`` in quick, single-thread mode."""
    prefix = tmp_path_factory.mktemp("jupyter")
    kernelspec.install(kernel_name=KERNEL, prefix=str(prefix))
    env = {"JUPYTER_PATH": str(prefix / "share" / "jupyter"), "ODE_ROBUSTNESS_QUICK": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    return nb


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_notebooks_exist() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"theorem_sanity_check.ipynb", "bound_vs_attack.ipynb"} <= names


def test_kernel_is_this_interpreter(kernel_env: dict[str, str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(os.getcwd())\n"
                                          "print(os.environ.get('ODE_ROBUSTNESS_QUICK'))")]
    text = "".join(o.get("text", "") for o in _outputs(_execute(nb))).split()
    assert Path(text[0]).resolve() == Path(sys.executable).resolve()
    assert Path(text[1]).resolve() == NOTEBOOK_DIR.resolve()
    assert text[2] == "1"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_executed(path: Path) -> None:
    """The committed file carries its outputs: every code cell ran, in order, without errors."""
    nb = nbformat.read(path, as_version=4)
    counts = [c.get("execution_count") for c in nb.cells if c.cell_type == "code"]
    assert counts and all(isinstance(n, int) for n in counts), "commit the notebook executed, with outputs"
    assert counts == sorted(counts), "cells were executed out of order"
    assert not [o for o in _outputs(nb) if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in _outputs(nb)), "each notebook tells its story with plots"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path: Path, kernel_env: dict[str, str]) -> None:
    nb = copy.deepcopy(nbformat.read(path, as_version=4))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    out = _execute(nb)  # raises CellExecutionError on the first failing cell
    outputs = _outputs(out)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
