"""Trace files: answers with their retrieval traces as JSON, to study away from the model that made them.

A trace recorded on a GPU can be opened on a laptop (the demo's "open a trace file" draws its heatmaps
with no model loaded). One file holds one answer or a whole session:

    {"format": "memstream-trace", "version": 1,
     "answers": [{"question": ..., "answer": ..., "model": ..., "policy": ..., "settings": {...},
                  "source": "sample.mp4", "asked_at_s": 12.0, "ttft_s": 0.4, "total_s": 1.2,
                  "frames": 24, "blocks": 12, "tokens": 768,
                  "trace": {RetrievalTrace.to_dict(): block_times, internal [L][N] raw per-layer scores,
                            selected [L][k], external [N] | null, fused [N], bias, kept, selection, ranking,
                            notice}}]}

`answer_entry` writes one entry, `dumps` a file's text, `loads`/`load` read one back, checking it:
anything that is not such a file raises `TraceFileError` with one sentence saying what is wrong.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from typing import Any

import torch

from .errors import InputError
from .trace import RANKINGS, SELECTIONS, Answer, RetrievalTrace

FORMAT = "memstream-trace"
VERSION = 1
MAX_BYTES = 64 * 2**20  # a larger file is refused before parsing (a session of 50 long answers is ~10 MB)


class TraceFileError(InputError):
    """A file that is not a readable memstream trace file."""


@dataclass
class TraceEntry:
    """One answer read back from a trace file."""

    question: str
    answer: str
    model: str
    policy: str
    trace: RetrievalTrace
    settings: dict[str, Any]  # the options the answer was made with, as written
    source: str  # the video's name ("" if unknown)
    asked_at_s: float  # stream time covered when asked
    ttft_s: float
    total_s: float
    frames: int
    blocks: int
    tokens: int

    def to_dict(self) -> dict:
        """The entry as a trace file holds it (what `answer_entry` wrote)."""
        return {"question": self.question, "answer": self.answer, "model": self.model, "policy": self.policy,
                "settings": _plain(self.settings), "source": self.source, "asked_at_s": self.asked_at_s,
                "ttft_s": self.ttft_s, "total_s": self.total_s, "frames": self.frames, "blocks": self.blocks,
                "tokens": self.tokens, "trace": self.trace.to_dict()}

    def summary(self) -> str:
        """The stamp the demo shows under an answer."""
        return (f"asked at {self.asked_at_s:.1f} s · {self.frames} frames · {self.blocks} blocks · {self.tokens} "
                f"tokens · TTFT {self.ttft_s:.2f} s · policy {self.policy} · model {self.model}")


def answer_entry(answer: Answer, *, model: str, settings: dict[str, Any] | None = None, source: str = "") -> dict:
    """The plain-JSON entry of one final answer (its trace included)."""
    if answer.trace is None:
        raise InputError("This answer has no trace (a partial answer or the offline reference).")
    return {
        "question": answer.question, "answer": answer.text, "model": model, "policy": answer.policy,
        "settings": _plain(settings or {}), "source": source, "asked_at_s": answer.asked_at_s,
        "ttft_s": answer.ttft_s, "total_s": answer.total_s, "frames": answer.frames_seen,
        "blocks": answer.blocks_seen, "tokens": answer.tokens_seen, "trace": answer.trace.to_dict(),
    }


def dumps(entries: list[dict]) -> str:
    """The text of a trace file holding `entries` (from `answer_entry`)."""
    return json.dumps({"format": FORMAT, "version": VERSION, "answers": entries}, allow_nan=True)


def load(path: str | os.PathLike) -> list[TraceEntry]:
    """Read and check a trace file; TraceFileError (one sentence) when it is not one."""
    name = os.path.basename(str(path))
    try:
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            raise TraceFileError(f"{name} is {size / 2**20:.0f} MB; a trace file is at most "
                                 f"{MAX_BYTES / 2**20:.0f} MB.")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise TraceFileError(f"{name} is not a text file, so it is not a memstream trace file.") from None
    except OSError as exc:
        raise TraceFileError(f"{name} cannot be read ({exc.strerror or exc}).") from None
    return loads(text, name)


def loads(text: str, name: str = "The file") -> list[TraceEntry]:
    """Check and read the text of a trace file (`name` is used in the error sentence)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceFileError(f"{name} is not JSON (line {exc.lineno}: {exc.msg.lower()}), so it is not a "
                             "memstream trace file.") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TraceFileError(f"{name} is JSON but not a memstream trace file (it has no \"format\": \"{FORMAT}\").")
    if doc.get("version") != VERSION:
        raise TraceFileError(f"{name} is a memstream trace file of version {doc.get('version')!r}; this "
                             f"version reads version {VERSION}.")
    answers = doc.get("answers")
    if not isinstance(answers, list) or not answers:
        raise TraceFileError(f"{name} holds no answers.")
    out = []
    for i, entry in enumerate(answers):
        try:
            out.append(_entry(entry))
        except _Bad as exc:
            raise TraceFileError(f"{name}: answer {i + 1} {exc}.") from None
    return out


