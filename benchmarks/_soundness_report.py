"""Summary and Markdown report of soundness-campaign records (``benchmarks/soundness.py``)."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any


def _reason(err: str) -> str:
    """An error message with its numbers, shapes and layer names blurred, to group alike errors."""
    return re.sub(r"\d+(\.\d+)?", "#", re.sub(r"layer [\w.]+ ", "layer _ ", err))[:160]


def _leaves(layers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [leaf for spec in layers for leaf in (_leaves(spec["layers"]) if spec["t"] == "seq" else [spec])]


def features(rec: dict[str, Any]) -> list[str]:
    """The options of a trial's network that a verifier may mishandle (to classify violations)."""
    arch, norm = rec["arch"], rec["norm"]
    if arch["kind"] != "sequential":
        tags = [arch["kind"]]
        if arch.get("time_channel"):
            tags.append("time channel")
        if arch["kind"] == "ode" and arch["hidden"] != arch["channels"]:
            tags.append("hidden != channels")
        if arch["kind"] == "ode" and arch["method"] in ("dopri5", "bosh3"):
            tags.append("adaptive solver")
        if arch.get("head_pool", 1) > 1:
            tags.append("avgpool head")
        return tags
    leaves = _leaves(arch["layers"])
    tags = []
    if norm == "2" and leaves[0]["t"] in ("relu", "maxpool", "avgpool", "flatten"):
        tags.append(f"L2 with {leaves[0]['t']} on the input")
    checks = [("conv", lambda v: v["mode"] != "zeros", "non-zero padding mode"),
              ("conv", lambda v: v["g"] > 1, "conv groups"), ("conv", lambda v: v["d"] > 1, "conv dilation"),
              ("conv", lambda v: v["p"] == "same", "padding 'same'"),
              ("avgpool", lambda v: v["s"] < v["k"], "avgpool stride < kernel"),
              ("maxpool", lambda v: v["s"] < v["k"], "maxpool stride < kernel"),
              ("avgpool", lambda v: v["p"] > 0, "avgpool padding"),
              ("avgpool", lambda v: not v["cip"] and v["p"] > 0, "avgpool count_include_pad=False"),
              ("maxpool", lambda v: v["p"] > 0, "maxpool padding"), ("maxpool", lambda v: v["d"] > 1, "maxpool dilation"),
              ("avgpool", lambda v: v["ceil"], "ceil_mode"), ("maxpool", lambda v: v["ceil"], "ceil_mode"),
              ("avgpool", lambda v: True, "avgpool"), ("maxpool", lambda v: True, "maxpool")]
    for t, test, tag in checks:
        if tag not in tags and any(v["t"] == t and test(v) for v in leaves):
            tags.append(tag)
    return tags


def _kind(rec: dict[str, Any], used: str) -> str:
    """Known bug (1) / (2) of the dense engine, (3) an adaptive solver certified, else the
    suspicious options the network has."""
    tags = features(rec)
    if used == "dense" and "non-zero padding mode" in tags:
        return "(1) dense engine, non-zero padding mode"
    if used == "dense" and any(t.startswith("L2 with relu") for t in tags):
        return "(2) dense engine, L2 with ReLU on the input"
    if "adaptive solver" in tags:
        return f"(3) adaptive solver certified ({used})"
    return f"{used}: " + (", ".join(tags) or "no listed option")


