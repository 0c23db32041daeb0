"""Our certified CAS ODE-net (`ode-cas-cert-0.1`) next to the fixed-step `ode-cert-0.1` and GAINS.

Per (model, held-out image, ε): clean correctness, the certificate of the model *as deployed*
(a controlled adaptive solver: the trajectory graph's CROWN, :class:`verify.TrajectoryGraph`,
with its node count; a fixed-step solver: IBP and CROWN of its unrolled steps), the wall and
CPU seconds of that certificate (one image per call, one thread, the verifier built once per
model), and PGD through the deployed solver (L∞, ``--pgd-steps`` steps of 2.5·ε/steps). A
certified image that PGD beats is counted as a soundness violation. Rows are appended to
``cas_cert.jsonl`` as they are produced and a rerun resumes.

GAINS (its released ε_t = 0.11 model, its own verifier) is read from the cache of
:mod:`benchmarks._gains_peer` (images it has covered; GAINS runs as a subprocess elsewhere, never here), and our PGD on
its deployed CAS (``models.zoo.resolve("gains:PATH")``) with the same settings as ours.

Also measured per model: how alive its vector field is, the fraction of the field's first
ReLU units active on some clean image, and the mean interval width of f(0, ·) over the ε = 0.1
boxes (IBP): 0 means the ODE block is a constant shift on every ball.

Run: ``python -m benchmarks.cas_cert [--n 100]`` (results in
``benchmarks/results/cas_cert.json|md|jsonl``).

References:
    Zeqiri, Müller, Fischer, Vechev, "Efficient Certified Training and Robustness Verification
    of Neural ODEs" (GAINS), ICLR 2023.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks import PGD
from models.data import load_dataset
from models.activity import field_activity
from models.zoo import resolve
from verify import lower
from verify._ibp import field_box, input_box, part_box
from verify._lower import CASFlow, Flow, has_cas
from verify.certify import Certifier

from ._cells import pct
from ._gains_peer import GAINS_EPS, load_rows
from .cert_vs_gains import _gains_pgd

RESULTS = Path(__file__).resolve().parent / "results"
#: position of mnist-t10k's first held-out image in the official test set.
OFFSET = 8000


def _methods(model: nn.Module) -> tuple[str, ...]:
    return ("crown",) if has_cas(model) else ("ibp", "crown")


def field_width(model: nn.Module, x: torch.Tensor, eps: float) -> float:
    """The mean IBP width of f(0, ·) over the ε-boxes of the ODE block's input."""
    ir = lower(model)
    k = next(i for i, p in enumerate(ir.parts) if isinstance(p, (Flow, CASFlow)))
    flow = ir.parts[k]
    field = flow.field if isinstance(flow, CASFlow) else flow.steps[0].field
    box = input_box(x, eps)
    with torch.no_grad():
        for part in ir.parts[:k]:
            box = part_box(part, box)
        lo, hi = field_box(field, 0.0, box)
    return float((hi - lo).mean())


def _done(path: Path) -> set[tuple[str, int, float]]:
    if not path.exists():
        return set()
    return {(r["model"], r["index"], r["eps"]) for r in map(json.loads, path.read_text().splitlines()) if r}


def _run_model(name: str, x: torch.Tensor, y: torch.Tensor, eps_list: tuple[float, ...], args: argparse.Namespace,
               jsonl: Path) -> None:
    """Append the rows of one model not yet in ``jsonl``."""
    model, _ = resolve(name)
    done = _done(jsonl)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).tolist()
    certs = {m: Certifier(model, "inf", m) for m in _methods(model)}
    for eps in eps_list:
        todo = [i for i in range(x.shape[0]) if (name, OFFSET + i, eps) not in done]
        if not todo:
            continue
        atk = PGD(model, eps, "inf", steps=args.pgd_steps, step_size=2.5 * eps / args.pgd_steps,
                  restarts=args.pgd_restarts, seed=args.seed)
        idx = torch.tensor(todo)
        attacked = dict(zip(todo, atk(x[idx], y[idx]).success.tolist()))
        for i in todo:
            row: dict[str, Any] = {"model": name, "index": OFFSET + i, "label": int(y[i]), "eps": eps,
                                   "clean_correct": bool(clean[i]), "pgd_holds": bool(clean[i] and not attacked[i])}
            for method, cert in certs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                lb = cert.margins(x[i:i + 1], y[i:i + 1], eps)
                row[method] = bool((lb > 0).all())
                row[f"{method}_s"] = round(time.perf_counter() - t0, 4)
                row[f"{method}_cpu_s"] = round(time.process_time() - c0, 4)
                stats = getattr(cert.bounds, "last_stats", None)
                if stats:
                    row["nodes"], row["paths"], row["branch_nodes"] = stats[0].nodes, stats[0].paths, \
                        stats[0].branch_nodes
            row["certified"] = any(row[m] for m in certs)
            with jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")


