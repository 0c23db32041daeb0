"""The certification core's error types (one place, so that every engine raises the same ones)."""

from __future__ import annotations


class CertifyError(ValueError):
    """Bad arguments to a certification call."""


class EngineError(CertifyError):
    """auto_LiRPA 0.3 failed inside its own code on a model it accepted (a shape it mishandles);
    the message names its error. No bound is returned, so nothing unsound comes out."""
