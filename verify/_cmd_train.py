"""``python -m verify train``: certified training of a zoo preset (IBP, CROWN-IBP, MTL-IBP).

Examples::

    python -m verify train --preset ode-cert-0.1                       # the zoo model
    python -m verify train --preset ode-cert-0.1 --cert crown-ibp --cert-eps 0.2 --out runs/ode_crown
    python -m verify train --preset lenet5-cert-0.1 --epochs 2 --n-train 2000 --warmup-epochs 0 \\
        --ramp-epochs 1 --out runs/lenet5_short

The certified loss needs the bounds of :mod:`verify` inside the training loop, which
``models`` may not import: this command hands :class:`verify.certified_training.CertifiedLoss`
to :func:`models.train.train` as its loss hook. Training is resumable per epoch (the resume
state records the recipe and the certified loss; another one is refused). At the end the
clean and IBP-certified accuracy (:func:`verify.certify`, ``method="ibp"``; a controlled adaptive
solver: its trajectory graph, ``method="crown"``) are measured on held-out images and written to
the checkpoint's metadata. ``--init-from`` (or a preset's ``init_from``) starts from a zoo model's
(or a checkpoint's) weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import time
from pathlib import Path
from typing import Any

import torch

from models.cli_support import add_lr_step_arguments, resolve_device

from ._lower import has_cas
from .certified_training import INITS, LOSSES, CertConfig, CertifiedLoss, ibp_init

#: examples per :func:`verify.certify` call when measuring certified accuracy.
EVAL_CHUNK = 250


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = sub.add_parser("train", help="certified training of a zoo preset (IBP, CROWN-IBP, MTL-IBP)",
                       description="Certified training (IBP / CROWN-IBP / MTL-IBP through the unrolled solver) "
                                   "of a zoo preset, then clean and IBP-certified held-out accuracy.")
    p.add_argument("--preset", required=True, help="zoo preset (e.g. ode-cert-0.1; see `python -m models zoo`)")
    p.add_argument("--cert", choices=LOSSES, default=None, help="certified loss (default: the preset's)")
    p.add_argument("--cert-eps", type=float, default=None, help="L∞ training radius ε_train (default: the preset's)")
    p.add_argument("--eval-eps", type=float, default=None,
                   help="radius of the certified accuracy measured at the end (default: the preset's, else ε_train)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="clean epochs before ε grows")
    p.add_argument("--ramp-epochs", type=int, default=None, help="epochs of the smooth ε ramp")
    p.add_argument("--ramp-exponent", type=float, default=None,
                   help="degree of the ramp's first quarter (1: a linear ramp, Gowal et al.; 4: Shi et al.)")
    p.add_argument("--kappa-end", type=float, default=None, help="weight of the clean loss at the end of the ramp")
    p.add_argument("--alpha", type=float, default=None, help="mtl-ibp's weight of the adversarial loss")
    p.add_argument("--pgd-steps", type=int, default=None,
                   help="mtl-ibp's PGD steps per batch (De Palma et al. use 1 on MNIST; default: the preset's, else 8)")
    p.add_argument("--init", choices=INITS, default=None, help="weight initialisation (ibp: Shi et al.)")
    p.add_argument("--schedule", choices=("cosine", "constant"), default=None, help="learning-rate schedule")
    add_lr_step_arguments(p)
    p.add_argument("--shift", type=int, default=None, help="random-translation augmentation in pixels (0: none)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=JSON",
                   help="override one constructor argument of the preset's model, e.g. channels=32 (repeatable)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="start from this zoo model's or checkpoint's (path stem) weights (a fine-tune; default: the "
                        "preset's, else none)")
    p.add_argument("--n-train", type=int, default=None, help="first n training images (default all 8,000)")
    p.add_argument("--n-eval", type=int, default=500, help="held-out images for the final accuracy")
    p.add_argument("--out", default=None,
                   help="checkpoint path stem, or an existing directory (NAME.pt inside it); default: the zoo")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _config(preset: Any, args: argparse.Namespace) -> CertConfig:
    """The preset's certified loss with the command-line overrides.

    Raises:
        ValueError: a preset without a certified loss and no ``--cert``; invalid values.
    """
    for flag, v in (("--cert-eps", args.cert_eps), ("--eval-eps", args.eval_eps)):
        if v is not None and not (v >= 0 and v != float("inf")):
            raise ValueError(f"{flag} must be a finite number >= 0, got {v:g}")
    base = dict(preset.cert or {})
    if not base and args.cert is None:
        raise ValueError(f"preset {preset.name!r} has no certified loss: give --cert ({', '.join(LOSSES)})")
    overrides = {k: v for k, v in {"loss": args.cert, "eps": args.cert_eps, "eval_eps": args.eval_eps,
                                   "warmup_epochs": args.warmup_epochs, "ramp_epochs": args.ramp_epochs,
                                   "exponent": args.ramp_exponent, "kappa_end": args.kappa_end,
                                   "alpha": args.alpha, "pgd_steps": args.pgd_steps, "init": args.init}.items()
                 if v is not None}
    if "eps" in overrides and "eval_eps" not in overrides and preset.cert is None:
        overrides["eval_eps"] = overrides["eps"]
    return CertConfig(**{**base, **overrides})


def _config_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=JSON`` pairs of ``--config`` as a dict (a value that is not JSON is kept as a string).

    Raises:
        ValueError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--config expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _out_path(args: argparse.Namespace, name: str) -> Path:
    from models.zoo import ZOO_DIR

    if args.out is None:
        return ZOO_DIR / name
    p = Path(args.out)
    return p / name if p.is_dir() or args.out.endswith(("/", "\\")) else p


def cert_method(model: torch.nn.Module) -> str:
    """``crown`` (the trajectory graph, its one method) for a controlled adaptive solver, else ``ibp``."""
    return "crown" if has_cas(model) else "ibp"


def certified_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    """Fraction of (x, y) whose margins (:func:`verify.certify` with :func:`cert_method`) are all positive."""
    from .certify import certify

    device = next(model.parameters()).device
    done = 0
    for i in range(0, x.shape[0], EVAL_CHUNK):
        xb, yb = x[i:i + EVAL_CHUNK].to(device), y[i:i + EVAL_CHUNK].to(device)
        done += int(certify(model, xb, yb, eps, "inf", cert_method(model)).certified.sum())
    return done / x.shape[0]


def run(args: argparse.Namespace) -> int:
    """Train the preset with its certified loss, measure, save; returns 0."""
    from models import MODELS, build_model
    from models.data import load_dataset
    from models.train import Recipe, accuracy, git_commit, save_checkpoint, sidecar, train
    from models.zoo import PRESETS, UnknownModelError

    if args.preset not in PRESETS:
        raise UnknownModelError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[args.preset]
    cfg = _config(preset, args)
    recipe: Recipe = dataclasses.replace(preset.recipe, **{k: v for k, v in {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "schedule": args.schedule, "shift": args.shift,
        "lr_steps": args.lr_steps, "lr_step_factor": args.lr_step_factor}.items()
        if v is not None})
    for name in ("n_train", "n_eval"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device = resolve_device(args.device)
    out = _out_path(args, preset.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    x_tr, y_tr = load_dataset(preset.dataset, "train", args.data_dir, n=args.n_train)
    x_te, y_te = load_dataset(preset.dataset, "test", args.data_dir, n=args.n_eval)
    torch.manual_seed(recipe.seed)
    config = {**preset.config, **_config_overrides(args.config)}
    try:
        inspect.signature(MODELS[preset.arch]).bind(**config)
    except TypeError as err:
        raise ValueError(f"--config does not fit {preset.arch!r}: {err}") from err
    model = build_model(preset.arch, **config).to(device)
    if cfg.init == "ibp":
        ibp_init(model, torch.Generator(device="cpu").manual_seed(recipe.seed) if device.type == "cpu" else None)
    init_from = args.init_from or preset.init_from
    if init_from:
        from models.zoo import resolve

        model.load_state_dict(resolve(init_from)[0].state_dict())
    hook = CertifiedLoss(cfg, seed=recipe.seed)
    result = train(model, x_tr, y_tr, recipe, resume_path=sidecar(out, ".resume.pt"),
                   progress=not args.no_progress, loss_fn=hook)
    t0 = time.perf_counter()
    acc, nfe = accuracy(model, x_te, y_te)
    cert = certified_accuracy(model, x_te, y_te, cfg.certify_eps)
    eval_s = time.perf_counter() - t0
    meta = {
        "dataset": preset.dataset, "protocol": "train: split 'train'; accuracy: split 'test' (held out)",
        "recipe": dataclasses.asdict(recipe), "cert_recipe": dataclasses.asdict(cfg),
        "eps_schedule": (f"{cfg.warmup_epochs} clean epochs, then "
                         + ("a linear ramp" if cfg.exponent == 1 else
                            f"a smooth ramp (degree {cfg.exponent:g} to {cfg.mid_point:g} of it, then linear)")
                         + f" over {cfg.ramp_epochs} epochs to ε={cfg.eps:g}, κ {cfg.kappa_start:g} → "
                           f"{cfg.kappa_end:g} over the ramp"),
        "n_train": int(x_tr.shape[0]), "held_out_accuracy": acc, "held_out_n": int(y_te.shape[0]),
        "certified_accuracy": {"method": cert_method(model), "norm": "inf", "eps": cfg.certify_eps, "accuracy": cert,
                               "n": int(y_te.shape[0])},
        "mean_nfe": nfe, "train_seconds": round(result.seconds, 1), "eval_seconds": round(eval_s, 2),
        "epoch_loss": [round(v, 5) for v in result.epoch_loss],
        "epoch_stats": [{k: round(v, 5) for k, v in s.items()} for s in result.epoch_stats],
        "parameters": model.num_parameters(), "git_commit": commit, "torch": torch.__version__,
        "preset": preset.name, "init_from": init_from,
    }
    path = save_checkpoint(out, model, meta)
    sidecar(out, ".resume.pt").unlink(missing_ok=True)
    print(f"saved {path}  held-out clean accuracy {acc:.4f}  {cert_method(model).upper()}-certified accuracy "
          f"{cert:.4f} at "
          f"ε={cfg.certify_eps:g} (n={len(y_te)})  train {result.seconds:.0f}s")
    return 0
