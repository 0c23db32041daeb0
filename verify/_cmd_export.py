"""``python -m verify export``: a model and its robustness properties as a VNN-COMP benchmark
(ONNX network, one VNN-LIB file per example, instances.csv)."""

from __future__ import annotations

import argparse

from models.cli_support import add_model_arguments

from ._cmd_certify import _eps, _positive_int


def _timeout(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"timeout must be a positive number of seconds, got {text!r}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    p = sub.add_parser("export", help="write the unrolled network as ONNX and L∞ robustness properties as VNN-LIB "
                                      "(VNN-COMP benchmark layout)")
    add_model_arguments(p)
    p.add_argument("--out", required=True, help="benchmark folder (onnx/, vnnlib/, instances.csv)")
    p.add_argument("--eps", type=_eps, default=0.02, help="L∞ radius of every property")
    p.add_argument("--n", type=_positive_int, default=10,
                   help="held-out examples (the first n; misclassified ones are left out)")
    p.add_argument("--timeout", type=_timeout, default=300.0, help="seconds per instance in instances.csv")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the benchmark; prints what was written."""
    from models.data import load_dataset
    from models.zoo import resolve

    from .export import export_benchmark

    model, _ = resolve(args.model, weights=args.weights)
    x, y = load_dataset("mnist-t10k", split="test", data_dir=args.data_dir)
    name = args.model.replace("/", "_").replace("\\", "_").replace(",", "_").removesuffix(".pt")
    res = export_benchmark(model, name, x[: args.n], y[: args.n], args.eps, args.out, args.timeout)
    print(f"wrote {res.onnx}, {len(res.properties)} VNN-LIB properties (ε={args.eps:g}) and {res.instances}"
          + (f"; left out {len(res.skipped)} misclassified example(s): {list(res.skipped)}" if res.skipped else ""))
    return 0
