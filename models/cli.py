"""``python -m models``: train, eval, download, zoo.

Examples::

    python -m models train --preset ode                 # retrain a zoo model
    python -m models train --arch ode --solver rk4:4 --epochs 5 --out runs/my_ode
    python -m models train --preset lenet5 --adv pgd --eps 0.3 --out runs/lenet5_pgd
    python -m models eval ode --solver dopri5:1e-2
    python -m models download mnist
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .cli_support import (OneLineArgumentParser, add_lr_step_arguments, add_model_arguments, resolve_device, run_main,
                          solver_spec, subparsers)
from .solver import ADAPTIVE_METHODS, CAS_METHODS, SolverConfig
from .train import Adversary, Recipe, accuracy, git_commit, save_checkpoint, train


def _solver_override(base: SolverConfig, args: argparse.Namespace) -> SolverConfig:
    """Apply --solver METHOD[:VALUE] / --steps / --tol / --T to ``base``.

    Raises:
        ValueError: --steps or --tol contradicts the value given with --solver.
    """
    method, value = args.solver or (base.method, None)
    T = args.T if args.T is not None else base.T
    if method in CAS_METHODS:  # VALUE / --tol is the atol; a CAS keeps its rtol and h0 (learned or fixed)
        if value is not None and args.tol is not None and value != args.tol:
            raise ValueError(f"--solver {method}:{value:g} and --tol {args.tol:g} disagree; give the tolerance once")
        tol = value if value is not None else args.tol
        keep = base.is_cas
        h0 = T / args.steps if args.steps else (base.step_size if keep else None)  # --steps N: h0 = T/N
        return SolverConfig.cas(method, atol=tol if tol is not None else (base.atol if keep else 0.005),
                                rtol=base.rtol if keep else 0.0, h0=h0, T=T)
    if method in ADAPTIVE_METHODS:
        if value is not None and args.tol is not None and value != args.tol:
            raise ValueError(f"--solver {method}:{value:g} and --tol {args.tol:g} disagree; give the tolerance once")
        tol = value if value is not None else args.tol
        if tol is None:
            tol = base.rtol if base.method in ADAPTIVE_METHODS else 1e-3
        return SolverConfig(method=method, rtol=tol, atol=tol, T=T, adjoint=base.adjoint)
    if value is not None and args.steps and value != args.steps:
        raise ValueError(f"--solver {method}:{value:g} and --steps {args.steps} disagree; give the steps once")
    steps = int(value or args.steps or base.n_steps or 4)
    return SolverConfig.fixed(method, steps, T)


def make_adversary(recipe: Recipe, seed: int) -> Adversary | None:
    """The adversarial-training hook for ``recipe.adv`` (PGD or FGSM from attacks/).

    PGD returns the final iterate (``output="last"``), the loss maximiser Madry et al. train
    on; the budget of each step comes from the trainer (warm-up and ramp of the recipe).
    """
    if recipe.adv is None:
        return None
    from attacks import FGSM, PGD

    steps = recipe.adv_steps
    counter = iter(range(10**9))

    def adversary(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        if eps == 0:
            return x
        if recipe.adv == "fgsm":
            return FGSM(model, norm="inf", eps=eps)(x, y).x_adv
        atk = PGD(model, norm="inf", eps=eps, steps=steps, step_size=2.5 * eps / steps, random_start=True,
                  output="last", seed=seed * 1_000_003 + next(counter))
        return atk(x, y).x_adv

    return adversary


def _train_and_save(arch: str, config: dict[str, Any], recipe: Recipe, dataset: str, out: Path,
                    data_dir: str | None, device: torch.device, progress: bool, preset: str | None) -> Path:
    """Train, measure held-out accuracy and NFE, write the checkpoint; returns its path."""
    from . import build_model
    from .data import load_dataset

    commit = git_commit()  # the code that trains, read before training starts
    out.parent.mkdir(parents=True, exist_ok=True)  # before training: the per-epoch resume state goes there
    torch.manual_seed(recipe.seed)
    model = build_model(arch, **config).to(device)
    x_tr, y_tr = load_dataset(dataset, "train", data_dir)
    x_te, y_te = load_dataset(dataset, "test", data_dir)
    result = train(model, x_tr, y_tr, recipe, adversary=make_adversary(recipe, recipe.seed),
                   resume_path=out.with_suffix(".resume.pt"), progress=progress)
    t0 = time.perf_counter()
    acc, nfe = accuracy(model, x_te, y_te)
    eval_s = time.perf_counter() - t0
    acc500, _ = accuracy(model, x_te[:500], y_te[:500])
    meta = {
        "dataset": dataset, "protocol": "train: split 'train'; accuracy: split 'test' (held out)",
        "recipe": dataclasses.asdict(recipe), "held_out_accuracy": acc, "held_out_n": len(y_te),
        "held_out_accuracy_500": acc500,
        "mean_nfe": nfe, "train_seconds": round(result.seconds, 1), "eval_seconds": round(eval_s, 2),
        "epoch_loss": [round(v, 5) for v in result.epoch_loss], "parameters": model.num_parameters(),
        "git_commit": commit, "torch": torch.__version__,
    }
    if preset:
        meta["preset"] = preset
    path = save_checkpoint(out, model, meta)
    out.with_suffix(".resume.pt").unlink(missing_ok=True)
    print(f"saved {path}  held-out accuracy {acc:.4f} (n={len(y_te)})  mean NFE {nfe:.1f}  "
          f"train {result.seconds:.0f}s")
    return path


def cmd_train(args: argparse.Namespace) -> int:
    from .zoo import PRESETS, ZOO_DIR, UnknownModelError

    device = resolve_device(args.device)
    if args.preset:
        if args.preset not in PRESETS:
            raise UnknownModelError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[args.preset]
        if preset.cert is not None:
            raise ValueError(f"preset {preset.name!r} is trained with a certified loss, whose bounds live in verify: "
                             f"run `{preset.train_command}`")
        arch, config, recipe, dataset = preset.arch, dict(preset.config), preset.recipe, preset.dataset
        out = Path(args.out) if args.out else ZOO_DIR / preset.name
    else:
        if not args.arch:
            raise ValueError("give --preset NAME or --arch ARCH")
        arch, dataset = args.arch, args.dataset
        config = {}
        if arch in ("ode", "resnet"):
            config = {"channels": args.channels, "field": args.field}
            if arch == "resnet":
                config.update(n_blocks=args.blocks, step=args.step, tied=args.tied)
        recipe = Recipe()
        if not args.out:
            raise ValueError("--out is required with --arch (checkpoint path stem)")
        out = Path(args.out)
    overrides: dict[str, Any] = {k: v for k, v in {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "adv": args.adv, "adv_eps": args.eps, "adv_steps": args.adv_steps, "adv_warmup": args.adv_warmup,
        "adv_ramp": args.adv_ramp, "lr_steps": args.lr_steps, "lr_step_factor": args.lr_step_factor}.items()
        if v is not None}
    if args.T_range:
        overrides["T_range"] = tuple(args.T_range)
    recipe = dataclasses.replace(recipe, **overrides)
    if arch == "ode":
        base = SolverConfig.from_dict(config["solver"]) if "solver" in config else SolverConfig.fixed("rk4", 4)
        if args.solver or args.steps or args.tol is not None or args.T is not None:
            base = _solver_override(base, args)
        config["solver"] = base.to_dict()
    _train_and_save(arch, config, recipe, dataset, out, args.data_dir, device, not args.no_progress,
                    args.preset)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .zoo import PRESETS, ZOO_DIR, resolve

    device = resolve_device(args.device)
    if args.train_missing and args.model in PRESETS and not (ZOO_DIR / f"{args.model}.pt").exists():
        p = PRESETS[args.model]
        if p.cert is not None:
            raise ValueError(f"zoo model {p.name!r} has no checkpoint yet and is trained with a certified loss: "
                             f"run `{p.train_command}`")
        _train_and_save(p.arch, dict(p.config), p.recipe, p.dataset, ZOO_DIR / p.name, args.data_dir, device,
                        True, p.name)
    model, meta = resolve(args.model, device, weights=args.weights)
    if getattr(model, "solver", None) is not None and (args.solver or args.steps or args.tol is not None
                                                       or args.T is not None):
        model.solver = _solver_override(model.solver, args)
    x, y = load_dataset(meta.get("dataset", "mnist-t10k"), "test", args.data_dir, n=args.n)
    t0 = time.perf_counter()
    acc, nfe = accuracy(model, x, y)
    secs = time.perf_counter() - t0
    solver = getattr(model, "solver", None)
    row = {"model": args.model, "n": len(y), "accuracy": acc, "mean_nfe": nfe,
           "solver": solver.describe() if solver else None, "seconds": round(secs, 2)}
    print(f"{args.model}: held-out accuracy {acc:.4f} on n={len(y)}  mean NFE {nfe:.1f}"
          + (f"  solver {solver.describe()}" if solver else "") + f"  ({secs:.1f}s)")
    if args.json:
        print(json.dumps(row))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data import data_root
    from .download import DownloadError, download_dataset

    try:
        paths = download_dataset(args.dataset, root=data_root(args.data_dir))
    except DownloadError as err:
        raise ValueError(str(err)) from err
    for p in paths:
        print(p)
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from .zoo import PRESETS, available, load_with_metadata

    have = set(available())
    if not args.markdown:
        for name, p in PRESETS.items():
            print(f"{name:16s} {'trained' if name in have else 'missing':8s} {p.description}")
        return 0
    print("| model | description | parameters | held-out accuracy | mean NFE | train time | retrain |")
    print("|---|---|---|---|---|---|---|")
    for name, p in PRESETS.items():
        if name not in have:
            continue
        _, meta = load_with_metadata(name)
        nfe = f"{meta['mean_nfe']:.1f}" if meta["mean_nfe"] else "–"
        print(f"| `{name}` | {p.description} | {meta['parameters']:,} | {100 * meta['held_out_accuracy']:.2f} % "
              f"| {nfe} | {meta['train_seconds']:.0f} s | `{p.train_command}` |")
    return 0


def _solver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--solver", type=solver_spec, metavar="METHOD[:VALUE]",
                   help="ODE solver (ODE-nets): a method, optionally with its steps or tolerance, e.g. rk4:8, "
                        "dopri5:1e-3")
    p.add_argument("--steps", type=int, help="fixed-grid steps (a cas-* solver: its first step h0 = T/STEPS instead "
                                             "of the learned one)")
    p.add_argument("--tol", type=float, help="adaptive tolerance τ (rtol = atol)")
    p.add_argument("--T", type=float, help="integration end time")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m models`` parser."""
    parser = OneLineArgumentParser(prog="python -m models", description="Train, evaluate and fetch models.")
    sub = subparsers(parser)
    t = sub.add_parser("train", help="train a model (a zoo preset or an explicit architecture)")
    t.add_argument("--preset", help="zoo preset name (see `python -m models zoo`)")
    t.add_argument("--arch", choices=["ode", "resnet", "lenet5", "mlp"])
    t.add_argument("--dataset", default="mnist-t10k", choices=["mnist-t10k", "mnist"])
    t.add_argument("--channels", type=int, default=16)
    t.add_argument("--field", default="verifiable", choices=["verifiable", "chen"])
    t.add_argument("--blocks", type=int, default=4, help="ResNet blocks")
    t.add_argument("--step", type=float, default=1.0, help="ResNet step size s")
    t.add_argument("--tied", action="store_true", help="weight-tied ResNet blocks")
    _solver_args(t)
    t.add_argument("--T-range", type=float, nargs=2, metavar=("LO", "HI"), help="train with T ~ U[LO, HI]")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    add_lr_step_arguments(t)
    t.add_argument("--seed", type=int)
    t.add_argument("--adv", choices=["pgd", "fgsm"], help="adversarial training attack")
    t.add_argument("--eps", type=float, help="adversarial training L∞ budget")
    t.add_argument("--adv-steps", type=int, help="PGD steps for adversarial training")
    t.add_argument("--adv-warmup", type=int, help="clean epochs before adversarial training starts")
    t.add_argument("--adv-ramp", type=int, help="epochs over which the adversarial budget grows from 0 to --eps")
    t.add_argument("--out", help="checkpoint path stem (default for presets: the zoo)")
    t.add_argument("--data-dir")
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="held-out accuracy and NFE of a zoo model or checkpoint")
    add_model_arguments(e, positional=True)
    _solver_args(e)
    e.add_argument("--n", type=int, help="first n held-out images (default all)")
    e.add_argument("--data-dir")
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    e.add_argument("--json", action="store_true", help="also print a JSON line")
    e.add_argument("--train-missing", action="store_true",
                   help="train a zoo model from its preset first if its checkpoint is missing")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("download", help="fetch MNIST files with md5 verification")
    d.add_argument("dataset", choices=["mnist", "mnist-t10k"])
    d.add_argument("--data-dir")
    d.set_defaults(func=cmd_download)

    z = sub.add_parser("zoo", help="list zoo models")
    z.add_argument("--markdown", action="store_true", help="print the README table from checkpoint metadata")
    z.set_defaults(func=cmd_zoo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on bad input)."""
    return run_main(build_parser, argv)
