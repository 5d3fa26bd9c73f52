"""The errors memstream raises on bad input.

Every error carries one clear sentence meant for a person (the CLI prints it and exits 2;
the web demo shows it in the page). Internal bugs are not wrapped: they stay ordinary
exceptions so that they are loud in tests.
"""

from __future__ import annotations


class MemStreamError(Exception):
    """Base class: a problem with what the user gave us, explained in one sentence."""


class VideoError(MemStreamError):
    """A video file that cannot be used: missing, empty, corrupt, not a video, no frames."""


class ConfigError(MemStreamError):
    """A parameter outside its meaningful range (fps <= 0, tokens_per_frame < 4, unknown policy...)."""


class ModelLoadError(MemStreamError):
    """A model or expert that cannot be loaded (offline and not cached, bad directory...)."""


class EmptyMemoryError(MemStreamError):
    """A question asked before any frame was ingested."""


class InputError(MemStreamError):
    """Malformed frames, timestamps or questions passed to the library."""


class WorkerError(MemStreamError):
    """The process doing the model work (a worker process, a ZeroGPU call) failed or stopped during a call;
    the memory is as it was before the call."""


def expert_failure(exc: BaseException, doing: str, for_good: bool) -> str:
    """The one sentence that says an external expert raised while `doing` ("embedding frames", "embedding
    the question") and that ranking went on without it: from now on (`for_good`, the memory dropped it at
    ingest) or for this answer only (a question; the next one tries the expert again)."""
    when = "from now on" if for_good else "for this answer"
    return (f"The external expert failed while {doing} ({type(exc).__name__}), so {when} blocks are ranked "
            f"by the model's own attention only (internal-only).")
