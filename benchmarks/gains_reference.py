"""GAINS's own controlled-adaptive forward on its released MNIST models, the reference for ours.

GAINS's code (``../shared/peers/gains``) is never imported: a temporary copy of its folder gets a
small driver that builds its ``ODENet_mini_MNIST`` with ``ODEBlock(..., "dopri5_0.005_2a")`` exactly
as its ``gains_exp.py`` does, loads a released checkpoint, and prints, for each image (batch size
1, the size GAINS verifies and attacks with) and for float32 (as trained) and float64 (as its
verifier runs, ``model.double()``): the logits, the ODE block's ``states`` (the (t, dt) of every
step tried) and its ``trajectory_path`` (0 reject, 1 accept, 2 accept-and-double; GAINS writes 1
for a doubling that the clip to T cancels).

``python -m benchmarks.gains_reference`` compares those with :func:`models.gains.load_gains` on
held-out images 8000.. (``--n``, default 100) and writes ``benchmarks/results/gains_reference.json``;
``--fixture`` also (re)writes ``tests/models/fixtures/gains_logits.json``: images 8000-8002 (their
pixels, so the test needs no MNIST file) with GAINS's logits and steps for both certified models,
which ``tests/models/test_cas.py`` checks our forward against without running GAINS.

References:
    Zeqiri, Müller, Fischer, Vechev, "Efficient Certified Training and Robustness Verification
    of Neural ODEs", ICLR 2023.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._gains_peer import GAINS_DIR, MNIST_DIR, ROOT, checkpoint

CHECKPOINTS: dict[str, Path] = {f"box_{t}": checkpoint(float(t)) for t in ("0.11", "0.22")}
FIXTURE = ROOT / "tests" / "models" / "fixtures" / "gains_logits.json"
RESULTS = ROOT / "benchmarks" / "results" / "gains_reference.json"
DTYPES = {"float32": torch.float32, "float64": torch.float64}

_DRIVER = '''
import copy, json, sys, torch
torch.set_num_threads(1)
from model import ODEfunc_abstract, ODEBlock, ODENet_mini_MNIST
from mnist_idx import mnist_test_dataset
ckpt, idxs = sys.argv[1], [int(i) for i in sys.argv[2].split(",")]
ode = ODEBlock(ODEfunc_abstract(32, 32, act="relu", nogr=32), "dopri5_0.005_2a", 0, [0, 1.0])
model = ODENet_mini_MNIST(ode, torch.device("cpu"), [0.1307], [0.3081])
model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
model.eval()
ds = mnist_test_dataset()
for name, dt in (("float32", torch.float32), ("float64", torch.float64)):
    m = copy.deepcopy(model).to(dt)
    for i in idxs:
        with torch.no_grad():
            logits = m(ds[i][0][None].to(dt))
        b = m.net[5]
        print("ROW" + json.dumps({"dtype": name, "index": i, "label": int(ds[i][1]), "logits": logits[0].tolist(),
                                  "states": b.states.tolist(), "trajectory": [int(c) for c in b.trajectory_path]}))
'''


def gains_forward(checkpoint: Path, indices: list[int], timeout: float = 600.0) -> list[dict[str, Any]]:
    """GAINS's forward on test-set images ``indices`` (positions in the official test set), run by
    its own code in a temporary copy of its folder; one row per (dtype, image).

    Raises:
        RuntimeError: the GAINS subprocess failed (its stderr's last line is quoted).
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gains"
        shutil.copytree(GAINS_DIR, folder, ignore=shutil.ignore_patterns("*.ipynb", "PARC"))
        (folder / "_driver.py").write_text(_DRIVER)
        env = {**os.environ, "MNIST_DIR": str(MNIST_DIR), "MNIST_OFFSET": "0", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "_driver.py", str(checkpoint), ",".join(map(str, indices))],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        raise RuntimeError(f"GAINS's forward failed (exit {proc.returncode}): {tail[0]}")
    return [json.loads(line[3:]) for line in proc.stdout.splitlines() if line.startswith("ROW")]


def mnist_pixels(indices: list[int]) -> np.ndarray:
    """uint8 pixels (n, 1, 28, 28) of official test-set images."""
    raw = gzip.open(MNIST_DIR / "t10k-images-idx3-ubyte.gz").read()
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[indices]


def gains_codes(steps: list[Any], T: float = 1.0) -> list[int]:
    """Our per-step decisions as GAINS records them: a doubling whose next step the clip to T makes
    no larger than the step itself is written 1."""
    out = []
    for s in steps:
        t_next = s.t + s.h
        clipped_small = s.decision == 2 and t_next + 2 * s.h > T and T - t_next <= s.h
        out.append(1 if clipped_small else int(s.decision))
    return out


def compare(rows: list[dict[str, Any]], checkpoint: Path, pixels: dict[int, np.ndarray]) -> dict[str, Any]:
    """Our forward (batch size 1) against GAINS's rows: max |Δ logits| per dtype, step agreement, and
    our per-example NFE, steps tried and rejections (means)."""
    from models.gains import load_gains

    model, _ = load_gains(checkpoint)
    out: dict[str, Any] = {}
    for name, dt in DTYPES.items():
        m = model.to(dt)
        diffs, same_steps, n, nfe, tried, rejected = [], 0, 0, 0, 0, 0
        for r in (r for r in rows if r["dtype"] == name):
            x = torch.from_numpy(pixels[r["index"]].astype(np.float32) / 255.0)[None].to(dt)
            with torch.no_grad():
                logits = m(x)[0]
            diffs.append(float((logits - torch.tensor(r["logits"], dtype=dt)).abs().max()))
            ours = m.block.steps[0]
            same = (len(ours) == len(r["states"]) and gains_codes(ours) == r["trajectory"]
                    and all(abs(s.t - t) < 1e-6 and abs(s.h - h) < 1e-6 for s, (t, h) in zip(ours, r["states"])))
            same_steps += int(same)
            n += 1
            nfe += m.block.nfe_per_example[0]
            tried += len(ours)
            rejected += sum(s.decision == 0 for s in ours)
        out[name] = {"n": n, "max_abs_logit_diff": max(diffs), "same_step_sequence": same_steps,
                     "mean_nfe": nfe / n, "mean_steps_tried": tried / n, "mean_rejections": rejected / n}
    return out


def main(argv: list[str] | None = None) -> int:
    """Compare on ``--n`` held-out images from ``--start``; ``--fixture`` rewrites the test fixture."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", type=int, default=8000)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--fixture", action="store_true", help="also write the 3-image test fixture")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    indices = list(range(args.start, args.start + args.n))
    pixels = dict(zip(indices, mnist_pixels(indices)))
    results: dict[str, Any] = {"images": f"official test set {indices[0]}-{indices[-1]}", "models": {}}
    fixture: dict[str, Any] = {"made_by": "python -m benchmarks.gains_reference --fixture", "models": {},
                               "images": {str(i): pixels[i].reshape(-1).tolist() for i in indices[:3]}}
    for key, ckpt in CHECKPOINTS.items():
        rows = gains_forward(ckpt, indices)
        results["models"][key] = {"checkpoint": ckpt.name, **compare(rows, ckpt, pixels)}
        fixture["models"][key] = {"checkpoint": ckpt.name, "rows": [r for r in rows if r["index"] in indices[:3]]}
        print(key, json.dumps(results["models"][key]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if args.fixture:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(fixture) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
