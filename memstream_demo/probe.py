"""The bias probe: one question asked at several stream times, on a fresh memory of the same file.

The session's own memory already holds the whole video, so the probe opens its own stream (same
settings, the session's first policy), feeds the file up to each time with `VideoFeed.advance_to` and
asks there: each answer's trace is what the question would have seen at that moment. Only the first
answer token is generated (the trace is complete at the prefill), so a probe costs one ingestion of
the file plus one prefill per time.
"""

from __future__ import annotations

import threading

from memstream.errors import ConfigError, InputError
from memstream.feed import VideoFeed
from memstream.trace import RetrievalTrace

MAX_POINTS = 12  # times asked per probe


def probe_times(duration_s: float, points: int, start_s: float | None = None,
                end_s: float | None = None) -> list[float]:
    """`points` times evenly spread over [start_s, end_s] (defaults: one fifth of the video, its end)."""
    if not isinstance(points, int | float) or not 2 <= int(points) <= MAX_POINTS:
        raise ConfigError(f"The probe asks at 2 to {MAX_POINTS} times, not {points!r}.")
    end = duration_s if end_s is None else min(float(end_s), duration_s)
    start = duration_s / 5 if start_s is None else float(start_s)
    if not 0 < start < end:
        raise ConfigError(f"The probe's range must lie inside the video (0 to {duration_s:.1f} s), with its start "
                          "before its end.")
    n = int(points)
    return [start + (end - start) * i / (n - 1) for i in range(n)]


def run_probe(engine, policy: str, options: dict, path: str, question: str, times: list[float],
              stop: threading.Event | None = None) -> list[tuple[float, RetrievalTrace]]:
    """Ask `question` after feeding `path` up to each of `times` (seconds, increasing) into a fresh
    `policy` stream built with `options` (`Engine.stream` keywords); (time, trace) pairs. Times before the
    first block are skipped. Raises MemStreamError (one sentence) for a bad question or file."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("The probe's question is empty; type a question about the video.")
    stream = engine.stream(policy=policy, **options)
    feed = VideoFeed(path, options.get("fps", 1.0), [stream], batch_frames=2, stop=stop)
    out = []
    try:
        for t in times:
            feed.advance_to(t)
            if stop is not None and stop.is_set():
                break
            if stream.stats()["blocks"] == 0:
                continue
            answer = stream.ask(question.strip(), max_new_tokens=1)
            out.append((t, answer.trace))
    finally:
        feed.close()
        stream.close()
    return out
