"""Errors of the evaluation harness: each one sentence for a person, like every `MemStreamError`."""

from __future__ import annotations

from ..errors import MemStreamError


class EvalError(MemStreamError):
    """A problem with an evaluation run's input or output (the CLI prints it and exits 2)."""


class AnnotationError(EvalError):
    """An annotation file that cannot be used: missing, not JSON, wrong or unknown fields, missing videos."""


class ResultsError(EvalError):
    """A results file that cannot be resumed: unreadable, corrupt lines, or other settings."""


class JudgeError(EvalError):
    """An answer judge that failed: unreachable endpoint, HTTP error, or a reply without a score."""