class _Bad(Exception):
    """What is wrong with one entry, as the end of a sentence."""


def _entry(e: Any) -> TraceEntry:
    if not isinstance(e, dict):
        raise _Bad("is not an object")

    def get(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        v = e.get(key, default)
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            raise _Bad(f"has no valid {key!r}")
        return v

    return TraceEntry(
        question=get("question", str), answer=get("answer", str), model=get("model", str, ""),
        policy=get("policy", str, ""), trace=trace_from_dict(get("trace", dict)), settings=get("settings", dict, {}),
        source=get("source", str, ""), asked_at_s=float(get("asked_at_s", (int, float), 0.0)),
        ttft_s=float(get("ttft_s", (int, float), 0.0)), total_s=float(get("total_s", (int, float), 0.0)),
        frames=int(get("frames", int, 0)), blocks=int(get("blocks", int, 0)), tokens=int(get("tokens", int, 0)))


def trace_from_dict(d: dict) -> RetrievalTrace:
    """A `RetrievalTrace` from its `to_dict()` form, its shapes checked (raises `_Bad` via TraceFileError)."""
    times = _vector(d.get("block_times"), "block_times")
    n = len(times)
    internal = _tensor(d.get("internal"), "internal")
    if internal.dim() != 2 or internal.shape[1] != n or internal.shape[0] < 1:
        raise _Bad(f"has 'internal' scores that are not one row of {n} blocks per layer")
    n_layers = internal.shape[0]
    selected_raw = d.get("selected")
    if not isinstance(selected_raw, list) or len(selected_raw) != n_layers:
        raise _Bad(f"has 'selected' that is not one list of blocks per layer ({n_layers})")
    selected = []
    for row in selected_raw:
        if not isinstance(row, list) or not all(isinstance(b, int) and 0 <= b < n for b in row):
            raise _Bad(f"has 'selected' blocks outside 0..{n - 1}")
        selected.append(torch.tensor(row, dtype=torch.long))
    external = None if d.get("external") is None else _vector(d.get("external"), "external", n)
    fused = _vector(d.get("fused"), "fused", n)
    kept = None
    if d.get("kept") is not None:
        kept = _tensor(d.get("kept"), "kept")
        if tuple(kept.shape) != (n_layers, n):
            raise _Bad("has 'kept' counts of the wrong shape")
    selection, ranking = d.get("selection", "retrieved"), d.get("ranking")
    if selection not in SELECTIONS or ranking not in (None, *RANKINGS):
        raise _Bad(f"has an unknown selection {selection!r} or ranking {ranking!r}")
    trace = RetrievalTrace.build(times, internal, selected, external=external, fused=fused,
                                 policy=str(d.get("policy", "")), kept=kept, selection=selection, ranking=ranking)
    notice = d.get("notice", "")  # absent in files written before it existed
    return replace(trace, notice=notice) if isinstance(notice, str) and notice else trace


def _tensor(v: Any, name: str) -> torch.Tensor:
    try:
        t = torch.tensor(v, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise _Bad(f"has {name!r} that is not a list of numbers") from None
    return t


def _vector(v: Any, name: str, n: int | None = None) -> torch.Tensor:
    t = _tensor(v, name)
    if t.dim() != 1 or (n is not None and len(t) != n):
        raise _Bad(f"has {name!r} that is not one number per block" + (f" ({n})" if n is not None else ""))
    return t


def _plain(v: Any) -> Any:
    """Settings as JSON can hold them (tuples as lists, non-finite floats as strings)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)
