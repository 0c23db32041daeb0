"""Our attacks against foolbox 3.3.4 and torchattacks 3.5.1, side by side in one run.

Same models (zoo ``ode``, ``lenet5``), same held-out images, same hyper-parameters;
success is scored for every side by one forward pass of the same model on the returned
points. Both sides run with ``torch.set_num_threads(1)``; timings are the minimum over
``--repeats`` interleaved runs (the machine is shared).

Targets (issue 3):
    PGD-40 L∞ ε=0.3: wall time ours / peer <= 1.0 at equal or higher success.
    CW-L2: median L2 of successful examples <= 1.05 x foolbox's at no more wall time.
    Boundary Attack at an equal query budget: median L2 <= foolbox's.

CW runs with :data:`attacks.cw.CW_DEFAULTS` (what ``CW(model)`` and ``verify attack --attack cw``
use) unless ``--cw-*`` options say otherwise.

Run: ``python -m benchmarks.attacks_vs_peers [--n 500] [--models ode lenet5]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from attacks import CW, PGD, BoundaryAttack
from attacks.cw import CW_DEFAULTS
from models.data import load_dataset
from models.zoo import load

from ._cells import write_results

RESULTS = Path(__file__).resolve().parent / "results"


def _import_torchattacks() -> tuple[Any, str]:
    """torchattacks' PGD class and how it was imported (it may want torchvision at import)."""
    try:
        import torchattacks

        return torchattacks.PGD, "import torchattacks"
    except ImportError:
        from torchattacks.attacks.pgd import PGD as TAPGD

        return TAPGD, "from torchattacks.attacks.pgd import PGD (package import failed)"