def _summary(rows: list[dict[str, Any]], model: str, eps: float, indices: set[int]) -> dict[str, Any]:
    rs = [r for r in rows if r["model"] == model and r["eps"] == eps and r["index"] in indices]
    n = len(rs)
    s: dict[str, Any] = {"model": model, "eps": eps, "n": n, "clean": sum(r["clean_correct"] for r in rs),
                         "certified": sum(r["certified"] for r in rs), "pgd": sum(r["pgd_holds"] for r in rs),
                         "violations": sum(r["certified"] and not r["pgd_holds"] for r in rs)}
    for m in ("ibp", "crown"):
        if rs and m in rs[0]:
            s[m] = sum(r[m] for r in rs)
            s[f"{m}_s"] = statistics.mean(r[f"{m}_s"] for r in rs)
            s[f"{m}_cpu_s"] = statistics.mean(r[f"{m}_cpu_s"] for r in rs)
    if rs and "nodes" in rs[0]:
        nodes = [r["nodes"] for r in rs]
        s["nodes_median"], s["nodes_max"] = statistics.median(nodes), max(nodes)
        s["branching"] = sum(r["branch_nodes"] > 0 for r in rs)
    return s


def _gains(target: float, eps: float, indices: set[int], pgd: dict[str, Any]) -> dict[str, Any] | None:
    rows = [r for r in load_rows(target) if r["eps"] == eps and r["index"] in indices]
    if not rows:
        return None
    times = [r["time_s"] for r in rows if r["attempted"] and r["time_s"] is not None]
    out = {"n": len(rows), "clean": sum(r["clean_correct"] for r in rows), "certified": sum(r["cert"] for r in rows),
           "seconds": statistics.mean(times) if times else None, "attempts": len(times)}
    if pgd.get("available"):
        out["pgd"] = pgd[f"{eps:g}"]["holds"]
    return out


