"""Tests for memstream/video.py: token grids, resizing, probing and frame sampling."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from videos import counter_frames, frame_index

from memstream import video
from memstream.errors import ConfigError, InputError, MemStreamError, VideoError
from memstream.video import (
    VideoInfo,
    frame_size_for_budget,
    grid_for_budget,
    probe_video,
    resize_frames,
    sample_frames,
)

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample.mp4"


def one_sentence(err: pytest.ExceptionInfo[MemStreamError]) -> str:
    text = str(err.value)
    assert text and "\n" not in text and text.endswith("."), text
    return text


def collect(path, fps, **kw) -> tuple[list[np.ndarray], list[float]]:
    pairs = list(sample_frames(path, fps, **kw))
    return [f for f, _ in pairs], [t for _, t in pairs]


@pytest.fixture
def pyav_only(monkeypatch):
    """Make decord unable to open anything, so the PyAV fallback decodes."""
    monkeypatch.setattr(video, "_decord_reader", lambda path: None)


# ---------------------------------------------------------------- grid_for_budget


@pytest.mark.parametrize("hw", [(1080, 1920), (1920, 1080), (480, 480), (100, 1000), (1000, 100), (37, 101)])
@pytest.mark.parametrize("tpf", [4, 16, 64, 256, 512, 2048])
def test_grid_respects_budget_and_aspect(hw, tpf):
    h, w = hw
    gh, gw = grid_for_budget(h, w, tpf)
    assert isinstance(gh, int) and isinstance(gw, int) and gh >= 1 and gw >= 1
    assert gh * gw <= 2 * tpf
    aspect_err = abs(math.log((gh / gw) / (h / w)))
    if tpf >= 64:  # enough tokens to approximate any of these shapes well and use the budget
        assert aspect_err < 0.1
        assert gh * gw >= 0.7 * 2 * tpf  # 10:1 with 128 tokens: 3x30 (exact) beats 3x40 or 4x32
    else:
        assert aspect_err < 0.5
    assert frame_size_for_budget(h, w, tpf) == (28 * gh, 28 * gw)


def test_grid_known_values():
    assert grid_for_budget(1080, 1920, 256) == (17, 30)  # 510 of 512 tokens, aspect 0.567 vs 0.5625
    assert grid_for_budget(1920, 1080, 256) == (30, 17)
    assert grid_for_budget(500, 500, 128) == (16, 16)
    assert grid_for_budget(500, 500, 4) == (2, 2)  # a square beats a 2x4 that fills the budget
    assert grid_for_budget(1000, 100, 4) == (8, 1)  # extreme 10:1 with 8 tokens: as tall as possible
    assert grid_for_budget(np.int64(240), np.int64(320), 64) == grid_for_budget(240, 320, 64)


def test_frame_size_multiples_of_28():
    for h, w in [(240, 320), (1920, 1080), (37, 101)]:
        H, W = frame_size_for_budget(h, w, 128)
        assert H % 28 == 0 and W % 28 == 0 and (H // 28) * (W // 28) <= 256


@pytest.mark.parametrize(
    "args", [(240, 320, 3), (240, 320, 0), (240, 320, 16385), (0, 320, 64), (240, -1, 64), (240.0, 320, 64)]
)
def test_grid_bad_arguments(args):
    with pytest.raises(ConfigError) as err:
        grid_for_budget(*args)
    one_sentence(err)


# ---------------------------------------------------------------- resize_frames


def test_resize_shapes_and_dtype():
    frames = np.random.default_rng(0).integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
    out = resize_frames(frames, (28, 56))
    assert out.shape == (3, 28, 56, 3) and out.dtype == np.uint8
    assert np.array_equal(out, resize_frames(frames, (28, 56)))  # deterministic
    assert resize_frames(frames[0], (28, 56)).shape == (1, 28, 56, 3)
    assert np.array_equal(resize_frames(frames, (50, 70)), frames)


def test_resize_keeps_flat_colour_and_upscales():
    flat = np.full((2, 9, 13, 3), (10, 200, 77), dtype=np.uint8)
    out = resize_frames(flat, (56, 84))
    assert out.shape == (2, 56, 84, 3) and np.all(out == np.array([10, 200, 77], dtype=np.uint8))


def test_resize_grey_rgba_and_integer_input():
    grey = np.full((2, 20, 30), 90, dtype=np.uint8)
    for arr in (grey, grey[..., None]):
        out = resize_frames(arr, (28, 28))
        assert out.shape == (2, 28, 28, 3) and np.all(out == 90)
    assert resize_frames(grey[0], (28, 28)).shape == (1, 28, 28, 3)
    rgba = np.zeros((1, 20, 30, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10
    out = resize_frames(rgba, (28, 28))
    assert out.shape == (1, 28, 28, 3) and np.all(out[..., 0] == 255) and np.all(out[..., 1:] == 0)
    as_int = resize_frames(grey.astype(np.int64), (28, 28))
    assert as_int.dtype == np.uint8 and np.all(as_int == 90)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 8, 8, 3), dtype=np.float32),  # floats in [0, 1] are ambiguous: refuse
        np.full((2, 8, 8, 3), 300, dtype=np.int32),
        np.zeros((2, 8, 8, 3), dtype=bool),
        np.zeros(8, dtype=np.uint8),
        np.zeros((1, 2, 8, 8, 3), dtype=np.uint8),
        np.zeros((2, 8, 8, 5), dtype=np.uint8),
        np.zeros((2, 0, 8, 3), dtype=np.uint8),
    ],
)
def test_resize_bad_frames(frames):
    with pytest.raises(InputError) as err:
        resize_frames(frames, (28, 28))
    one_sentence(err)


@pytest.mark.parametrize("size", [(0, 28), (28,), (28.0, 28), "28x28"])
def test_resize_bad_size(size):
    with pytest.raises(ConfigError) as err:
        resize_frames(np.zeros((1, 8, 8, 3), dtype=np.uint8), size)
    one_sentence(err)


# ---------------------------------------------------------------- probe_video


def test_probe_sample():
    info = probe_video(SAMPLE)
    assert info == VideoInfo(str(SAMPLE), 10.0, 80, 8.0, 240, 320, "decord")
    assert SAMPLE.stat().st_size < 2 * 1024 * 1024


def test_probe_kinds(video_factory):
    one = probe_video(video_factory.one_frame())
    assert (one.fps, one.n_frames, one.duration_s) == (10.0, 1, 0.1)
    portrait = probe_video(video_factory.portrait())
    assert (portrait.height, portrait.width, portrait.n_frames) == (1920, 1080, 4)
    odd = probe_video(video_factory.odd_size())
    assert (odd.height, odd.width, odd.n_frames) == (37, 101, 5)
    rotated = probe_video(video_factory.rotated())
    assert (rotated.height, rotated.width) == (60, 40)  # displayed size, rotation applied


def test_probe_still_image_is_one_frame_video(video_factory):
    info = probe_video(video_factory.png())
    assert (info.n_frames, info.height, info.width, info.backend) == (1, 48, 64, "pyav")


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda f: f.dir / "missing.mp4", "does not exist"),
        (lambda f: f.dir, "directory"),
        (lambda f: f.empty(), "empty"),
        (lambda f: f.text(), "not a readable video"),
        (lambda f: f.audio_only(), "no video stream"),
        (lambda f: f.undecodable(), "no decodable video frames"),
    ],
)
def test_probe_and_sample_bad_files(video_factory, make, words):
    path = make(video_factory)
    with pytest.raises(VideoError) as err:
        probe_video(path)
    assert words in one_sentence(err)
    with pytest.raises(VideoError) as err:
        sample_frames(path, 1.0)  # checked at call time, before any iteration
    assert words in one_sentence(err)


# ---------------------------------------------------------------- sample_frames


def test_sample_times_and_shapes():
    frames, times = collect(SAMPLE, 1.0)
    assert times == pytest.approx([0, 1, 2, 3, 4, 5, 6, 7])
    assert all(f.shape == (240, 320, 3) and f.dtype == np.uint8 for f in frames)
    _, times = collect(SAMPLE, 2.5)
    assert times == pytest.approx([0.4 * k for k in range(20)])
    _, times = collect(SAMPLE, 0.3)  # 3.33 s and 6.67 s take the frame shown then
    assert times == pytest.approx([0.0, 3.3, 6.6])
    _, times = collect(SAMPLE, 1.0, max_frames=3)
    assert times == pytest.approx([0, 1, 2])


def test_sample_above_native_fps_gives_each_frame_once():
    frames, times = collect(SAMPLE, 25.0)
    assert len(frames) == 80 and times == pytest.approx([k / 10 for k in range(80)])


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_sample_picks_the_right_native_frames(video_factory, monkeypatch, backend):
    if backend == "pyav":
        monkeypatch.setattr(video, "_decord_reader", lambda path: None)
    path = video_factory.write("count.mp4", counter_frames(30))
    assert probe_video(path).backend == backend
    for fps, expected in [
        (1.0, [0, 10, 20]),
        (2.5, list(range(0, 30, 4))),
        (3.0, [0, 3, 6, 10, 13, 16, 20, 23, 26]),
    ]:
        frames, times = collect(path, fps, chunk=4)
        assert [frame_index(f) for f in frames] == expected
        assert times == pytest.approx([i / 10 for i in expected])
    frames, times = collect(path, 50.0)
    assert [frame_index(f) for f in frames] == list(range(30))


def test_sampling_is_lazy(video_factory, monkeypatch):
    import decord

    calls: list[int] = []
    original = decord.VideoReader.get_batch
    monkeypatch.setattr(
        decord.VideoReader, "get_batch", lambda self, idx: calls.append(len(idx)) or original(self, idx)
    )
    path = video_factory.write("long.mp4", counter_frames(300, 32, 32))
    frames = sample_frames(path, 10.0, chunk=4)
    assert calls == [] and iter(frames) is frames
    frame, t = next(frames)
    assert calls == [4] and t == 0.0 and frame_index(frame) == 0
    frames.close()


@pytest.mark.parametrize("fps", [0, -1.0, float("nan"), float("inf"), True, "2"])
def test_sample_bad_fps(fps):
    with pytest.raises(ConfigError) as err:
        sample_frames(SAMPLE, fps)
    one_sentence(err)


@pytest.mark.parametrize("kw", [{"max_frames": 0}, {"max_frames": 1.5}, {"chunk": 0}])
def test_sample_bad_limits(kw):
    with pytest.raises(ConfigError) as err:
        sample_frames(SAMPLE, 1.0, **kw)
    one_sentence(err)


@pytest.mark.parametrize("fps", [0.1, 1.0, 30.0])
def test_one_frame_video(video_factory, fps):
    frames, times = collect(video_factory.one_frame(), fps)
    assert times == [0.0] and frames[0].shape == (64, 96, 3)


def test_still_image_yields_one_frame(video_factory):
    frames, times = collect(video_factory.png(), 2.0)
    assert times == [0.0] and frames[0].shape == (48, 64, 3)


@pytest.mark.parametrize("name", ["cut.mkv", "cut.avi"])  # decord: silent short read / failing batch
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_truncated_video_keeps_frames_before_the_cut(video_factory, monkeypatch, name, backend):
    if backend == "pyav":
        monkeypatch.setattr(video, "_decord_reader", lambda path: None)
    path = video_factory.truncated(name, n_frames=60)
    with pytest.warns(UserWarning, match="damaged or truncated") as record:
        frames, times = collect(path, 10.0, chunk=8)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert 15 <= len(frames) < 60
    assert times == pytest.approx([i / 10 for i in range(len(frames))])
    # PyAV drops the frame rebuilt from the cut packet; decord cannot tell and may keep it
    good = frames if backend == "pyav" else frames[:-1]
    assert [frame_index(f) for f in good] == [i % 30 for i in range(len(good))]


def test_truncated_video_no_warning_when_stopping_early(video_factory):
    path = video_factory.truncated()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames, _ = collect(path, 10.0, max_frames=5)
    assert [frame_index(f) for f in frames] == [0, 1, 2, 3, 4]


def test_corrupt_video_does_not_crash(video_factory):
    path = video_factory.corrupt()
    with pytest.warns(UserWarning, match="damaged or truncated"):
        frames, _ = collect(path, 10.0)
    assert len(frames) >= 20 and [frame_index(f) for f in frames[:20]] == list(range(20))


def test_portrait_video(video_factory):
    path = video_factory.portrait()
    frames, times = collect(path, 10.0)
    assert len(frames) == 4 and frames[0].shape == (1920, 1080, 3)
    size = frame_size_for_budget(1920, 1080, 256)
    assert size[0] > size[1]
    assert resize_frames(np.stack(frames), size).shape == (4, *size, 3)


def test_odd_size_video(video_factory):
    frames, _ = collect(video_factory.odd_size(), 10.0)
    assert len(frames) == 5 and frames[0].shape == (37, 101, 3)
    assert [frame_index(f) for f in frames] == [0, 1, 2, 3, 4]  # stored losslessly
    size = frame_size_for_budget(37, 101, 64)
    assert resize_frames(np.stack(frames), size).shape == (5, *size, 3)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_rotated_video_is_shown_upright(video_factory, monkeypatch, backend):
    if backend == "pyav":
        monkeypatch.setattr(video, "_decord_reader", lambda path: None)
    frames, _ = collect(video_factory.rotated(), 10.0)
    assert len(frames) == 3 and frames[0].shape == (60, 40, 3)
    red = frames[0][..., 0].mean(axis=0)  # the stored top band must end up on the right
    assert red[-5:].mean() > 200 and red[:20].mean() < 30
