"""VNN-LIB property files: writing a robustness property and reading one back.

A property file declares the network's inputs ``X_0 … X_{d−1}`` (the flattened (C, H, W)
input, row-major, as the ONNX model reads it) and outputs ``Y_0 … Y_{K−1}``, bounds every
input to its box, and asserts the *unsafe* region, VNN-COMP's convention: a verifier that
proves the assertions unsatisfiable has verified the property. For robustness of label y
the unsafe region is "some other class scores at least as high":
``(or (and (>= Y_j Y_y)) …)`` over j ≠ y.

References:
    Demarchi et al., "Supporting Standardization of Neural Networks Verification with VNNLIB
    and CoCoNet", FMAS 2023; VNN-COMP 2021–2024 benchmark format.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np


class VnnlibError(ValueError):
    """A VNN-LIB file this reader does not understand (the message names what)."""


@dataclasses.dataclass(frozen=True)
class VnnlibProperty:
    """A box on the inputs and a disjunction of conjunctions of output comparisons.

    Attributes:
        lower, upper: (d,) input bounds.
        num_outputs: K.
        unsafe: clauses of the unsafe region, each a tuple of atoms ``(op, lhs, rhs)`` with op
            ``">="`` or ``"<="`` and each side an output name (``"Y_3"``) or a number.
    """

    lower: np.ndarray
    upper: np.ndarray
    num_outputs: int
    unsafe: tuple[tuple[tuple[str, str | float, str | float], ...], ...]


def robustness_property(lower: np.ndarray, upper: np.ndarray, label: int, num_classes: int) -> VnnlibProperty:
    """The property "class ``label`` stays the top class on the box" (its unsafe region)."""
    unsafe = tuple(((">=", f"Y_{j}", f"Y_{label}"),) for j in range(num_classes) if j != label)
    return VnnlibProperty(np.asarray(lower, np.float64), np.asarray(upper, np.float64), num_classes, unsafe)


def _term(v: str | float) -> str:
    return v if isinstance(v, str) else repr(float(v))


def write_vnnlib(path: str | os.PathLike[str], prop: VnnlibProperty, comment: str = "") -> Path:
    """Write ``prop`` to ``path`` (bounds in full float64 precision); returns the path."""
    lines = [f"; {c}" for c in comment.splitlines()]
    lines += [f"(declare-const X_{i} Real)" for i in range(prop.lower.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(prop.num_outputs)]
    lines.append("; input box")
    for i, (lo, hi) in enumerate(zip(prop.lower.tolist(), prop.upper.tolist())):
        lines.append(f"(assert (<= X_{i} {hi!r}))")
        lines.append(f"(assert (>= X_{i} {lo!r}))")
    lines.append("; unsafe region (VNN-COMP: the property holds when this is unsatisfiable)")
    clauses = ["  (and " + " ".join(f"({op} {_term(a)} {_term(b)})" for op, a, b in clause) + ")"
               for clause in prop.unsafe]
    lines.append("(assert (or\n" + "\n".join(clauses) + "\n))")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def _parse(text: str) -> list:
    """The file's top-level s-expressions (comments dropped)."""
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())
    stack: list[list] = [[]]
    for tok in _TOKEN.findall(text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise VnnlibError("unbalanced ')'")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise VnnlibError("unbalanced '('")
    return stack[0]


def _value(tok: object) -> str | float:
    if not isinstance(tok, str):
        raise VnnlibError(f"expected a name or a number, got {tok!r}")
    try:
        return float(tok)
    except ValueError:
        return tok


def _atom(expr: object) -> tuple[str, str | float, str | float]:
    if not (isinstance(expr, list) and len(expr) == 3 and expr[0] in ("<=", ">=")):
        raise VnnlibError(f"expected (<= a b) or (>= a b), got {expr!r}")
    return expr[0], _value(expr[1]), _value(expr[2])


def _clauses(expr: list) -> tuple[tuple[tuple[str, str | float, str | float], ...], ...]:
    """An output assertion as a disjunction of conjunctions."""
    if expr[0] == "or":
        return tuple(c for sub in expr[1:] for c in _clauses(sub))
    if expr[0] == "and":
        return (tuple(_atom(a) for a in expr[1:]),)
    return ((_atom(expr),),)


def read_vnnlib(path: str | os.PathLike[str]) -> VnnlibProperty:
    """Parse a property file of the form :func:`write_vnnlib` writes (input bounds as single
    ``(<= X_i c)`` / ``(>= X_i c)`` assertions, outputs in ``or``/``and`` comparisons).

    Raises:
        VnnlibError: an input without both bounds, or an assertion of another form.
        FileNotFoundError: no such file.
    """
    names: list[str] = []
    lower: dict[int, float] = {}
    upper: dict[int, float] = {}
    unsafe: list[tuple[tuple[str, str | float, str | float], ...]] = []
    for expr in _parse(Path(path).read_text()):
        if not isinstance(expr, list) or not expr:
            raise VnnlibError(f"unexpected top-level token {expr!r}")
        if expr[0] == "declare-const":
            names.append(expr[1])
            continue
        if expr[0] != "assert" or len(expr) != 2:
            raise VnnlibError(f"unexpected command {expr[0]!r}")
        body = expr[1]
        if isinstance(body, list) and len(body) == 3 and isinstance(body[1], str) and body[1].startswith("X_"):
            op, var, c = _atom(body)
            if not isinstance(c, float):
                raise VnnlibError(f"input bound of {var} is not a number")
            i = int(var[2:])
            (upper if op == "<=" else lower)[i] = c
        else:
            unsafe.extend(_clauses(body))
    d = sum(1 for n in names if n.startswith("X_"))
    if set(lower) != set(range(d)) or set(upper) != set(range(d)):
        raise VnnlibError(f"every one of the {d} inputs needs a lower and an upper bound")
    k = sum(1 for n in names if n.startswith("Y_"))
    return VnnlibProperty(np.array([lower[i] for i in range(d)]), np.array([upper[i] for i in range(d)]), k,
                          tuple(unsafe))