def _markdown(res: dict[str, Any]) -> str:
    lines = ["# `ode-cas-cert-0.1` (certified for its deployed CAS) next to `ode-cert-0.1` and GAINS", "",
             f"Command: `{res['command']}`. One thread; ± is the binomial standard error; seconds are wall (CPU) per "
             "(image, ε), one image per call.", ""]
    for block in res["tables"]:
        lines += [f"## {block['title']}", "",
                  "| model | certificate covers | ε | clean | certified | IBP | CROWN | PGD-40 | s/(image, ε) | "
                  "graph nodes (median / max; branching images) | violations |", "|" + "---|" * 11]
        for s in block["rows"]:
            n = s["n"]
            if s.get("gains"):
                sec = "–" if s["seconds"] is None else f"{s['seconds']:.1f} ({s['attempts']} attempts)"
                pgd = pct(s["pgd"], n) if "pgd" in s else "–"
                lines.append(f"| GAINS ε_t 0.11 | its CAS dopri5 (its verifier) | {s['eps']:g} | {pct(s['clean'], n)} | "
                             f"{pct(s['certified'], n)} | – | – | {pgd} | {sec} | – | – |")
                continue
            sec = " / ".join(f"{s[f'{m}_s']:.3f} ({s[f'{m}_cpu_s']:.3f})" for m in ("ibp", "crown") if f"{m}_s" in s)
            nodes = (f"{s['nodes_median']:g} / {s['nodes_max']}; {s['branching']}" if "nodes_median" in s else "–")
            lines.append(f"| {s['model']} | {res['covers'][s['model']]} | {s['eps']:g} | {pct(s['clean'], n)} | "
                         f"{pct(s['certified'], n)} | {pct(s['ibp'], n) if 'ibp' in s else '–'} | "
                         f"{pct(s['crown'], n)} | {pct(s['pgd'], n)} | {sec} | {nodes} | {s['violations']} |")
        lines.append("")
    lines += ["## The vector fields", "", "| model | field ReLU units active on some clean image (per ReLU module, any "
              "solver stage) | mean IBP width of f(0, ·) over the ε = 0.1 boxes |", "|---|---|---|"]
    for name, a in res["field_activity"].items():
        active = ", ".join(f"{m} {100 * v:.1f} %" for m, v in a["active"].items()) or "no field ReLU"
        lines.append(f"| {name} | {active} | {a['f_width_ibp']:.4g} |")
    lines += ["", *[f"- {t}" for t in res["notes"]], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ode-cas-cert-0.1", "ode-cert-0.1"])
    p.add_argument("--n", type=int, default=100, help="held-out images 8000..")
    p.add_argument("--eps", nargs="+", type=float, default=list(GAINS_EPS))
    p.add_argument("--target", type=float, default=0.11, help="GAINS model (its training ε)")
    p.add_argument("--pgd-steps", type=int, default=40)
    p.add_argument("--pgd-restarts", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "cas_cert"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    eps_list = tuple(args.eps)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    x, y = load_dataset("mnist-t10k", "test", n=args.n)
    covers, activity = {}, {}
    for name in args.models:
        _run_model(name, x, y, eps_list, args, jsonl)
        model, _ = resolve(name)
        covers[name] = lower(model).description
        activity[name] = {"active": field_activity(model, x), "f_width_ibp": field_width(model, x, 0.1)}
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line]
    ours = set(range(OFFSET, OFFSET + args.n))
    g_idx = {r["index"] for r in load_rows(args.target)} & ours
    tables = [{"title": f"Held-out images {OFFSET}–{OFFSET + args.n - 1} (n = {args.n})",
               "rows": [_summary(rows, m, e, ours) for m in args.models for e in eps_list]}]
    if g_idx:
        side = [_summary(rows, m, e, g_idx) for m in args.models for e in eps_list]
        pgd = _gains_pgd(sorted(g_idx), eps_list, args.target, args.pgd_steps, args.pgd_restarts, args.seed)
        for e in eps_list:
            g = _gains(args.target, e, g_idx, pgd)
            if g is not None:
                side.append({"gains": True, "eps": e, **g})
        tables.append({"title": f"The {len(g_idx)} images GAINS has covered ({min(g_idx)}–{max(g_idx)})", "rows": side})
    res: dict[str, Any] = {
        "command": "python -m benchmarks.cas_cert" + (f" --n {args.n}" if args.n != 100 else "")
        + (f" --models {' '.join(args.models)}" if args.models != p.get_default("models") else "")
        + (f" --eps {' '.join(f'{e:g}' for e in eps_list)}" if list(eps_list) != list(GAINS_EPS) else "")
        + (f" --out {args.out}" if args.out != p.get_default("out") else ""),
        "models": args.models, "covers": covers, "field_activity": activity, "tables": tables,
        "pgd": {"steps": args.pgd_steps, "restarts": args.pgd_restarts, "step_size": "2.5·ε/steps", "seed": args.seed},
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
        "notes": [
            "certified: the deployed solver's certificate (CAS: trajectory-graph CROWN, which takes the better of "
            "its interval and back-substituted bounds; fixed step: IBP or CROWN of the unrolled steps).",
            "GAINS: its own verifier's rows (benchmarks/results/gains_peer), ε = 0.15 attempted only where 0.1 "
            "certified and 0.2 only where 0.15 did; its PGD is our PGD on its deployed CAS (gains:PATH), "
            "same settings. GAINS's seconds are wall time of its verifier on the same shared machine.",
        ],
    }
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(_markdown(res))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
