"""The one ingestion loop for video files: open once, sample lazily, batch, pace, hand to streams.

    feed = VideoFeed("clip.mp4", fps=1.0, targets=[stream])
    feed.info.duration_s        # what probing the file learned, from the same opening
    feed.advance_to(30.0)       # the frames taken before 30 s; the rest waits for a later call
    feed.run()                  # the rest of the file; the odd last frame is padded

`Stream.add_video`, the evaluation's streaming mode (`evaluate.feeder.FrameFeeder`) and the demo's
file ingestion (`memstream_demo.session`) are thin uses of this loop. Times are seconds; a sampled frame's time
is its own timestamp in the file (`video.sample_frames`), shifted by `time_offset_s` for the
targets. Frames are uint8 RGB [H, W, 3] at the file's native size; targets resize them.

Pacing replays the file at a multiple of real time: frame t is handed no earlier than t / pace
seconds after the moment pacing started (or last changed, see `pace`). A question answered
between two `advance_to` calls does not stop that clock, as a live camera would not stop.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np

from . import video
from .errors import ConfigError, MemStreamError

Stop = threading.Event | Callable[[], bool]
Pace = float | Callable[[], float | None] | None


class FeedTarget(Protocol):
    """What a feed hands frames to; `memstream.Stream` is one."""

    def add_frames(self, frames: np.ndarray, times: list[float]) -> int: ...

    def flush(self) -> int: ...


def is_stopped(stop: Stop | None) -> bool:
    """Whether `stop` (an Event, a callable returning True once stopped, or None: never) is set."""
    if stop is None:
        return False
    return stop.is_set() if isinstance(stop, threading.Event) else bool(stop())


def hand_over(targets: Sequence[FeedTarget], frames: np.ndarray, times: Sequence[float],
              stop: Stop | None = None) -> int | None:
    """Give one batch (uint8 [T, H, W, 3], times in s) to every target in turn.

    Returns the blocks the first target added (targets fed the same frames add the same number),
    or None when `stop` was set before every target had the batch. A target that refuses the
    batch because it was closed by whoever set `stop` (a restart, `Stream.close`) counts as
    stopped, not as an error; any other refusal is raised.
    """
    added: int | None = None
    for target in targets:
        if is_stopped(stop):
            return None
        try:
            n = target.add_frames(frames, list(times))
        except MemStreamError:
            if is_stopped(stop):  # closed under us, between the check above and the call
                return None
            raise
        added = n if added is None else added
    return added or 0


class VideoFeed:
    """Samples one video file at `fps` and hands its frames to `targets`, `batch_frames` at a time.

    source: a path, or a `video.OpenedVideo` already opened (say, to show its duration first);
        a path is opened (checked) here, so a bad file raises `VideoError` from the constructor.
    targets: streams (anything with `add_frames(frames, times)` and `flush()`), all fed the same
        frames in order; the demo's compare mode feeds two.
    batch_frames: frames per hand-over, even (a block is 2 frames): larger batches let the vision
        tower encode several blocks per call; 2 hands each block over as soon as it is whole. Under
        pacing a batch is handed early when the next frame is not yet due, so a live replay never
        holds frames back to fill a batch.
    pace: None for as fast as possible, a multiple of real time (1.0 = a live camera), or a
        callable read before every frame, so that pacing can change while ingesting (the clock
        is then re-anchored: the current frame is due now, later ones at the new pace).
    stop: a `threading.Event` (which also cuts a pacing wait short) or a callable returning True
        once ingestion must end. Checked before every frame and every hand-over; once it is set
        nothing more is handed, not even the batch in progress or the padding.
    time_offset_s: added to every frame's time before it is handed (a file after earlier frames).
    on_batch: called with the handed times after every batch that all targets took (the demo
        checks its memory cap there; setting `stop` from it ends the feed).

    Attributes `targets`, `pace`, `stop` and `on_batch` may be changed between calls.
    """

    def __init__(self, source: str | os.PathLike | video.OpenedVideo, fps: float,
                 targets: Sequence[FeedTarget] = (), *, batch_frames: int = 2, pace: Pace = None,
                 stop: Stop | None = None, time_offset_s: float = 0.0,
                 on_batch: Callable[[list[float]], object] | None = None):
        if isinstance(batch_frames, bool) or not isinstance(batch_frames, int) or batch_frames < 2 or batch_frames % 2:
            raise ConfigError(f"batch_frames must be an even number of at least 2, got {batch_frames!r}.")
        self.video = source if isinstance(source, video.OpenedVideo) else video.open_video(source)
        self.info: video.VideoInfo = self.video.info
        self.fps = fps
        self._frames: Iterator[tuple[np.ndarray, float]] = self.video.frames(fps)  # lazy: nothing decoded yet
        self.targets = list(targets)
        self.batch_frames = batch_frames
        self.pace = pace
        self.stop = stop
        self.time_offset_s = time_offset_s
        self.on_batch = on_batch
        self.exhausted = False  # every sampled frame of the file has been read
        self.finished = False  # the input has ended (end of file or `run`): the last frame was padded
        self._held: tuple[np.ndarray, float] | None = None  # decoded, but due after the last request
        self._pace_used: float | None = None
        self._wall0 = 0.0  # perf_counter() at which file time 0 is due under `_pace_used`

    @property
    def stopped(self) -> bool:
        return is_stopped(self.stop)

    def advance_to(self, until_s: float | None) -> int:
        """Hand every sampled frame taken before `until_s` seconds of the file (None: the rest of it).

        A frame at exactly `until_s` is kept for later: a question asked at that moment sees the
        half-open interval [0, until_s). Only complete blocks (frame pairs) become visible to a
        stream, except at the end of the file, where the odd last frame is padded (`flush`).
        Returns the number of blocks the first target added.
        """
        added, frames, times = 0, [], []
        while not self.finished:
            if self.stopped:
                return added
            item = self._next_frame()
            if item is None:
                break
            frame, t = item
            if until_s is not None and t >= until_s:
                self._held = item
                break
            due = self._due_at(t)
            if due is not None and frames and len(frames) % 2 == 0 and due > time.perf_counter():
                # paced: hand the whole blocks already due rather than hold them back to fill a batch
                n = self._hand(frames, times)
                if n is None:
                    return added
                added, frames, times = added + n, [], []
            if self._sleep_until(due):
                return added
            frames.append(frame)
            times.append(self.time_offset_s + t)
            if len(frames) == self.batch_frames:
                n = self._hand(frames, times)
                if n is None:
                    return added
                added, frames, times = added + n, [], []
        if frames:
            n = self._hand(frames, times)
            if n is None:
                return added
            added += n
        if self.exhausted:
            added += self._pad()
        return added

    def run(self, through_s: float | None = None) -> int:
        """Hand the rest of the file, or its frames up to and including `through_s` seconds as if
        the file ended there, then end the input: the odd last frame is padded. Returns blocks added."""
        bound = None if through_s is None else math.nextafter(through_s, math.inf)  # t < bound <=> t <= through_s
        added = self.advance_to(bound)
        return added + self._pad()

    def close(self) -> None:
        """Stop decoding (frees the decoder); nothing more is handed."""
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()
        self.finished = True

    # ---- steps ---------------------------------------------------------------------------------
    def _next_frame(self) -> tuple[np.ndarray, float] | None:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        if self.exhausted:
            return None
        item = next(self._frames, None)
        self.exhausted = item is None
        return item

    def _due_at(self, t: float) -> float | None:
        """The perf_counter() time at which frame time `t` is due at the current pace (None: as fast
        as possible). Reads the pace once."""
        pace = self.pace() if callable(self.pace) else self.pace
        if pace != self._pace_used:  # pacing started or changed: the current frame is due now
            self._wall0, self._pace_used = time.perf_counter() - (t / pace if pace else 0.0), pace
        return self._wall0 + t / pace if pace else None

    def _sleep_until(self, due: float | None) -> bool:
        """Sleep until `due` (None: not at all); True when stopped meanwhile (a stop cuts the wait short)."""
        if due is None:
            return False
        delay = max(0.0, due - time.perf_counter())
        if isinstance(self.stop, threading.Event):
            return self.stop.wait(delay)
        time.sleep(delay)
        return self.stopped

    def _hand(self, frames: list[np.ndarray], times: list[float]) -> int | None:
        """One batch to every target; the blocks added, or None when stopped before all had it."""
        n = hand_over(self.targets, np.stack(frames), times, self.stop)
        if n is not None and self.on_batch is not None and not self.stopped:
            self.on_batch(times)
        return n

    def _pad(self) -> int:
        """End of input: each target pads its odd pending frame (once)."""
        if self.finished:
            return 0
        added = None
        for target in self.targets:
            if self.stopped:
                return 0
            n = target.flush()
            added = n if added is None else added
        self.finished = True
        return added or 0
