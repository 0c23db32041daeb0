"""What limits the certified zoo models: certified accuracy on training images against held-out ones.

For each certified zoo model, clean, IBP-certified and PGD accuracy at its certification ε on
the first ``--n`` training images of mnist-t10k (images 0..) and on as many held-out images
(8000..). A model that certifies its training images much better than held-out ones is limited
by data (it overfits the 8,000 images); one that certifies neither well is limited by model
size or optimisation (it underfits the certified objective).

Run: ``python -m benchmarks.cert_gap [--n 2000]`` (results in ``benchmarks/results/cert_gap.json|md``).

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", 2018.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from attacks import PGD
from models.data import load_dataset
from models.zoo import PRESETS, available, load_with_metadata
from verify import certify

from ._cells import pct

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 250


def _measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> dict[str, int]:
    clean = cert = pgd = 0
    for i in range(0, x.shape[0], CHUNK):
        xb, yb = x[i:i + CHUNK], y[i:i + CHUNK]
        with torch.no_grad():
            ok = model(xb).argmax(1) == yb
        clean += int(ok.sum())
        cert += int(certify(model, xb, yb, eps, "inf", "ibp").certified.sum())
        res = PGD(model, eps, "inf", steps=steps, step_size=2.5 * eps / steps, seed=0)(xb, yb)
        pgd += int((ok & ~res.success).sum())
    return {"clean": clean, "ibp": cert, "pgd": pgd, "n": int(x.shape[0])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--pgd-steps", type=int, default=40)
    p.add_argument("--models", nargs="+", default=None, help="zoo names (default: every certified zoo model)")
    p.add_argument("--out", default=str(RESULTS / "cert_gap"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    xtr, ytr = load_dataset("mnist-t10k", "train", n=args.n)
    xte, yte = load_dataset("mnist-t10k", "test", n=args.n)
    rows: list[dict[str, Any]] = []
    for name in args.models or [n for n in available() if PRESETS[n].cert is not None]:
        model, meta = load_with_metadata(name)
        eps = float(meta["certified_accuracy"]["eps"])
        rows.append({"model": name, "eps": eps, "train": _measure(model, xtr, ytr, eps, args.pgd_steps),
                     "held_out": _measure(model, xte, yte, eps, args.pgd_steps),
                     "parameters": int(sum(t.numel() for t in model.parameters())),
                     "last_epoch_train_stats": (meta.get("epoch_stats") or [None])[-1]})
    lines = [f"# Certified zoo models: training images against held-out images (n = {args.n} each)", "",
             f"Command: `python -m benchmarks.cert_gap{'' if args.n == 2000 else f' --n {args.n}'}"
             f"{' --models ' + ' '.join(args.models) if args.models else ''}`. IBP-certified "
             f"and PGD-{args.pgd_steps} accuracy (%) at each model's certification ε, ± binomial standard error; "
             "training images 0.., held-out images 8000.. of the official test set.", "",
             "| model | ε | clean train | clean held-out | IBP train | IBP held-out | PGD train | PGD held-out |",
             "|" + "---|" * 8]
    for r in rows:
        t, h = r["train"], r["held_out"]
        lines.append(f"| {r['model']} | {r['eps']:g} | {pct(t['clean'], t['n'])} | {pct(h['clean'], h['n'])} | "
                     f"{pct(t['ibp'], t['n'])} | {pct(h['ibp'], h['n'])} | {pct(t['pgd'], t['n'])} | "
                     f"{pct(h['pgd'], h['n'])} |")
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"n": args.n, "pgd_steps": args.pgd_steps, "rows": rows},
                                                   indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
