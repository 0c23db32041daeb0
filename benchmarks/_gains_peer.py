"""GAINS's verifier as a peer: run it as a subprocess, cache one row per (image, ε).

GAINS (Zeqiri et al., ICLR 2023) certifies its released MNIST Neural ODEs for the controlled
adaptive solver they are deployed with. Its code (``../shared/peers/gains``, with the CPU
patches described in ``../shared/peers/README.md``) is never imported here: each chunk of images
runs ``gains_exp.py`` in a temporary copy of the folder, with ``MNIST_OFFSET`` set to the chunk's
first test-set position and ``GAINS_THREADS`` threads, and its ``SAMPLE`` lines are parsed.

GAINS attempts ε = 0.1, 0.15, 0.2 in turn and attempts a larger ε only on images it certified at
every smaller one; an image with no attempt at ε = 0.1 was misclassified. The cache
(``benchmarks/results/gains_peer/target_<t>.jsonl``) holds one JSON object per (image, ε):
``target, index`` (position in the official test set), ``label, clean_correct, eps, attempted,
cert, min_lb, time_s`` (``min_lb``/``time_s`` null where GAINS made no attempt). Chunks already in
the cache are skipped, so an interrupted run loses at most the chunk it was in.

Run: ``python -m benchmarks._gains_peer --target 0.11 --start 8000 --n 20`` (held-out images
8000.. are unseen by GAINS's models, trained on the 60,000 training images, and by ours).

References:
    Zeqiri, Müller, Fischer, Vechev, "Efficient Certified Training and Robustness Verification
    of Neural ODEs", ICLR 2023.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GAINS_DIR = (ROOT / ".." / "shared" / "peers" / "gains").resolve()
MNIST_DIR = (ROOT / ".." / "shared" / "data" / "mnist").resolve()
CACHE = Path(__file__).resolve().parent / "results" / "gains_peer"
#: the ε GAINS's script evaluates on MNIST, in its order.
GAINS_EPS: tuple[float, ...] = (0.1, 0.15, 0.2)
#: released certified models (``--adv box --target T``, seed 12345).
TARGETS: tuple[float, ...] = (0.11, 0.22)
_SAMPLE = re.compile(r"SAMPLE eps=(\S+) idx=(\d+) label=(\d+) cert=(\d) min_lb=(\S+) time_s=(\S+)")
_LABELS_FILE = "t10k-labels-idx1-ubyte.gz"


def checkpoint(target: float) -> Path:
    """GAINS's released certified (box) checkpoint for ε_t = target."""
    return (GAINS_DIR / "models" / "pre-trained" / "MNIST" /
            f"boxactivation_mini_method_dopri5_0.005_2a_epoch_100_seed_12345_target_{target:g}_gamma_0.01_omega_0.0_"
            "traj_0_run_1.0.pth.tar")


def cache_path(target: float) -> Path:
    """The JSONL cache of one released model."""
    return CACHE / f"target_{target:g}.jsonl"


def load_rows(target: float) -> list[dict[str, Any]]:
    """Every cached row of one model (empty when nothing has run)."""
    path = cache_path(target)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def covered(target: float) -> list[int]:
    """Sorted test-set positions of the images GAINS has finished for this model."""
    return sorted({r["index"] for r in load_rows(target)})


def _labels(start: int, n: int) -> list[int]:
    import gzip

    with gzip.open(MNIST_DIR / _LABELS_FILE, "rb") as f:
        raw = f.read()
    return list(raw[8 + start: 8 + start + n])


def parse(stdout: str, target: float, start: int, n: int) -> list[dict[str, Any]]:
    """Rows for images start..start+n-1 from one run's ``SAMPLE`` lines."""
    seen: dict[tuple[int, float], tuple[int, float, float]] = {}
    for m in _SAMPLE.finditer(stdout):
        eps, idx = float(m.group(1)), int(m.group(2))
        seen[(idx, eps)] = (int(m.group(4)), float(m.group(5)), float(m.group(6)))
    rows = []
    for k, label in enumerate(_labels(start, n)):
        correct = (k, GAINS_EPS[0]) in seen
        for eps in GAINS_EPS:
            hit = seen.get((k, eps))
            rows.append({"target": target, "index": start + k, "label": label, "clean_correct": correct,
                         "eps": eps, "attempted": hit is not None, "cert": bool(hit and hit[0]),
                         "min_lb": hit[1] if hit else None, "time_s": hit[2] if hit else None})
    return rows


def run_chunk(target: float, start: int, n: int, threads: int = 1) -> tuple[list[dict[str, Any]], float]:
    """Run GAINS's verifier on images start..start+n-1 in a temporary copy; rows and wall seconds.

    Raises:
        RuntimeError: GAINS exited with an error (its last output lines are quoted).
    """
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "gains"
        shutil.copytree(GAINS_DIR, work)
        env = dict(os.environ, MNIST_DIR=str(MNIST_DIR), MNIST_OFFSET=str(start), GAINS_THREADS=str(threads),
                   OMP_NUM_THREADS=str(threads), PYTHONPATH="")
        cmd = [sys.executable, "gains_exp.py", "--dataset", "MNIST", "--seed", "12345", "--adv", "box",
               "--target", f"{target:g}", "--samples", str(n), "--pre_trained"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-5:])
        raise RuntimeError(f"GAINS failed on images {start}..{start + n - 1}: {tail}")
    return parse(proc.stdout, target, start, n), wall


def run(target: float, start: int, n: int, chunk: int = 5, threads: int = 1) -> list[dict[str, Any]]:
    """Fill the cache for images start..start+n-1 chunk by chunk; returns the model's cached rows."""
    path = cache_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = set(covered(target))
    for first in range(start, start + n, chunk):
        size = min(chunk, start + n - first)
        if all(i in done for i in range(first, first + size)):
            continue
        rows, wall = run_chunk(target, first, size, threads)
        with path.open("a") as f:
            for row in rows:
                if row["index"] not in done:
                    f.write(json.dumps(dict(row, chunk_wall_s=round(wall, 2))) + "\n")
        done.update(r["index"] for r in rows)
    return load_rows(target)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=float, choices=TARGETS, nargs="+", default=list(TARGETS))
    p.add_argument("--start", type=int, default=8000, help="first test-set position")
    p.add_argument("--n", type=int, default=20, help="images")
    p.add_argument("--chunk", type=int, default=5, help="images per GAINS process")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    for target in args.target:
        rows = run(target, args.start, args.n, args.chunk, args.threads)
        print(f"target {target:g}: {len(covered(target))} images cached in {cache_path(target)} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
