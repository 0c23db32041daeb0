"""The norm names of the toolkit: one tuple, one canonicalisation, one error.

A norm is named ``"inf"`` or ``"2"`` everywhere: attacks, Lipschitz bounds and
certificates. Every package canonicalises through :func:`canonical_norm`; a package
whose errors share a base class raises a subclass of :class:`UnknownNormError` that
also derives from its own error (``attacks.UnknownNormError`` is an ``AttackError``,
lipbound's a :class:`~lipbound.layers.LipschitzError`), so ``except UnknownNormError``
catches a bad norm from any of them.

This module lives in lipbound, the bottom package: it imports nothing but the standard
library, and attacks / models / verify import it (never the reverse).
"""

from __future__ import annotations

import math
import numbers

#: Canonical norm names, in the order every message and ``--norm`` choice lists them.
NORMS: tuple[str, ...] = ("inf", "2")

_ALIASES: dict[str, str] = {"inf": "inf", "linf": "inf", "l_inf": "inf", "2": "2", "l2": "2", "l_2": "2"}


class UnknownNormError(ValueError):
    """A norm name other than ``"inf"`` or ``"2"`` (or one of their spellings)."""


def canonical_norm(p: object, error: type[UnknownNormError] = UnknownNormError) -> str:
    """The canonical name ``"inf"`` or ``"2"`` of a norm.

    Args:
        p: ``"inf"``, ``"linf"``, ``"l_inf"``, ``math.inf``, ``"2"``, ``"l2"``, ``"l_2"`` or
            the number 2 (strings are case- and whitespace-insensitive; bools are refused).
        error: the :class:`UnknownNormError` subclass to raise (a package's own).

    Returns:
        ``"inf"`` or ``"2"``.

    Raises:
        UnknownNormError: (``error``) any other value.
    """
    if isinstance(p, str):
        name = _ALIASES.get(p.strip().lower())
        if name is not None:
            return name
    elif isinstance(p, numbers.Real) and not isinstance(p, bool):
        if p == math.inf:
            return "inf"
        if p == 2:
            return "2"
    raise error(f"unknown norm {p!r}; choose one of {', '.join(NORMS)}")


__all__ = ["NORMS", "UnknownNormError", "canonical_norm"]