class _Counter(nn.Module):
    """Counts rows forwarded (the queries a black-box attack makes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.model(x)


def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        # foolbox's CW returns an all-zero image where it found nothing; that is not a success of the search.
        ok = (model(adv).argmax(1) != y) & (adv.flatten(1).abs().amax(dim=1) > 0)
    l2 = (adv - x).flatten(1).norm(dim=1)
    linf = (adv - x).flatten(1).abs().amax(dim=1)
    return {"success": float(ok.float().mean()), "median_l2": float(l2[ok].median()) if ok.any() else float("nan"),
            "mean_l2": float(l2[ok].mean()) if ok.any() else float("nan"), "max_linf": float(linf.max())}


def _timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[torch.Tensor, float]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    assert out is not None
    return out.detach(), best


def bench_model(name: str, n: int, repeats: int, boundary_steps: int, cw: dict[str, Any],
                attacks: tuple[str, ...] = ("pgd", "cw", "boundary")) -> dict[str, Any]:
    import foolbox as fb

    ta_pgd, ta_how = _import_torchattacks()
    model = load(name)
    x, y = load_dataset("mnist-t10k", "test", n=n)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    out: dict[str, Any] = {"model": name, "n": n, "torchattacks_import": ta_how}

    if "pgd" in attacks:
        out["pgd"] = _bench_pgd(model, fmodel, ta_pgd, x, y, repeats)
    if "cw" in attacks:
        out["cw"] = _bench_cw(model, fmodel, x, y, cw)
    if "boundary" in attacks:
        out["boundary"] = _bench_boundary(model, x, y, boundary_steps)
    return out


def _bench_pgd(model: nn.Module, fmodel: Any, ta_pgd: Any, x: torch.Tensor, y: torch.Tensor, repeats: int
               ) -> dict[str, Any]:
    """PGD-40, L∞, ε = 0.3, step 0.01, random start (Madry et al.'s MNIST setting), best of interleaved repeats.

    ``ours``: the default output (first misclassified iterate; an example stops there).
    ``ours_last``: ``output="last"``, every example every step: the peers' exact work.
    """
    import foolbox as fb

    eps, steps, alpha = 0.3, 40, 0.01
    runs = {
        "ours": lambda: PGD(model, eps, steps=steps, step_size=alpha, seed=0)(x, y).x_adv,
        "ours_last": lambda: PGD(model, eps, steps=steps, step_size=alpha, output="last", seed=0)(x, y).x_adv,
        "torchattacks": lambda: ta_pgd(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y),
        "foolbox": lambda: fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)(
            fmodel, x, y, epsilons=eps)[1],
    }
    times: dict[str, float] = {k: float("inf") for k in runs}
    advs: dict[str, torch.Tensor] = {}
    keys = list(runs)
    for r in range(repeats):  # interleaved in a rotating order, so load changes and warm-up hit every side alike
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            fn = runs[key]
            adv, t = _timed(fn, 1)
            times[key] = min(times[key], t)
            advs[key] = adv
    res: dict[str, Any] = {k: {"seconds": times[k], **_score(model, x, y, advs[k])} for k in runs}
    for peer in ("torchattacks", "foolbox"):
        for ours in ("ours", "ours_last"):
            res[f"ratio_{ours}_vs_{peer}"] = times[ours] / times[peer]
    return res


def _bench_cw(model: nn.Module, fmodel: Any, x: torch.Tensor, y: torch.Tensor, cw: dict[str, Any]) -> dict[str, Any]:
    """CW-L2, same hyper-parameters on both sides."""
    import foolbox as fb

    ours_cw, t_ours = _timed(lambda: CW(model, steps=cw["steps"], binary_search_steps=cw["binary_search_steps"],
                                        initial_const=cw["initial_const"], lr=cw["lr"])(x, y).x_adv, 1)
    fb_cw, t_fb = _timed(lambda: fb.attacks.L2CarliniWagnerAttack(
        binary_search_steps=cw["binary_search_steps"], steps=cw["steps"], stepsize=cw["lr"],
        initial_const=cw["initial_const"], abort_early=True)(fmodel, x, y, epsilons=None)[1], 1)
    s_ours, s_fb = _score(model, x, y, ours_cw), _score(model, x, y, fb_cw)
    return {"params": cw, "ours": {"seconds": t_ours, **s_ours}, "foolbox": {"seconds": t_fb, **s_fb},
            "median_l2_ratio": s_ours["median_l2"] / s_fb["median_l2"], "time_ratio": t_ours / t_fb}


def _bench_boundary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, boundary_steps: int) -> dict[str, Any]:
    """Boundary Attack at the query budget foolbox spends (its init attack included)."""
    import foolbox as fb

    with torch.no_grad():
        correct = model(x).argmax(1) == y
    xs, ys = x[correct], y[correct]
    counter = _Counter(model).eval()
    fcount = fb.PyTorchModel(counter, bounds=(0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        init = fb.attacks.LinearSearchBlendedUniformNoiseAttack()(fcount, xs, ys, epsilons=None)
    # foolbox's init attack queries the whole batch at every blend level, so every example
    # spent the same number of queries on it; its Boundary Attack raises if the init failed on
    # any input, so both sides run on the inputs where it succeeded, foolbox from these starts.
    init_queries = counter.rows / xs.shape[0]
    keep = init[2]
    xs, ys, starts = xs[keep], ys[keep], init[0][keep]
    counter.rows = 0
    t = time.perf_counter()
    fb_b = fb.attacks.BoundaryAttack(steps=boundary_steps)(fcount, xs, ys, epsilons=None, starting_points=starts)[1]
    t_fb = time.perf_counter() - t
    queries = init_queries + counter.rows / xs.shape[0]
    res = BoundaryAttack(model, max_queries=int(queries), seed=0)(xs, ys)
    s_ours, s_fb = _score(model, xs, ys, res.x_adv), _score(model, xs, ys, fb_b)
    return {"examples": int(xs.shape[0]), "foolbox_steps": boundary_steps, "queries_per_example_foolbox": queries,
            "queries_per_example_ours_max": int(res.queries.max()),
            "ours": {"seconds": res.seconds, **s_ours}, "foolbox": {"seconds": t_fb, **s_fb},
            "median_l2_ratio": s_ours["median_l2"] / s_fb["median_l2"]}


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | attack | side | success | median L2 | seconds | ratio ours/peer |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["model"]
        p = r.get("pgd", {})
        for side in ("ours", "ours_last", "torchattacks", "foolbox") if p else ():
            ratio = ""
            if side.startswith("ours"):
                ratio = (f"{p[f'ratio_{side}_vs_torchattacks']:.2f} (ta), "
                         f"{p[f'ratio_{side}_vs_foolbox']:.2f} (fb)")
            lines.append(f"| {m} | PGD-40 L∞ 0.3 | {side} | {p[side]['success']:.3f} | {p[side]['median_l2']:.3f} | "
                         f"{p[side]['seconds']:.2f} | {ratio} |")
        c = r.get("cw")
        if c:
            lines.append(f"| {m} | CW-L2 | ours | {c['ours']['success']:.3f} | {c['ours']['median_l2']:.3f} | "
                         f"{c['ours']['seconds']:.2f} | L2 {c['median_l2_ratio']:.3f}, time {c['time_ratio']:.2f} |")
            lines.append(f"| {m} | CW-L2 | foolbox | {c['foolbox']['success']:.3f} | {c['foolbox']['median_l2']:.3f} | "
                         f"{c['foolbox']['seconds']:.2f} | |")
        b = r.get("boundary")
        if not b:
            continue
        q = b["queries_per_example_foolbox"]
        lines.append(f"| {m} | Boundary ({q:.0f} queries, {b['examples']} ex.) | ours | {b['ours']['success']:.3f} | "
                     f"{b['ours']['median_l2']:.3f} | {b['ours']['seconds']:.2f} | L2 {b['median_l2_ratio']:.3f} |")
        lines.append(f"| {m} | Boundary ({q:.0f} queries, {b['examples']} ex.) | foolbox | "
                     f"{b['foolbox']['success']:.3f} | {b['foolbox']['median_l2']:.3f} | "
                     f"{b['foolbox']['seconds']:.2f} | |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's arguments (CW's default to :data:`attacks.cw.CW_DEFAULTS`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ode", "lenet5"])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--boundary-steps", type=int, default=1000)
    # CW runs with attacks.CW's own defaults unless told otherwise (the settings users get).
    parser.add_argument("--cw-steps", type=int, default=CW_DEFAULTS["steps"])
    parser.add_argument("--cw-binary-steps", type=int, default=CW_DEFAULTS["binary_search_steps"])
    parser.add_argument("--cw-initial-const", type=float, default=CW_DEFAULTS["initial_const"])
    parser.add_argument("--cw-lr", type=float, default=CW_DEFAULTS["lr"])
    parser.add_argument("--tag", default="attacks_vs_peers")
    parser.add_argument("--attacks", nargs="+", choices=["pgd", "cw", "boundary"], default=["pgd", "cw", "boundary"])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``results/attacks_vs_peers.{json,md}``."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cw = {"steps": args.cw_steps, "binary_search_steps": args.cw_binary_steps, "initial_const": args.cw_initial_const,
          "lr": args.cw_lr}
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args.n, args.repeats, args.boundary_steps, cw, tuple(args.attacks)))
        print(json.dumps(rows[-1], indent=1), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results(RESULTS, args.tag, args, rows, _markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
