"""Certified accuracy of the certified-trained models by the strongest verifier: IBP, then CROWN,
then α-CROWN, then branch and bound, with an attack's upper bound beside it.

``verify train`` reports IBP-certified accuracy, a lower bound that is loose on the images IBP
cannot decide. This benchmark runs the toolkit's verifiers as a cascade on held-out images
8000.. of mnist-t10k at each model's certification ε (L∞ ball ∩ [0, 1]):

1. clean prediction (a wrong one is neither certified nor attacked);
2. IBP on every correct image, CROWN (dense engine) on those IBP leaves open;
3. PGD-``--steps`` with a random start, best of ``--restarts``, on every correct image;
4. α-CROWN (dense engine) on the images still open that PGD did not break;
5. branch and bound (:class:`verify.BranchAndBound`: its own PGD, α-CROWN root, ReLU splitting with
   β-CROWN bounds, exact leaves) on the images still open, ``--bab-time`` CPU seconds each: verified,
   falsified (a counterexample confirmed by a forward pass) or unknown.

"certified" is IBP ∨ CROWN ∨ α-CROWN ∨ BaB-verified; "attack bound" counts the correct images that
neither PGD nor BaB broke (no verifier can certify more); the gap between the two is the images BaB
left unknown. A certified image that PGD broke is a violation (a bug). With ``--autoattack K`` the
certified images among the first K also face AutoAttack (standard version, :class:`attacks.AutoAttack`):
one it breaks is a violation too. Per-image verdicts are kept, so the table gives the first 500 images
(the issue's protocol) next to all ``--n``.

Work is saved per chunk of :data:`CHUNK` images in ``OUT.jsonl`` (a rerun skips finished chunks); the
table is ``OUT.md`` and ``OUT.json``.

Run: ``python -m benchmarks.cert_targets ode-cert-0.1 ode-cert-0.3 --n 2000``
(``MODEL:EPS`` sets one model's ε; default: the ε in its checkpoint metadata).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks import PGD, AutoAttack
from models.data import load_dataset
from models.zoo import resolve
from studies._common import discordant, paired_difference
from verify import BranchAndBound, CertifyError, certify, lower, make_engine, spec_matrix

from ._cells import pct, resumable_cells

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 100
OFFSET = 8000
#: issue 14's targets: model name -> (ε, clean %, certified %); the wide ε = 0.1 ODE-net is held to ode-cert-0.1's
TARGETS = {"ode-cert-0.1": (0.1, 98.5, 95.0), "ode-cert-0.1-wide": (0.1, 98.5, 95.0), "ode-cert-0.3": (0.3, 97.0, 85.0)}
#: the stages that certify, with their per-image verdict letters (see :func:`cascade`)
STAGES = ("ibp", "crown", "alpha", "bab")
CERTIFIED, ATTACK_BOUND, BROKEN = "icab", "icabu", "mpf"
#: what identifies a saved chunk in ``OUT.jsonl``
KEY_FIELDS = ("kind", "model", "eps", "start", "size", "steps", "restarts", "bab_time")


def model_eps(spec: str, meta: dict[str, Any]) -> float:
    """The certification ε of a checkpoint (its metadata's certified accuracy, else its training recipe)."""
    acc = meta.get("certified_accuracy") or {}
    if "eps" in acc:
        return float(acc["eps"])
    cert = meta.get("cert_recipe") or {}
    if "eval_eps" in cert:
        return float(cert["eval_eps"])
    raise ValueError(f"{spec} has no certification ε in its metadata: give it as {spec}:EPS")


def make_bab(model: nn.Module, bab_time: float, seed: int = 0) -> BranchAndBound | None:
    """The model's branch and bound on a CPU-time limit, or None where it has no dense affine–ReLU graph
    (max pooling): then neither α-CROWN nor BaB runs (the dense α-CROWN would fall back to auto_LiRPA)."""
    try:
        bab = make_engine(lower(model), "inf", "bab", time_limit=bab_time)
    except CertifyError:  # "bab needs a dense affine–ReLU graph"
        return None
    bab.clock, bab.seed = time.process_time, seed
    return bab


def cascade(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, restarts: int,
            bab: BranchAndBound | None, seed: int = 0) -> dict[str, Any]:
    """One chunk's per-image verdicts and CPU seconds per stage (``bab`` from :func:`make_bab`).

    Returns:
        ``verdict``: one letter per image: ``m`` misclassified, ``i`` IBP, ``c`` CROWN, ``a`` α-CROWN,
        ``b`` BaB-verified certified; ``p`` broken by PGD, ``f`` falsified by BaB; ``u`` unknown
        (BaB's time limit); ``pgd``: ``1`` where PGD did not break a correct image; ``seconds``; ``bab``:
        per BaB call (index, status, domains, CPU seconds).
    """
    n = int(y.shape[0])
    verdict = ["?"] * n
    secs = {k: 0.0 for k in ("ibp", "crown", "pgd", "alpha", "bab")}

    def run(stage: str, fn):
        t0 = time.process_time()
        out = fn()
        secs[stage] += time.process_time() - t0
        return out

    with torch.no_grad():
        logits = model(x)
    ok = logits.argmax(1) == y
    open_ = ok.clone()

    def certify_open(stage: str, method: str, letter: str) -> None:
        idx = open_.nonzero().flatten()
        if len(idx):
            got = run(stage, lambda: certify(model, x[idx], y[idx], eps, "inf", method).certified)
            for j in idx[got].tolist():
                verdict[j] = letter
            open_[idx[got]] = False

    certify_open("ibp", "ibp", "i")
    certify_open("crown", "crown", "c")
    pgd_ok = torch.zeros(n, dtype=torch.bool)
    idx = ok.nonzero().flatten()
    if len(idx):
        res = run("pgd", lambda: PGD(model, eps, "inf", steps=steps, step_size=2.5 * eps / steps, random_start=True,
                                      restarts=restarts, seed=seed)(x[idx], y[idx]))
        pgd_ok[idx] = ~res.success.cpu()
    open_ &= pgd_ok
    if bab is not None:
        certify_open("alpha", "alpha-crown", "a")
    calls = []
    idx = open_.nonzero().flatten().tolist() if bab is not None else []
    if idx:
        C = spec_matrix(y, logits.shape[1])
        for j in idx:
            v = run("bab", lambda: bab.verdict(x[j:j + 1], eps, C[j]))
            verdict[j] = {"verified": "b", "falsified": "f"}.get(v.status, "u")
            calls.append([j, v.status, int(v.domains), round(float(v.seconds), 2)])
    for j in range(n):
        if not bool(ok[j]):
            verdict[j] = "m"
        elif verdict[j] == "?":
            verdict[j] = "u" if bool(pgd_ok[j]) else "p"  # open (no dense graph for α-CROWN / BaB), or broken
    return {"verdict": "".join(verdict), "pgd": "".join("1" if bool(v) else "0" for v in pgd_ok),
            "seconds": {k: round(v, 2) for k, v in secs.items()}, "bab": calls}


def autoattack_certified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, verdict: str,
                         seed: int = 0) -> dict[str, Any]:
    """AutoAttack on one chunk's certified images: ``robust`` one letter per image (``1`` survived, ``0``
    broken: a violation, ``-`` not certified so not attacked) and the CPU seconds."""
    idx = [j for j, v in enumerate(verdict) if v in CERTIFIED]
    robust = ["-"] * len(verdict)
    t0 = time.process_time()
    if idx:
        res = AutoAttack(model, eps, "inf", seed=seed)(x[idx], y[idx])
        for j, broken in zip(idx, res.success.tolist()):
            robust[j] = "0" if broken else "1"
    return {"robust": "".join(robust), "seconds": round(time.process_time() - t0, 2)}


