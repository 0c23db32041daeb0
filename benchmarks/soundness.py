"""Soundness campaign (issue 12): random small networks, every verifier, bounds vs attacked margins.

Each trial draws, from ``numpy.random.default_rng([seed, trial])`` (so trial i replays alone),
one random small classifier and one image, then bounds the margins f_y − f_j (y = the model's
prediction, every j ≠ y) with every method and engine over the ε-ball ∩ [0, 1] and checks the
bounds against the smallest margins found in that set:

* networks: ``nn.Sequential`` of Conv2d (kernel 1–4, stride 1/2, padding 0/1/2 or "same",
  padding modes zeros/reflect/replicate/circular, dilation 1/2, groups, with/without bias),
  AvgPool2d (padding, count_include_pad, ceil_mode), MaxPool2d (padding, dilation, ceil_mode),
  Identity, nested Sequentials, Flatten, Linear and ReLU anywhere (first and last included);
  ``ODENet`` with the verifiable field (time channel or not, hidden width ≠ channels, every
  fixed-step method of ``models.solver.FIXED_METHODS``, 1–3 steps, random T; a few adaptive
  solvers, which certification should refuse); ``ResNet`` (tied or not, step s, time
  channel); ``MLP``. Weights are rescaled by a random gain and biases redrawn so that ReLUs
  are unstable; 1–2 channels, 6x6 to 14x14 inputs, 2–10 classes.
* images: MNIST crops and downsamples (many exact 0 pixels) or random uniform, sparse, binary
  and mid-grey images.
* ε: 0 in 4 % of trials, else r0·10^U(−2, 1.3) with r0 = min_j m_j / ‖∇m_j‖_dual, the
  first-order radius, so ε is both far below and far above the radius; norm inf or 2.
* methods: ibp, crown (engine "auto": the dense engine when the model has a dense graph, else
  auto_LiRPA; and engine "auto_lirpa"), forward, lipschitz on every trial; alpha-crown (slow
  through auto_LiRPA) and lp-all (HiGHS, up to a minute on a 3-step ODE-net; L∞ and dense
  graphs only, refused otherwise) on trials with ``trial % alpha_every == 0``.
* attack: the clean point, 32 sampled points (L∞: random clipped corners and uniform points of
  the box [x−ε, x+ε] ∩ [0, 1]; L2: random directions at radius ε and uniform points of the ball,
  clipped to [0, 1], which keeps them in the ball) and a per-margin PGD (each margin minimised
  separately, 2 restarts, one from x, 20 steps of 2.5ε/20, projected to ball ∩ [0, 1]); every
  point evaluated scores every margin. For ``norm="2"`` the certificate covers the whole ball,
  of which this checks the part inside [0, 1].
* violation: a found margin m < bound − tol with tol = 1e-5·(1 + |bound| + max_j |f_j(x)|):
  float32 round-off of a margin f_y − f_j is relative to the logits it subtracts, not to the
  difference, and two evaluations of the same network in another summation order differ by a
  few 1e-7 of that scale; 1e-5 leaves a factor of ~30 while a real unsoundness of 1e-5·scale
  is still caught. Slack = m − bound (min over found points). A method that raises is
  "refused" (a clear refusal: UnsupportedLayerError, GraphError, CertifyError, LipschitzError,
  TableauError, NotImplementedError), "failed" (EngineError: auto_LiRPA failed inside its own
  code on a model it accepted, reported to the user as one clear error) or "crashed" (any other
  exception: a bug of ours), never a pass.

Usage: ``python -m benchmarks.soundness --trials 10000 [--jobs 2] [--seed 0] [--out runs/soundness]``
(about 20 min on two cores; ``--start K --trials 2500`` runs a quarter, about 5 min, and the
report of all 10,000 comes from ``--report`` once every quarter has run)
(``--start`` and ``--trials`` select a subset; one JSON line per finished trial is appended to
``OUT/trials.jsonl`` and trials already there for the same seed and the same code are skipped on
rerun; the code fingerprint hashes verify/, lipbound/, models/ and :data:`CAMPAIGN`, the version
of the trial drawing, attack and check). ``--replay I`` reruns trial I alone and prints its
record; ``--report`` only summarises the records already in OUT (the latest one of each trial).
Writes benchmarks/results/soundness.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import math
import multiprocessing as mp
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._soundness_draw import build_model, draw_arch, first_order_radius, make_image, mnist, spec_rows
from benchmarks._soundness_report import markdown as _markdown
from benchmarks._soundness_report import summarize as _summarize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: (method, engine) pairs bounded on every trial; alpha-crown and lp-all on a fraction (``alpha_every``).
METHODS: tuple[tuple[str, str], ...] = (("ibp", "auto"), ("crown", "auto"), ("crown", "auto_lirpa"),
                                        ("forward", "auto"), ("lipschitz", "auto"), ("alpha-crown", "auto"),
                                        ("lp-all", "auto"))
#: methods run only on trials with ``trial % alpha_every == 0``.
OCCASIONAL = ("alpha-crown", "lp-all")
REFUSALS = ("UnsupportedLayerError", "GraphError", "_LayoutError", "CertifyError", "LipschitzError",
            "TableauError", "NotImplementedError", "SolverConfigError")
#: auto_LiRPA failed inside its own code (a clear error, no bound): "failed", apart from refusals.
FAILURES = ("EngineError",)
TOL = 1e-5
#: version of what a trial is (drawing, attack, check); bump it when they change, so that a
#: resumed run redoes the trials (edits to the report only do not change it).
CAMPAIGN = "soundness-1"
SAMPLES, PGD_STEPS, RESTARTS = 32, 20, 2




# ---- the attack -----------------------------------------------------------------------------
class _Best:
    """Smallest margin found per row, and the point that attained it."""

    def __init__(self, model: nn.Module, C: torch.Tensor, x: torch.Tensor) -> None:
        self.model, self.C = model, C
        self.value = torch.full((C.shape[0],), math.inf)
        self.point = x.expand(C.shape[0], *x.shape[1:]).clone()
        self.count = 0

    def score(self, z: torch.Tensor, margins: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            m = margins if margins is not None else self.model(z) @ self.C.T  # (B, K-1)
            val, idx = m.min(0)
            better = val < self.value
            self.value = torch.where(better, val, self.value)
            self.point[better] = z[idx[better]]
            self.count += z.shape[0]

    def finish(self, x: torch.Tensor, eps: float, norm: str) -> None:
        """Check that every point lies in the set; re-score each alone (a batched adaptive solve
        shares its steps across the batch, so only a lone evaluation is the model's margin)."""
        d = (self.point - x).flatten(1)
        size = d.abs().amax(1) if norm == "inf" else d.norm(dim=1)
        if bool((size > eps * (1 + 1e-5) + 1e-6).any()) or self.point.min() < 0 or self.point.max() > 1:
            raise AssertionError(f"attack left the perturbation set: size {float(size.max())} > eps {eps}")
        with torch.no_grad():
            self.value = torch.stack([(self.model(p[None]) @ self.C[i])[0] for i, p in enumerate(self.point)])


def _to_set(x: torch.Tensor, z: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "inf":
        return torch.minimum(torch.maximum(z, (x - eps).clamp(0, 1)), (x + eps).clamp(0, 1))
    d = z - x
    n = d.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, *[1] * (x.dim() - 1))
    return (x + d * (eps / n).clamp(max=1.0)).clamp(0, 1)  # clipping to [0, 1] stays in the ball


def _random_points(x: torch.Tensor, eps: float, norm: str, n: int, g: torch.Generator) -> torch.Tensor:
    shape = (n, *x.shape[1:])
    if norm == "inf":
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        corner = torch.where(torch.rand(shape, generator=g) < 0.5, lo, hi)
        uniform = lo + (hi - lo) * torch.rand(shape, generator=g)
        return torch.cat([corner[: n // 2], uniform[n // 2:]])
    d = torch.randn(shape, generator=g)
    d = d / d.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, *[1] * (x.dim() - 1))
    r = torch.ones(n)
    r[n // 2:] = torch.rand(n - n // 2, generator=g) ** (1.0 / x[0].numel())
    return (x + eps * (1 - 1e-6) * r.view(-1, *[1] * (x.dim() - 1)) * d).clamp(0, 1)


def attack(model: nn.Module, x: torch.Tensor, C: torch.Tensor, eps: float, norm: str, seed: int) -> _Best:
    """The clean point, sampled points and a per-margin PGD inside the ε-ball ∩ [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    best = _Best(model, C, x)
    best.score(x)
    if eps == 0:
        best.finish(x, eps, norm)
        return best
    best.score(_random_points(x, eps, norm, SAMPLES, g))
    rows = C.shape[0]
    target = torch.arange(rows).repeat(RESTARTS)
    z = torch.cat([x.expand(rows, *x.shape[1:]), _random_points(x, eps, norm, rows * (RESTARTS - 1), g)])
    alpha = 2.5 * eps / PGD_STEPS
    for _ in range(PGD_STEPS):
        z = z.detach().requires_grad_(True)
        m = model(z) @ C.T
        best.score(z.detach(), m.detach())
        (grad,) = torch.autograd.grad(m.gather(1, target.view(-1, 1)).sum(), z)
        with torch.no_grad():
            if norm == "inf":
                step = grad.sign()
            else:
                step = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, *[1] * (x.dim() - 1))
            z = _to_set(x, z - alpha * step, eps, norm)
    best.score(z.detach())
    best.finish(x, eps, norm)
    return best


def check(bounds: torch.Tensor, found: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(slack, violated) per margin row: slack = found − bound; violated when found < bound − tol.

    ``tol = TOL·(1 + |bound| + scale)``, scale = max |logit| at the clean point (see the module
    docstring). A NaN bound is the caller's to reject; +inf is always violated.
    """
    tol = TOL * (1.0 + bounds.abs() + scale)
    slack = found - bounds
    return slack, (slack < -tol) | (bounds == math.inf)


# ---- one trial ------------------------------------------------------------------------------
def draw_trial(seed: int, trial: int) -> dict[str, Any]:
    """Everything a trial is made of except ε (which depends on the model), from its own RNG."""
    rng = np.random.default_rng([seed, trial])
    arch = draw_arch(rng)
    src = str(rng.choice(["mnist", "uniform", "sparse", "binary", "mid"], p=[0.6, 0.1, 0.15, 0.1, 0.05]))
    image = {"src": src, "seed": int(rng.integers(2**31)), "index": int(rng.integers(2000)),
             "op": str(rng.choice(["crop", "down"]))}
    return {"seed": seed, "trial": trial, "arch": arch, "image": image, "norm": str(rng.choice(["inf", "2"])),
            "eps_zero": bool(rng.random() < 0.04), "eps_log10_rel": float(rng.uniform(-2.0, 1.3)),
            "attack_seed": int(rng.integers(2**31))}


def _bound(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, method: str,
           engine: str, res: dict[str, Any]) -> torch.Tensor:
    """Margin lower bounds (K-1,) through :class:`verify.certify.Certifier`; records the engine used."""
    from verify.certify import Certifier

    res["stage"] = "init"
    cert = Certifier(model, norm, method, 1, x, None, engine)
    res.update(stage="bound", used=cert.engine)
    return cert.margins(x, y, eps)[0].detach().float()


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"


def _check_method(model: nn.Module, x: torch.Tensor, y: int, eps: float, norm: str, method: str, engine: str,
                  best: _Best, scale: float, C: torch.Tensor, bound_shift: float) -> dict[str, Any]:
    """One method's bound checked against the attacked margins: its result record."""
    t0 = time.perf_counter()
    res: dict[str, Any] = {"method": method, "engine": engine}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            bounds = _bound(model, x, torch.tensor([y]), eps, norm, method, engine, res)
    except Exception as err:  # noqa: BLE001 - every failure is recorded, never a pass
        names = {c.__name__ for c in type(err).__mro__}
        status = "failed" if names & set(FAILURES) else "refused" if names & set(REFUSALS) else "crashed"
        res.update(status=status, error=_error(err))
    else:
        bounds = bounds + bound_shift
        res.update(bounds=bounds.tolist())
        if bounds.shape != best.value.shape or torch.isnan(bounds).any():
            res.update(status="invalid", error=f"bounds of shape {tuple(bounds.shape)} / NaN")
        else:
            slack, bad = check(bounds, best.value, scale)
            res.update(status="violated" if bool(bad.any()) else "checked", slack=float(slack.min()))
            if bad.any():
                res["violations"] = [{"row": int(i), "j": [j for j in range(C.shape[1]) if j != y][int(i)],
                                      "bound": float(bounds[i]), "attacked_margin": float(best.value[i]),
                                      "point": best.point[i].flatten().tolist()} for i in bad.nonzero()[:, 0]]
    res["seconds"] = time.perf_counter() - t0
    return res


def run_trial(seed: int, trial: int, alpha_every: int = 20, bound_shift: float = 0.0,
              eps: float | None = None) -> dict[str, Any]:
    """One trial's record (see the module docstring).

    Args:
        seed, trial: the trial's RNG is ``default_rng([seed, trial])``.
        alpha_every: alpha-crown runs when ``trial % alpha_every == 0`` (0: never).
        bound_shift: added to every bound before the check (tests: a raised bound must be flagged).
        eps: override the drawn ε.
    """
    start = time.perf_counter()
    t = draw_trial(seed, trial)
    if t["image"]["src"] == "mnist" and mnist() is None:
        t["image"]["src"] = "sparse"
    model = build_model(t["arch"])
    shape = tuple(getattr(model, "input_shape"))
    x = make_image(t["image"], shape)
    norm = t["norm"]
    with torch.no_grad():
        logits = model(x)[0]
    y = int(logits.argmax())
    C = spec_rows(y, logits.numel())
    r0 = first_order_radius(model, x, C, norm)
    if eps is None:
        cap = 1.0 if norm == "inf" else math.sqrt(x.numel())  # the whole box
        eps = 0.0 if t["eps_zero"] else float(min(max(r0 * 10 ** t["eps_log10_rel"], 1e-5), cap))
    best = attack(model, x, C, eps, norm, t["attack_seed"])
    scale = float(logits.abs().max())
    rec: dict[str, Any] = {**t, "eps": eps, "r0": r0, "label": y, "scale": scale,
                           "clean_margins": (C @ logits).tolist(), "found": best.value.tolist(),
                           "points": best.count, "attack_seconds": time.perf_counter() - start, "methods": {}}
    for method, engine in METHODS:
        if method in OCCASIONAL and not (alpha_every and trial % alpha_every == 0):
            continue
        rec["methods"][f"{method}/{engine}"] = _check_method(model, x, y, eps, norm, method, engine, best, scale, C,
                                                             bound_shift)
    rec["seconds"] = time.perf_counter() - start
    return rec


# ---- campaign: resumable runs, workers, summary ---------------------------------------------
def fingerprint() -> str:
    """sha256 (12 hex) of the code under test and of :data:`CAMPAIGN`."""
    h = hashlib.sha256(CAMPAIGN.encode())
    for p in (p for d in ("verify", "lipbound", "models") for p in sorted((ROOT / d).rglob("*.py"))):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def quiet() -> None:
    """Silence auto_LiRPA's logger and the tracing warnings; one thread per process."""
    from verify._lirpa_compat import import_auto_lirpa

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.showwarning = lambda *args, **kwargs: None  # its import resets the filters to "once"
        import_auto_lirpa()
    warnings.simplefilter("ignore")
    logging.getLogger("auto_LiRPA").setLevel(logging.ERROR)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("auto_LiRPA"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _job(args: tuple[int, int, int]) -> dict[str, Any]:
    quiet()
    return run_trial(*args)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interrupted run: redone
                    continue


def run_campaign(trials: Sequence[int], seed: int, out: Path, jobs: int = 1, alpha_every: int = 20,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the trials; returns their records under the current code fingerprint."""
    out.mkdir(parents=True, exist_ok=True)
    path, fp = out / "trials.jsonl", fingerprint()
    done = {r["trial"]: r for r in read_records(path) if r.get("seed") == seed and r.get("fingerprint") == fp
            and r.get("alpha_every") == alpha_every}
    todo = [i for i in trials if i not in done]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="soundness", unit="trial", file=sys.stderr)
    with path.open("a") as fh:
        def keep(rec: dict[str, Any]) -> None:
            rec.update(fingerprint=fp, alpha_every=alpha_every, finished_at=time.time(), jobs=jobs)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            done[rec["trial"]] = rec
            if bar is not None:
                bar.update(1)

        args = [(seed, i, alpha_every) for i in todo]
        if jobs > 1 and todo:
            with mp.get_context("spawn").Pool(jobs) as pool:
                for rec in pool.imap_unordered(_job, args, chunksize=4):
                    keep(rec)
        else:
            quiet()
            for a in args:
                keep(_job(a))
    if bar is not None:
        bar.close()
    return [done[i] for i in trials]



def summarize(records: Sequence[dict[str, Any]], wall: float | None, max_records: int = 1000) -> dict[str, Any]:
    """Counts per (method, engine, norm) and per architecture, reasons, violations, worst slack
    (see :func:`benchmarks._soundness_report.summarize`)."""
    settings = {"tolerance": f"{TOL}*(1+|bound|+max|logit|)",
                "attack": {"samples": SAMPLES, "pgd_steps": PGD_STEPS, "restarts": RESTARTS}}
    return _summarize(records, wall, METHODS, settings, max_records)


markdown = _markdown


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soundness", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10000)
    p.add_argument("--start", type=int, default=0, help="first trial index")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--alpha-every", type=int, default=20, help="alpha-crown on trials with i %% N == 0 (0: never)")
    p.add_argument("--out", default="runs/soundness")
    p.add_argument("--replay", type=int, help="run this one trial and print its record")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/soundness.*")
    p.add_argument("--report", action="store_true", help="only summarise the records already in --out")
    a = p.parse_args(argv)
    if a.replay is not None:
        quiet()
        print(json.dumps(run_trial(a.seed, a.replay, a.alpha_every), indent=1))
        return 0
    wall = time.perf_counter()
    trials = range(a.start, a.start + a.trials)
    if a.report:
        latest = {r["trial"]: r for r in read_records(Path(a.out) / "trials.jsonl") if r.get("seed") == a.seed}
        records = [latest[i] for i in trials if i in latest]
    else:
        records = run_campaign(trials, a.seed, Path(a.out), a.jobs, a.alpha_every)
    s = summarize(records, None if a.report else time.perf_counter() - wall)
    md = markdown(s)
    if not a.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soundness.json").write_text(json.dumps(s, indent=1))
        (RESULTS / "soundness.md").write_text(md)
    print(md)
    return 1 if s["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
