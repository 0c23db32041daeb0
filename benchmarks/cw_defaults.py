"""CW-L2 with its library defaults against the settings of the peer benchmark, on every undefended zoo model.

Issue 12: with the former defaults (100 steps, 9 rounds, c0 = 1e-3, lr = 1e-2) ``verify attack
--attack cw`` broke ~30 % of an undefended LeNet-5, while the README's CW parity row ran other
settings. This measures, per undefended zoo model and on the first held-out images it classifies
correctly, the success rate and median L2 of CW with :data:`attacks.cw.CW_DEFAULTS`, with the
setting of the parity row (read from ``results/attacks_vs_peers.json``) and, for the record,
with the former defaults' hyper-parameters (run by this code). Settings that coincide are run
once. One thread.

Targets: defaults reach >= 99 % success (unbounded) on every model, at a median L2 within 2 % of
the parity setting's.

Run: ``python -m benchmarks.cw_defaults [--n 200] [--n-slow 100] [--no-former]``
(results in ``results/cw_defaults.{md,json}``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from attacks import CW
from attacks.cw import CW_DEFAULTS
from models.data import load_dataset
from models.zoo import load

RESULTS = Path(__file__).resolve().parent / "results"
#: The zoo models without adversarial training.
UNDEFENDED: tuple[str, ...] = ("lenet5", "ode", "resnet", "ode-chen")
#: Models slow enough (dopri5) to run on ``--n-slow`` images.
SLOW: tuple[str, ...] = ("ode-chen",)
#: The defaults before issue 12.
FORMER_DEFAULTS: dict[str, Any] = {"steps": 100, "binary_search_steps": 9, "initial_const": 1e-3, "lr": 1e-2}
SUCCESS_TARGET, L2_TOLERANCE = 0.99, 0.02


def parity_setting() -> dict[str, Any]:
    """The CW hyper-parameters of the README's parity row (what ``attacks_vs_peers`` last ran)."""
    record = json.loads((RESULTS / "attacks_vs_peers.json").read_text())
    params = {json.dumps(r["cw"]["params"], sort_keys=True) for r in record["results"] if "cw" in r}
    if len(params) != 1:
        raise ValueError("results/attacks_vs_peers.json holds no single CW setting")
    return dict(json.loads(params.pop()))


def _key(setting: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    full = {**CW_DEFAULTS, **setting}
    return tuple(sorted((k, float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                        for k, v in full.items()))


def run_setting(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, setting: dict[str, Any]
                ) -> dict[str, Any]:
    """Success rate, median / mean L2 of the successes and wall time of CW(model, **setting) on (x, y)."""
    t = time.perf_counter()
    res = CW(model, seed=0, **setting)(x, y)
    seconds = time.perf_counter() - t
    l2 = res.l2[res.broken]
    return {"success": res.success_rate, "median_l2": float(l2.median()) if l2.numel() else math.nan,
            "mean_l2": float(l2.mean()) if l2.numel() else math.nan, "seconds": seconds,
            "iterations": res.iterations}


def bench_model(name: str, n: int, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every setting on the first ``n`` held-out images, attacking those the model classifies correctly."""
    model = load(name)
    x, y = load_dataset("mnist-t10k", "test", n=n)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    out: dict[str, Any] = {"model": name, "n": n, "attacked": int(correct.sum()), "runs": {}}
    done: dict[tuple[tuple[str, Any], ...], str] = {}
    for label, setting in settings.items():
        key = _key(setting)
        if key in done:
            out["runs"][label] = {**out["runs"][done[key]], "same_run_as": done[key]}
            continue
        out["runs"][label] = {"setting": setting, **run_setting(model, x, y, setting)}
        done[key] = label
        print(name, label, json.dumps(out["runs"][label]), flush=True)
    d, p = out["runs"]["defaults"], out["runs"]["parity"]
    out["median_l2_ratio"] = d["median_l2"] / p["median_l2"]
    out["met"] = d["success"] >= SUCCESS_TARGET and abs(out["median_l2_ratio"] - 1) <= L2_TOLERANCE
    return out


def _fmt_setting(s: dict[str, Any]) -> str:
    return f"{s['steps']} steps x {s['binary_search_steps']} rounds, c0 {s['initial_const']:g}, lr {s['lr']:g}"


def markdown(rows: list[dict[str, Any]], settings: dict[str, dict[str, Any]]) -> str:
    """The results table."""
    lines = ["Settings: " + "; ".join(f"**{k}** = {_fmt_setting({**CW_DEFAULTS, **v})}" for k, v in settings.items())
             + ". Unbounded CW-L2, confidence 0, abort early, seed 0, one thread, this code for every setting; "
             "success and L2 over the images the model classifies correctly; (= X): the same settings as X, "
             "run once.", "",
             "| model | n (attacked) | " + " | ".join(f"{k}: success / median L2 / s" for k in settings)
             + " | median L2 defaults / parity | met |",
             "|---|---|" + "---|" * len(settings) + "---|---|"]
    for r in rows:
        cells = []
        for k in settings:
            run = r["runs"][k]
            same = f" (= {run['same_run_as']})" if "same_run_as" in run else ""
            cells.append(f"{100 * run['success']:.1f} % / {run['median_l2']:.4f} / {run['seconds']:.1f}{same}")
        lines.append(f"| {r['model']} | {r['n']} ({r['attacked']}) | " + " | ".join(cells)
                     + f" | {r['median_l2_ratio']:.4f} | {'yes' if r['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write ``results/cw_defaults.{json,md}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(UNDEFENDED))
    parser.add_argument("--n", type=int, default=200, help="held-out images per model")
    parser.add_argument("--n-slow", type=int, default=100, help=f"held-out images for {', '.join(SLOW)}")
    parser.add_argument("--no-former", action="store_true", help="skip the pre-issue-12 defaults")
    parser.add_argument("--tag", default="cw_defaults")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings: dict[str, dict[str, Any]] = {"defaults": {}, "parity": parity_setting()}
    if not args.no_former:
        settings["former defaults"] = dict(FORMER_DEFAULTS)
    rows = [bench_model(name, args.n_slow if name in SLOW else args.n, settings) for name in args.models]
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"torch_threads": 1, "torch": torch.__version__, "args": vars(args), "cw_defaults": dict(CW_DEFAULTS),
            "settings": settings, "targets": {"success": SUCCESS_TARGET, "median_l2_tolerance": L2_TOLERANCE}}
    (RESULTS / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (RESULTS / f"{args.tag}.md").write_text(markdown(rows, settings))
    print(markdown(rows, settings))
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