def summarize(verdict: str, pgd: str, autoattack: str = "") -> dict[str, int]:
    """Counts of one verdict string: cumulative certified per stage, falsified, unknown, violations
    (certified, yet broken by PGD or, where ``autoattack`` covers it, by AutoAttack)."""
    n = len(verdict)
    counts = {"n": n, "clean": sum(v != "m" for v in verdict)}
    total = 0
    for stage, letter in zip(STAGES, CERTIFIED):
        total += verdict.count(letter)
        counts[f"+{stage}"] = total
    counts["certified"] = total
    counts["bab_falsified"] = verdict.count("f")
    counts["unknown"] = verdict.count("u")
    counts["attack_bound"] = sum(v not in BROKEN for v in verdict)
    aa = autoattack.ljust(n, "-")
    counts["violations"] = sum(v in CERTIFIED and (p == "0" or a == "0") for v, p, a in zip(verdict, pgd, aa))
    return counts


def _verdicts(verdict: str, kind: str) -> list[bool]:
    """Per image: correct (``clean``), certified, or neither broken nor misclassified (``attack_bound``)."""
    if kind == "clean":
        return [v != "m" for v in verdict]
    return [v in (CERTIFIED if kind == "certified" else ATTACK_BOUND) for v in verdict]


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The markdown table: every model on the first 500 and on all its images."""
    lines = [f"# Certified accuracy by the strongest verifier (IBP → CROWN → α-CROWN → BaB), held-out images "
             f"{OFFSET}.. of mnist-t10k", "",
             f"Command: `python -m benchmarks.cert_targets {' '.join(args.models)} --n {args.n} --bab-time "
             f"{args.bab_time:g}{f' --autoattack {args.autoattack}' if args.autoattack else ''}"
             f"{'' if Path(args.out) == RESULTS / 'cert_targets' else f' --out {args.out}'}`. Accuracy in % ± binomial standard error; each column adds the images the next "
             f"verifier certifies; PGD-{args.steps} ×{args.restarts} random starts; BaB {args.bab_time:g} CPU s per "
             "image; attack bound = correct images neither PGD nor BaB broke.", "",
             "| model | ε | images | clean | IBP | + CROWN | + α-CROWN | + BaB = certified | BaB falsified | "
             "unknown | attack bound | violations | target (clean / certified) |",
             "|" + "---|" * 13]
    for r in rows:
        for label, k in ([("first 500", 500)] if r["n"] > 500 else []) + [(f"all {r['n']}", r["n"])]:
            c = summarize(r["verdict"][:k], r["pgd"][:k], r.get("autoattack", "")[:k])
            tgt = TARGETS.get(r["model"])
            met = "–" if tgt is None or abs(tgt[0] - r["eps"]) > 1e-9 else (
                f"{tgt[1]:g} / {tgt[2]:g}: " + ("met" if 100 * c["clean"] / k >= tgt[1]
                                                and 100 * c["certified"] / k >= tgt[2] else "missed"))
            lines.append(f"| {r['model']} | {r['eps']:g} | {label} | {pct(c['clean'], k, 2)} | {pct(c['+ibp'], k, 2)} | "
                         f"{pct(c['+crown'], k, 2)} | {pct(c['+alpha'], k, 2)} | **{pct(c['certified'], k, 2)}** | "
                         f"{c['bab_falsified']} | {c['unknown']} | {pct(c['attack_bound'], k, 2)} | {c['violations']} | "
                         f"{met} |")
    same_eps = [r for r in rows[1:] if r["eps"] == rows[0]["eps"] and r["n"] == rows[0]["n"]]
    if same_eps:
        ref = rows[0]
        lines += ["", f"Paired differences against {ref['model']} on the same {ref['n']} images (points ± McNemar "
                  "standard error; in brackets the images counted for the model only / for the reference only):", "",
                  "| model | clean | certified | attack bound |", "|---|---|---|---|"]
        for r in same_eps:
            cells = []
            for kind in ("clean", "certified", "attack_bound"):
                a, b = _verdicts(r["verdict"], kind), _verdicts(ref["verdict"], kind)
                d, se = paired_difference(a, b)
                cells.append(f"{100 * d:+.2f} ± {100 * se:.2f} ({'/'.join(map(str, discordant(a, b)))})")
            lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    plain = [r["model"] for r in rows if not r.get("dense_graph", True)]
    if plain:
        lines += ["", "No dense affine–ReLU graph (max pooling), so no α-CROWN or BaB: " + ", ".join(plain)
                  + "; their open images that PGD did not break are counted as unknown."]
    aa = [r for r in rows if r.get("autoattack")]
    if aa:
        lines += ["", f"AutoAttack (standard) on the certified images among the first {args.autoattack} (a broken one "
                  "counts as a violation above): " + "; ".join(
                      f"{r['model']}: {r['autoattack'].count('0')} broken of "
                      f"{r['autoattack'].count('0') + r['autoattack'].count('1')} "
                      f"({r['autoattack_seconds']:.0f} CPU s)" for r in aa)]
    lines += ["", "CPU seconds per stage (all images): " + "; ".join(
        f"{r['model']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()) for r in rows)]
    return "\n".join(lines) + "\n"


def _parse(spec: str) -> tuple[str, float | None]:
    name, sep, eps = spec.rpartition(":")
    if sep and name and not name.endswith(".py") and not spec.startswith("gains:"):
        try:
            return name, float(eps)
        except ValueError:
            pass
    return spec, None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="zoo names or checkpoint stems, optionally NAME:EPS")
    p.add_argument("--n", type=int, default=2000, help="held-out images 8000..")
    p.add_argument("--steps", type=int, default=40, help="PGD steps")
    p.add_argument("--restarts", type=int, default=2, help="PGD restarts")
    p.add_argument("--bab-time", type=float, default=30.0, help="BaB CPU seconds per image")
    p.add_argument("--autoattack", type=int, default=0, metavar="K",
                   help="also run AutoAttack on the certified images among the first K (default 0: none)")
    p.add_argument("--out", default=str(RESULTS / "cert_targets"))
    args = p.parse_args(argv)
    if (not 1 <= args.n <= 2000 or args.steps < 1 or args.restarts < 1 or not args.bab_time > 0
            or not 0 <= args.autoattack <= args.n):
        print(f"error: need 1 <= --n <= 2000, --steps >= 1, --restarts >= 1, --bab-time > 0 and "
              f"0 <= --autoattack <= --n, got --n {args.n} --steps {args.steps} --restarts {args.restarts} "
              f"--bab-time {args.bab_time:g} --autoattack {args.autoattack}", file=sys.stderr)
        return 2
    todo = []
    for spec in args.models:
        name, eps = _parse(spec)
        try:
            model, meta = resolve(name)  # every model checked before any work
            eps = model_eps(name, meta) if eps is None else eps
        except (KeyError, ValueError, FileNotFoundError) as e:
            print(f"error: {spec}: {e}", file=sys.stderr)
            return 2
        if not (math.isfinite(eps) and eps > 0):
            print(f"error: {spec}: ε must be > 0", file=sys.stderr)
            return 2
        todo.append((name, eps, model.eval()))
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    config = {"steps": args.steps, "restarts": args.restarts, "bab_time": args.bab_time}
    x, y = load_dataset("mnist-t10k", "test", n=args.n)
    chunks = [(s, min(CHUNK, args.n - s)) for s in range(0, args.n, CHUNK)]
    rows = []
    for name, eps, model in todo:
        bab = make_bab(model, args.bab_time)
        cascades: dict[int, dict[str, Any]] = {}

        def cell(kind: str, model_: str, eps_: float, s: int, m: int, *_: Any) -> dict[str, Any]:
            xb, yb = x[s:s + m], y[s:s + m]
            out_ = (cascade(model, xb, yb, eps, args.steps, args.restarts, bab) if kind == "cascade" else
                    autoattack_certified(model, xb, yb, eps, cascades[s]["verdict"][:m]))
            return {"kind": kind, "model": model_, "eps": eps_, "start": s, "size": m, **config, "config": config,
                    **out_}

        key = (name, eps, args.steps, args.restarts, args.bab_time)
        done = resumable_cells(jsonl, KEY_FIELDS, [("cascade", *key[:2], s, m, *key[2:]) for s, m in chunks], cell,
                               defaults={"kind": "cascade"})
        cascades.update((c["start"], c) for c in done)
        aa = resumable_cells(jsonl, KEY_FIELDS, [("autoattack", *key[:2], s, min(m, args.autoattack - s), *key[2:])
                                                 for s, m in chunks if s < args.autoattack], cell,
                             defaults={"kind": "cascade"})
        row = {"model": name, "eps": eps, "n": args.n, "verdict": "".join(c["verdict"] for c in done),
               "pgd": "".join(c["pgd"] for c in done),
               "seconds": {k: sum(c["seconds"][k] for c in done) for k in done[0]["seconds"]},
               "dense_graph": bab is not None}
        if aa:
            row["autoattack"] = "".join(a["robust"] for a in aa)[:args.autoattack]
            row["autoattack_seconds"] = sum(a["seconds"] for a in aa)
        rows.append(row)
    md = report(rows, args)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(
        {"config": config, "n": args.n, "autoattack": args.autoattack,
         "rows": [{**r, "first500": summarize(r["verdict"][:500], r["pgd"][:500], r.get("autoattack", "")[:500]),
                   "all": summarize(r["verdict"], r["pgd"], r.get("autoattack", ""))} for r in rows]},
        indent=1) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
