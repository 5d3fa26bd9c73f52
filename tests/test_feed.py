"""Tests for memstream/feed.py, the one ingestion loop of video files, and for its three users
(`Stream.add_video`, the eval's `FrameFeeder`, the demo's file ingestion)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from videos import counter_frames, frame_index

from memstream import video
from memstream.errors import ConfigError, InputError, VideoError
from memstream.evaluate.feeder import FrameFeeder
from memstream.feed import VideoFeed, hand_over

SAMPLE = str(Path(__file__).resolve().parent.parent / "assets" / "sample.mp4")  # 8 s at 10 fps


class Recorder:
    """A feed target that records what it is handed and pairs frames into blocks as a stream does."""

    def __init__(self):
        self.batches: list[tuple[int, list[float]]] = []  # (frames, times) per add_frames call
        self.frames: list[np.ndarray] = []
        self.pending = 0
        self.flushes = 0

    def add_frames(self, frames: np.ndarray, times: list[float]) -> int:
        assert frames.dtype == np.uint8 and frames.ndim == 4 and len(frames) == len(times)
        self.batches.append((len(frames), list(times)))
        self.frames.extend(frames)
        total = self.pending + len(frames)
        self.pending = total % 2
        return total // 2

    def flush(self) -> int:
        self.flushes += 1
        padded, self.pending = self.pending, 0
        return padded

    @property
    def times(self) -> list[float]:
        return [t for _, ts in self.batches for t in ts]


@pytest.fixture
def opens(monkeypatch) -> list[str]:
    """The paths video files are opened (checked, probed) at, in order."""
    seen: list[str] = []
    real = video._open
    monkeypatch.setattr(video, "_open", lambda path: seen.append(str(path)) or real(path))
    return seen


def wait_for(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


# ---------------------------------------------------------------- the loop


def test_opens_once_and_tells_what_a_probe_tells(opens):
    feed = VideoFeed(SAMPLE, 1.0, [rec := Recorder()])
    assert feed.info == video.probe_video(SAMPLE) and feed.info.duration_s == 8.0
    assert feed.run() == 4
    assert opens == [SAMPLE, SAMPLE]  # the feed, then the probe above: the feed itself opened once
    assert rec.times == [float(t) for t in range(8)]


def test_an_opened_video_is_not_opened_again(opens):
    opened = video.open_video(SAMPLE)
    rec = Recorder()
    assert VideoFeed(opened, 2.0, [rec]).run() == 8 and len(rec.times) == 16
    assert opens == [SAMPLE]


def test_batches_offset_and_padding_of_the_odd_last_frame(video_factory):
    path = video_factory.write("seven.mp4", counter_frames(7))  # 10 fps: frames at 0, 0.1 ... 0.6 s
    a, b = Recorder(), Recorder()
    feed = VideoFeed(path, 10.0, [a, b], batch_frames=4, time_offset_s=100.0)
    assert feed.run() == 4  # 3 pairs and the padded seventh frame
    assert [n for n, _ in a.batches] == [4, 3] and a.flushes == 1 and feed.finished
    assert a.times == [100.0 + t for _, t in video.sample_frames(path, 10.0)]
    assert [frame_index(f) for f in a.frames] == list(range(7))
    assert b.batches == a.batches and b.flushes == 1  # every target gets the same batches
    assert feed.run() == 0 and feed.advance_to(None) == 0 and a.flushes == 1  # the input has ended


def test_advance_to_is_half_open_and_keeps_the_rest_for_later():
    rec = Recorder()
    feed = VideoFeed(SAMPLE, 1.0, [rec], batch_frames=4)  # frames at 0, 1, ... 7 s
    assert feed.advance_to(3.0) == 1 and rec.times == [0.0, 1.0, 2.0]  # 3.0 waits: [0, 3)
    assert rec.pending == 1 and rec.flushes == 0  # only whole blocks are visible mid-file
    assert feed.advance_to(3.0) == 0 and len(rec.batches) == 1
    assert feed.advance_to(5.5) == 2 and rec.times == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert not feed.exhausted and not feed.finished
    assert feed.advance_to(None) == 1 and rec.times[-2:] == [6.0, 7.0]
    assert feed.exhausted and feed.finished and rec.flushes == 1


def test_run_through_a_time_includes_it_and_ends_the_input():
    rec = Recorder()
    feed = VideoFeed(SAMPLE, 1.0, [rec])
    assert feed.run(2.0) == 2 and rec.times == [0.0, 1.0, 2.0]  # the third frame is padded
    assert rec.flushes == 1 and feed.finished and not feed.exhausted
    assert feed.advance_to(None) == 0 and len(rec.times) == 3


def test_pacing_follows_real_time_and_reanchors_when_it_changes(monkeypatch):
    clock, slept = [50.0], []

    def fake_sleep(s):
        slept.append(round(s, 9))
        clock[0] += s

    monkeypatch.setattr("memstream.feed.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr("memstream.feed.time.sleep", fake_sleep)
    paces = iter([2.0] * 4 + [None] * 2 + [4.0] * 2)  # read once per frame, frames 1 s apart
    rec = Recorder()
    assert VideoFeed(SAMPLE, 1.0, [rec], pace=lambda: next(paces)).run() == 4
    # at 2x a frame is due 0.5 s after the one before; unpaced frames wait for nothing; when the
    # pace changes the current frame is due at once and the next 1/4 s later
    assert slept == [0.0, 0.5, 0.5, 0.5, 0.0, 0.25]
    assert len(rec.times) == 8


def test_an_event_stops_a_pacing_wait_at_once():
    stop = threading.Event()
    rec = Recorder()
    feed = VideoFeed(SAMPLE, 1.0, [rec], pace=0.01, stop=stop)  # the second frame is due in 100 s
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    assert feed.run() == 0
    assert time.monotonic() - t0 < 10 and rec.batches == [] and rec.flushes == 0


def test_a_stop_between_batches_hands_nothing_more():
    rec, seen = Recorder(), []
    feed = VideoFeed(SAMPLE, 1.0, [rec], stop=lambda: len(seen) >= 2, on_batch=seen.append)
    assert feed.run() == 2  # two blocks, then stopped: no batch in progress, no padding
    assert seen == [[0.0, 1.0], [2.0, 3.0]] and rec.times == [0.0, 1.0, 2.0, 3.0] and rec.flushes == 0
    assert feed.stopped and not feed.finished


def test_a_target_closed_by_the_stopper_counts_as_stopped():
    stop = threading.Event()

    class Closing(Recorder):
        def add_frames(self, frames, times):
            stop.set()  # closed by a restart between the check and the call
            raise InputError("This stream was closed; open a new stream to add frames.")

    first, closing, never = Recorder(), Closing(), Recorder()
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    assert hand_over([first, closing, never], frames, [0.0, 1.0], stop) is None
    assert len(first.batches) == 1 and never.batches == []
    with pytest.raises(InputError):  # refused without a stop: an error, raised
        hand_over([Closing()], frames, [0.0, 1.0], lambda: False)


@pytest.mark.parametrize("batch", [0, 1, 3, True, 2.0])
def test_bad_batch_size(batch):
    with pytest.raises(ConfigError):
        VideoFeed(SAMPLE, 1.0, batch_frames=batch)


def test_a_bad_file_fails_when_the_feed_is_made(video_factory):
    with pytest.raises(VideoError):
        VideoFeed(video_factory.text(), 1.0)


# ---------------------------------------------------------------- its users


def test_add_video_opens_once_and_continues_after_earlier_frames(engine, opens):
    stream = engine.stream(policy="full", fps=1.0, tokens_per_frame=8)
    stream.add_frames(np.zeros((2, 56, 56, 3), np.uint8))  # frames at 0 and 1 s
    assert stream.add_video(SAMPLE, max_seconds=2.0) == 2  # file frames 0, 1, 2 s; the third padded
    assert opens == [SAMPLE]
    assert [tuple(b.times) for b in stream.memory.blocks] == [(0.0, 1.0), (2.0, 3.0), (4.0,)]


def test_frame_feeder_opens_once_across_questions(engine, opens):
    stream = engine.stream(policy="rekv", fps=1.0, tokens_per_frame=8)
    feeder = FrameFeeder(stream, SAMPLE)
    assert [feeder.advance_to(t) for t in (2.0, 5.0, None)] == [1, 1, 2]
    assert feeder.exhausted and opens == [SAMPLE] and stream.stats()["frames"] == 8


def test_the_demo_opens_an_uploaded_file_once_and_feeds_both_streams(engine, opens):
    from memstream_demo.manager import SessionManager
    from memstream_demo.state import Limits, Settings

    m = SessionManager(engine, Settings(policy="rekv", compare="full", tokens_per_frame=16, fps=2.0), Limits())
    try:
        s = m.get("tab")
        assert s.start_file(SAMPLE, "sample.mp4")
        wait_for(lambda: s.status()["state"] == "done")
        assert opens == [SAMPLE]  # checked on upload and sampled from that same opening
        assert [st.stats()["blocks"] for st in s.streams] == [8, 8] and s.status()["position_s"] == 8.0
    finally:
        m.shutdown()


def test_paced_feed_hands_due_frames_without_waiting_to_fill_a_batch():
    """A worker process takes 8 blocks per call; at a real-time pace the frames already due must not
    wait for later seconds of the file to fill that batch."""
    rec = Recorder()
    feed = VideoFeed(SAMPLE, 2.0, [rec], batch_frames=16, pace=20.0)  # 16 frames, 0.025 s apart
    assert feed.run() == 8 and len(rec.times) == 16
    assert len(rec.batches) > 1 and max(n for n, _ in rec.batches) < 16
    unpaced = Recorder()
    VideoFeed(SAMPLE, 2.0, [unpaced], batch_frames=16).run()
    assert [n for n, _ in unpaced.batches] == [16]  # as fast as possible: full batches
