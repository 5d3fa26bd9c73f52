"""The demo's plain state objects: settings, limits, sources, answers and notices (no threads, no gradio)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from memstream.config import options_for
from memstream.errors import MemStreamError

PACES = {"as fast as possible": None, "real time": 1.0}


class SessionLimitError(MemStreamError):
    """The demo cannot open another session right now."""


@dataclass
class Limits:
    max_sessions: int = 8  # concurrent browser sessions
    session_memory_mb: float = 4096.0  # KV memory (CPU + GPU, all streams) per session
    idle_timeout_s: float = 1800.0  # a session without user action for this long is freed
    webcam_gap_s: float = 3.0  # no webcam frame for this long: shown as stopped
    max_thumbnails: int = 12  # retrieved-frame thumbnails kept per answer and policy
    thumbnail_height: int = 96  # px: every block's first frame is kept this high, for the thumbnail strip
    max_answers: int = 50  # answers (with traces and thumbnails) kept per session
    webcam_time_limit_s: float = 1800.0  # one webcam streaming run (gradio's time_limit)


@dataclass
class Settings:
    """What the settings accordion controls; names follow `StreamConfig` where they exist."""

    policy: str = "memstream"
    fps: float = 2.0
    tokens_per_frame: int = 256
    topk: int = 16
    n_local: int | None = 15000
    expert: str = "none"  # the engine's expert name, or "none"
    fusion_c: float = 60.0
    fusion_weights: tuple[float, float] = (1.0, 1.0)  # (internal, external)
    budget: int = 6000  # hermes: visual tokens kept per layer
    pace: str = "as fast as possible"  # for files; a webcam is always real time
    compare: str | None = None  # a second policy answering the same questions, or None
    max_new_tokens: int = 64

    # fields whose change means the memory must be rebuilt, and those a question reads (Stream.set_retrieval)
    MEMORY = ("policy", "fps", "tokens_per_frame", "n_local", "expert", "budget", "compare")
    RETRIEVAL = ("topk", "fusion_c", "fusion_weights")

    def policies(self) -> list[str]:
        return [self.policy] + ([self.compare] if self.compare and self.compare != self.policy else [])

    def stream_options(self, policy: str) -> dict:
        """Keyword arguments for `Engine.stream` (minus policy): those of the form's options `policy` takes."""
        opts = {"fps": self.fps, "tokens_per_frame": self.tokens_per_frame, "n_local": self.n_local,
                "expert": None if self.expert == "none" else self.expert, "budget": self.budget,
                **self.retrieval_options()}
        return options_for(policy, opts)

    def retrieval_options(self) -> dict:
        """The question-time settings, as keyword arguments of `Stream.set_retrieval`."""
        return {"topk": self.topk, "fusion_c": self.fusion_c, "fusion_weights": tuple(self.fusion_weights)}

    def changes(self, other: Settings, fields: tuple[str, ...] | None = None) -> list[str]:
        """Human-readable list of differences from `other` (the old settings) in `fields`
        (default: those that rebuild the memory)."""
        out = []
        for name in fields or self.MEMORY:
            old, new = getattr(other, name), getattr(self, name)
            if old != new:
                out.append(f"{name} {_show(old)} → {_show(new)}")
        return out


def _show(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@dataclass
class Source:
    kind: str  # "file" | "webcam"
    name: str
    path: str | None = None
    duration_s: float | None = None  # None for a webcam


@dataclass
class Result:
    """One policy's answer to one question, with what the heatmap strip needs."""

    policy: str
    answer: object  # memstream.Answer (final)
    thumbnails: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (image, caption), time order


@dataclass
class Record:
    """One question and its answer(s) (two in compare mode)."""

    question: str
    results: list[Result]
    source: str

    def label(self, index: int) -> str:
        q = self.question if len(self.question) <= 40 else self.question[:39] + "…"
        at = self.results[0].answer.asked_at_s if self.results else 0.0
        return f"#{index + 1} · {q} · at {at:.1f} s"


@dataclass
class Notice:
    text: str = ""
    level: str = "info"  # "info" | "warning" | "error"
    at: float = 0.0


def fmt_mb(mb: float | None) -> str:
    if mb is None or (isinstance(mb, float) and math.isnan(mb)):
        return "—"
    return f"{mb:.1f} MB" if mb < 1024 else f"{mb / 1024:.2f} GB"