def _violation_records(rec: dict[str, Any], res: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """One record per violated margin: the trial's architecture, image, ε and the margin's numbers."""
    return [{"seed": rec["seed"], "trial": rec["trial"], "kind": kind, "features": features(rec),
             "arch": rec["arch"], "image": rec["image"], "norm": rec["norm"], "eps": rec["eps"],
             "label": rec["label"], "method": res["method"], "engine": res["engine"],
             "used": res["used"], **{k: v[k] for k in ("row", "j", "bound", "attacked_margin")}}
            for v in res["violations"]]


def _table(rows: dict[tuple[str, str, str], dict[str, Any]], order: Sequence[tuple[str, str]]
           ) -> list[dict[str, Any]]:
    """The per-(method, engine, norm) rows in table order, slacks reduced to the median."""
    table = []
    for row in sorted(rows.values(), key=lambda r: (list(order).index((r["method"], r["engine"])), r["norm"])):
        sl = sorted(row.pop("slacks"))
        row["median_slack"] = sl[len(sl) // 2] if sl else None
        row["worst_slack"] = None if math.isinf(row["worst_slack"]) else row["worst_slack"]
        row["used"] = dict(row["used"])
        table.append(row)
    return table


def summarize(records: Sequence[dict[str, Any]], wall: float | None, order: Sequence[tuple[str, str]],
              settings: dict[str, Any], max_records: int = 1000) -> dict[str, Any]:
    """Counts per (method, engine, norm) and per architecture, refusal reasons, violations, worst slack.

    ``order`` lists the (method, engine) pairs in table order; ``settings`` (tolerance, attack)
    are copied into the summary.

    ``wall`` is used when a record lacks its ``finished_at`` time; else wall time is the span from
    the first trial's start to the last trial's end (an over-estimate across interrupted runs).
    """
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    reasons: dict[str, Counter] = defaultdict(Counter)
    coverage: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    violations = []
    for rec in records:
        for key, res in rec["methods"].items():
            row = rows.setdefault((res["method"], res["engine"], rec["norm"]), {
                "method": res["method"], "engine": res["engine"], "norm": rec["norm"], "trials": 0, "checked": 0,
                "margins_checked": 0, "violated": 0, "refused": 0, "failed": 0, "crashed": 0, "invalid": 0, "used": Counter(),
                "worst_slack": math.inf, "worst_at": None, "slacks": []})
            status = res["status"]
            row["trials"] += 1
            row[status] += 1
            coverage[key][rec["arch"]["kind"]][status] += 1
            if status not in ("checked", "violated"):
                where = res.get("used", res.get("stage"))
                reasons[f"{key} {rec['norm']}"][f"{status} ({where}): {_reason(res['error'])}"] += 1
                continue
            if status == "violated":
                row["checked"] += 1
            row["margins_checked"] += len(res["bounds"])
            row["used"][res["used"]] += 1
            row["slacks"].append(res["slack"])
            if res["slack"] < row["worst_slack"]:
                row["worst_slack"], row["worst_at"] = res["slack"], rec["trial"]
            if status == "violated":
                kind = _kind(rec, res["used"])
                g = groups.setdefault((res["method"], res["engine"], res["used"], kind), {
                    "method": res["method"], "engine": res["engine"], "used": res["used"], "kind": kind,
                    "trials": 0, "margins": 0, "worst_slack": 0.0, "examples": []})
                g["trials"] += 1
                g["margins"] += len(res["violations"])
                g["worst_slack"] = min(g["worst_slack"], res["slack"])
                if len(g["examples"]) < 8:
                    g["examples"].append(rec["trial"])
                violations += _violation_records(rec, res, kind)
    table = _table(rows, order)
    checked = [r for r in table if r["worst_slack"] is not None]
    if records and all("finished_at" in r for r in records):  # first trial's start to last trial's end
        wall = max(r["finished_at"] for r in records) - min(r["finished_at"] - r["seconds"] for r in records)
    return {"trials": len(records), "seeds": sorted({r["seed"] for r in records}),
            "fingerprints": sorted({r.get("fingerprint", "") for r in records}),
            "alpha_every": sorted({r.get("alpha_every") for r in records}),
            "violations": len(violations), "violating_trials": sorted({(v["seed"], v["trial"]) for v in violations}),
            "worst_slack": min((r["worst_slack"] for r in checked), default=None),
            "trial_seconds": sum(r["seconds"] for r in records), "wall_seconds": wall,
            "architectures": dict(Counter(r["arch"]["kind"] for r in records)),
            "norms": dict(Counter(r["norm"] for r in records)), **settings,
            "table": table, "coverage": {k: {a: dict(c) for a, c in v.items()} for k, v in coverage.items()},
            "violation_groups": sorted(groups.values(), key=lambda g: -g["trials"]),
            "refused": {k: dict(v) for k, v in reasons.items()},
            "violation_records": violations[:max_records], "violation_records_truncated": len(violations) > max_records}


def markdown(s: dict[str, Any]) -> str:
    """The summary as a Markdown report."""
    fmt = lambda v: "–" if v is None else f"{v:.3g}"  # noqa: E731
    lines = [f"# Soundness campaign: {s['trials']} trials, seed(s) {s['seeds']}, code {s['fingerprints']}", "",
             f"Violations: **{s['violations']}** margins in {len(s['violating_trials'])} trials. Worst slack of a "
             f"checked bound {fmt(s['worst_slack'])}. Trial time {s['trial_seconds']:.0f} s (sum over workers), "
             f"wall {fmt(s['wall_seconds'])} s. Architectures {s['architectures']}; norms {s['norms']}; alpha-crown and "
             f"lp-all on trials i % {s['alpha_every']} == 0; tolerance {s['tolerance']}; attack {s['attack']} plus the clean "
             "point.", "",
             "| method | engine | norm | trials | checked | margins | violated | refused | failed | crashed | invalid "
             "| engine used | worst slack (trial) | median slack |", "|" + "---|" * 14]
    for r in s["table"]:
        used = ", ".join(f"{k} {v}" for k, v in r["used"].items())
        lines.append(f"| {r['method']} | {r['engine']} | {r['norm']} | {r['trials']} | {r['checked']} | "
                     f"{r['margins_checked']} | {r['violated']} | {r['refused']} | {r['failed']} | {r['crashed']} | {r['invalid']} | "
                     f"{used} | {fmt(r['worst_slack'])} ({r['worst_at']}) | {fmt(r['median_slack'])} |")
    kinds = sorted(s["architectures"])
    lines += ["", "## Coverage by architecture: checked (violated) / trials", "",
              "| method/engine | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 1)]
    for key, per in s["coverage"].items():
        cells = []
        for k in kinds:
            c = per.get(k, {})
            n, v = sum(c.values()), c.get("violated", 0)
            cells.append(f"{c.get('checked', 0) + v} ({v}) / {n}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if s["violation_groups"]:
        lines += ["", "## Violations by method, engine used and kind", "",
                  "| method | engine (used) | kind | trials | margins | worst slack | example trials |", "|" + "---|" * 7]
        for g in s["violation_groups"]:
            lines.append(f"| {g['method']} | {g['engine']} ({g['used']}) | {g['kind']} | {g['trials']} | "
                         f"{g['margins']} | {fmt(g['worst_slack'])} | {', '.join(map(str, g['examples']))} |")
    lines += ["", "## Refused / failed / crashed, by reason (engine or stage)", ""]
    for key, reasons in sorted(s["refused"].items()):
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"- `{key}` ×{n}: {reason}")
    lines += ["", "Replay a trial: `python -m benchmarks.soundness --seed SEED --replay TRIAL` (the JSON has every "
              "violating margin's architecture, image, ε, norm, bound and attacked margin)."]
    return "\n".join(lines) + "\n"
