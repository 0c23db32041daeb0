"""Same weights, other solver: does certified training through the CAS or the verifier make the difference?

The certified zoo ODE-nets' vector fields are inactive on every ε = 0.1 box (see
``benchmarks/cas_cert.md``), so their ODE block is a constant shift and every solver computes
the same function. This swaps the solver of three models (``ode-cas-cert-0.1`` to Euler 2 steps;
the Euler fine-tune control and ``ode-cert-0.1`` to ``ode-cas-cert-0.1``'s CAS), records how much
the logits move, and certifies each swapped model one image at a time at ε = 0.1: a CAS by the
trajectory graph (its one method), a fixed-step solver by IBP and CROWN.

Run: ``python -m benchmarks.cas_cert_swap [--n 500]`` (results in
``benchmarks/results/cas_cert_swap.json``). The control is
``python -m verify train --preset ode-cert-0.1 --init-from ode-cert-0.1 --epochs 10
--warmup-epochs 0 --ramp-epochs 1 --out runs/issue15-cascert/euler_ft``.

References:
    Zeqiri, Müller, Fischer, Vechev, "Efficient Certified Training and Robustness Verification
    of Neural ODEs" (GAINS), ICLR 2023.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from models.data import load_dataset
from models.solver import SolverConfig
from models.zoo import resolve
from verify.certify import Certifier

RESULTS = Path(__file__).resolve().parent / "results"
CAS = SolverConfig.cas("dopri5", 0.005, h0=0.5)


def _swapped(name: str, solver: SolverConfig, x: torch.Tensor, y: torch.Tensor, eps: float) -> dict[str, Any]:
    model, _ = resolve(name)
    with torch.no_grad():
        before = model(x[:50])
        model.block.solver = solver
        change = float((model(x[:50]) - before).abs().max())
        clean = int((model(x).argmax(1) == y).sum())
    methods = ("crown",) if solver.is_cas else ("ibp", "crown")
    ok = {}
    for method in methods:
        cert = Certifier(model, "inf", method)
        ok[method] = torch.tensor([bool((cert.margins(x[i:i + 1], y[i:i + 1], eps) > 0).all())
                                   for i in range(x.shape[0])])
    union = torch.stack(list(ok.values())).any(0)
    return {"model": name, "solver": solver.describe(), "max_logit_change_first_50": change, "clean": clean,
            **{m: int(v.sum()) for m, v in ok.items()}, "certified": int(union.sum()), "n": int(x.shape[0]),
            "eps": eps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="held-out images 8000..")
    p.add_argument("--control", default="runs/issue15-cascert/euler_ft.pt", help="the Euler fine-tune checkpoint")
    p.add_argument("--out", default=str(RESULTS / "cas_cert_swap.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x, y = load_dataset("mnist-t10k", "test", n=args.n)
    rows = [_swapped(name, solver, x, y, 0.1) for name, solver in
            (("ode-cas-cert-0.1", SolverConfig.fixed("euler", 2)), (args.control, CAS), ("ode-cert-0.1", CAS))]
    Path(args.out).write_text(json.dumps({"command": "python -m benchmarks.cas_cert_swap"
                                          + (f" --n {args.n}" if args.n != 500 else ""), "rows": rows}, indent=1)
                              + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
