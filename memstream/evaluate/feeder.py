"""Feeding a video file to a stream in pieces: up to a moment, then on from there later.

`Stream.add_video(path, max_seconds=...)` decodes from the start each time; a streaming
evaluation asks its questions at increasing times, so `FrameFeeder` keeps one lazy decoder per
video (a `memstream.feed.VideoFeed`) and hands the stream the frames it has not seen yet, up to
each question's time.
"""

from __future__ import annotations

from pathlib import Path

from ..engine import Stream
from ..feed import VideoFeed


class FrameFeeder:
    """Samples `path` at the stream's fps and ingests frames on demand, in time order."""

    def __init__(self, stream: Stream, path: str | Path):
        self.stream = stream
        # frames per vision-tower call, as add_video uses
        self.feed = VideoFeed(path, stream.config.fps, [stream], batch_frames=2 * stream.config.encode_batch)

    @property
    def exhausted(self) -> bool:
        """The whole file has been ingested (and its odd last frame padded)."""
        return self.feed.finished

    def advance_to(self, until_s: float | None) -> int:
        """Ingest every sampled frame taken before `until_s` seconds (None: the whole rest of the file).

        A frame at exactly `until_s` is left for later: the question asked at that moment sees
        the half-open interval [0, until_s). Only complete blocks (frame pairs) become visible,
        except at the end of the file, where the odd last frame is padded as `add_video` does.
        Returns the number of blocks added.
        """
        return self.feed.advance_to(until_s)

    def close(self) -> None:
        """Stop decoding the file."""
        self.feed.close()
