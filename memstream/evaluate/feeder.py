"""Feeding a video file to a stream in pieces: up to a moment, then on from there later.

`Stream.add_video(path, max_seconds=...)` decodes from the start each time; a streaming
evaluation asks its questions at increasing times, so `FrameFeeder` keeps one lazy decoder per
video and hands the stream the frames it has not seen yet, up to each question's time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .. import video
from ..engine import Stream


class FrameFeeder:
    """Samples `path` at the stream's fps and ingests frames on demand, in time order."""

    def __init__(self, stream: Stream, path: str | Path):
        self.stream = stream
        self._frames: Iterator[tuple[np.ndarray, float]] = video.sample_frames(str(path), stream.config.fps)
        self._held: tuple[np.ndarray, float] | None = None  # decoded, but due after the last request
        self.exhausted = False  # the whole file has been ingested (and its odd last frame padded)
        self._chunk = 2 * stream.config.encode_batch  # frames per vision-tower call, as add_video uses

    def advance_to(self, until_s: float | None) -> int:
        """Ingest every sampled frame taken before `until_s` seconds (None: the whole rest of the file).

        A frame at exactly `until_s` is left for later: the question asked at that moment sees
        the half-open interval [0, until_s). Only complete blocks (frame pairs) become visible,
        except at the end of the file, where the odd last frame is padded as `add_video` does.
        Returns the number of blocks added.
        """
        added, batch, times = 0, [], []
        while not self.exhausted:
            if self._held is None:
                self._held = next(self._frames, None)
                if self._held is None:
                    self.exhausted = True
                    break
            frame, t = self._held
            if until_s is not None and t >= until_s:
                break
            batch.append(frame)
            times.append(t)
            self._held = None
            if len(batch) == self._chunk:
                added += self.stream.add_frames(np.stack(batch), times)
                batch, times = [], []
        if batch:
            added += self.stream.add_frames(np.stack(batch), times)
        if self.exhausted:
            added += self.stream.flush()
        return added
