"""Bad and odd input through the library (`memstream.load`, `engine.stream`, `add_video`,
`add_frames`, `ask`): every bad input raises the right `MemStreamError` subclass with one sentence,
a failed call leaves the stream exactly as it was, and good-but-odd input just works."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import memstream
from memstream import video
from memstream.errors import ConfigError, EmptyMemoryError, InputError, MemStreamError, ModelLoadError, VideoError

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample.mp4"
Q = "What is moving?"
TPF = 16  # small token budget: fast on CPU, still several tokens per block


def one_sentence(err: pytest.ExceptionInfo[MemStreamError]) -> str:
    """The error's message, checked to be one sentence a person can read."""
    text = str(err.value)
    assert text and text == text.strip() and text.endswith("."), repr(text)
    assert "\n" not in text and "Traceback" not in text, repr(text)
    assert not re.search(r"[.!?]\s+[A-Z]", text), f"more than one sentence: {text!r}"
    return text


def frames_of(n: int, h: int = 56, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def new_stream(engine, **kw) -> memstream.Stream:
    options = {"policy": "rekv", "fps": 1.0, "tokens_per_frame": TPF, "topk": 4}
    options.update(kw)
    return engine.stream(**options)


def sample_stream_of(engine) -> memstream.Stream:
    """A stream holding assets/sample.mp4 (8 s at 1 fps: 4 blocks)."""
    stream = new_stream(engine)
    assert stream.add_video(str(SAMPLE)) == 4
    return stream


@pytest.fixture
def sample_stream(engine):
    return sample_stream_of(engine)


@pytest.fixture(scope="module")
def shared_sample(engine):
    """One sample stream for tests whose calls are all rejected (and so change nothing)."""
    return sample_stream_of(engine)


# ---------------------------------------------------------------- video files


BAD_FILES = {
    "empty-file": (lambda f: f.empty(), "empty"),
    "text-named-mp4": (lambda f: f.text(), "not a readable video"),
    "corrupt-mp4": (lambda f: f.corrupt("noise.mp4", start=0.2), "not a readable video"),  # index destroyed
    "audio-only": (lambda f: f.audio_only(), "no video stream"),
    "undecodable": (lambda f: f.undecodable(), "no decodable video frames"),
    "missing": (lambda f: f.dir / "missing.mp4", "does not exist"),
    "directory": (lambda f: f.dir, "directory"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_video_file(engine, video_factory, case):
    make, words = BAD_FILES[case]
    path = make(video_factory)
    stream = new_stream(engine)
    with pytest.raises(VideoError) as err:
        stream.add_video(str(path))
    assert words in one_sentence(err)
    assert stream.stats()["frames"] == 0 and stream.stats()["blocks"] == 0
    with pytest.raises(EmptyMemoryError) as err:  # nothing was ingested
        stream.ask(Q)
    one_sentence(err)


@pytest.mark.parametrize("make", [lambda f: f.truncated(), lambda f: f.corrupt()], ids=["truncated", "corrupt-mkv"])
def test_damaged_video_keeps_the_frames_before_the_damage(engine, video_factory, make):
    path = make(video_factory)  # 6 s at 10 fps, damaged after a few seconds
    stream = new_stream(engine)
    with pytest.warns(UserWarning, match="damaged or truncated") as record:
        added = stream.add_video(str(path))
    assert added > 0
    assert all("\n" not in str(w.message) for w in record)
    frames = stream.stats()["frames"]
    assert 2 <= frames < 6  # 1 fps: the frames at 0, 1, 2... s before the damage, not the whole 6 s
    assert stream.stats()["blocks"] == added == math.ceil(frames / 2)
    answer = stream.ask(Q, max_new_tokens=2)
    assert answer.blocks_seen == added and answer.first_logits.isfinite().all()


# ---------------------------------------------------------------- stream options


BAD_OPTIONS = [
    ({"fps": 0}, "fps"),
    ({"fps": -1.0}, "fps"),
    ({"fps": float("nan")}, "fps"),
    ({"fps": float("inf")}, "fps"),
    ({"fps": True}, "fps"),
    ({"topk": True}, "topk"),
    ({"tokens_per_frame": 3}, "tokens_per_frame"),
    ({"tokens_per_frame": 0}, "tokens_per_frame"),
    ({"topk": 0}, "topk"),
    ({"policy": "memstream-v9"}, "policy"),
    ({"positions": "middle"}, "positions"),
    ({"no_such_option": 1}, "option"),
]


@pytest.mark.parametrize(("kw", "words"), BAD_OPTIONS, ids=[str(kw) for kw, _ in BAD_OPTIONS])
def test_bad_stream_options(engine, kw, words):
    with pytest.raises(ConfigError) as err:
        new_stream(engine, **kw)
    assert words in one_sentence(err)


# ---------------------------------------------------------------- questions


def test_question_before_any_frame(engine):
    stream = new_stream(engine)
    with pytest.raises(EmptyMemoryError) as err:
        stream.ask(Q)
    assert "No video" in one_sentence(err)
    with pytest.raises(EmptyMemoryError):
        stream.ask(Q, stream=True)
    stream.add_frames(frames_of(1))  # one frame: still no block
    with pytest.raises(EmptyMemoryError) as err:
        stream.ask(Q)
    assert "one frame" in one_sentence(err)
    assert stream.flush() == 1
    assert stream.ask(Q, max_new_tokens=1).blocks_seen == 1


@pytest.mark.parametrize(
    ("question", "max_new_tokens", "words"),
    [
        ("", 4, "empty"),
        ("   \n\t ", 4, "empty"),
        (42, 4, "text"),
        (None, 4, "text"),
        (b"What is moving?", 4, "text"),
        ("x" * 5000, 4, "too long"),
        (Q, 0, "max_new_tokens"),
        (Q, -3, "max_new_tokens"),
        (Q, 2.0, "max_new_tokens"),
        (Q, True, "max_new_tokens"),
    ],
    ids=["empty", "whitespace", "int", "none", "bytes", "too-long", "mnt-0", "mnt-negative", "mnt-float", "mnt-bool"],
)
def test_bad_question(shared_sample, question, max_new_tokens, words):
    with pytest.raises(InputError) as err:
        shared_sample.ask(question, max_new_tokens=max_new_tokens)
    assert words in one_sentence(err)
    with pytest.raises(InputError):  # checked at call time, not on first iteration
        shared_sample.ask(question, max_new_tokens=max_new_tokens, stream=True)


# ---------------------------------------------------------------- frames and timestamps


BAD_FRAMES = {
    "float32": (lambda: frames_of(2).astype(np.float32), "uint8"),
    "float64-unit": (lambda: np.random.default_rng(0).random((2, 56, 56, 3)), "uint8"),
    "1d-array": (lambda: np.zeros(56, np.uint8), "shape"),
    "5d-array": (lambda: frames_of(2)[None], "shape"),
    "empty-list": (lambda: [], "No frames"),
    "empty-array": (lambda: np.zeros((0, 56, 56, 3), np.uint8), "shape"),
    "different-sizes": (lambda: [frames_of(1)[0], frames_of(1, 28, 56)[0]], "same size"),
    "two-channels": (lambda: np.zeros((2, 56, 56, 2), np.uint8), "shape"),
    "zero-width": (lambda: np.zeros((2, 56, 0, 3), np.uint8), "1x1"),
    "string": (lambda: "frames.mp4", "uint8 array"),
    "none": (lambda: None, "uint8 array"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "after-video"])
def test_bad_frames(engine, case, fresh):
    make, words = BAD_FRAMES[case]
    stream = new_stream(engine)
    if not fresh:
        stream.add_frames(frames_of(2, seed=1))
    with pytest.raises(InputError) as err:
        stream.add_frames(make())
    assert words in one_sentence(err)


BAD_TIMES = {
    "decreasing": ([5.0, 4.0], "increase"),
    "repeated": ([5.0, 5.0], "increase"),
    "nan": ([5.0, float("nan")], "finite"),
    "inf": ([5.0, float("inf")], "finite"),
    "negative": ([-2.0, -1.0], "non-negative"),
    "too-few": ([5.0], "timestamps"),
    "too-many": ([5.0, 6.0, 7.0], "timestamps"),
    "not-numbers": (["a", "b"], "numbers"),
}


@pytest.mark.parametrize("case", list(BAD_TIMES))
def test_bad_timestamps(engine, case):
    times, words = BAD_TIMES[case]
    stream = new_stream(engine)
    with pytest.raises(InputError) as err:
        stream.add_frames(frames_of(2), times)
    assert words in one_sentence(err)
    assert stream.stats()["frames"] == 0


def test_timestamps_must_continue_after_earlier_frames(shared_sample):
    with pytest.raises(InputError) as err:  # the sample video ends at 7 s
        shared_sample.add_frames(frames_of(2), [3.0, 4.0])
    assert "increase" in one_sentence(err)


def test_a_rejected_first_call_does_not_fix_the_frame_size(engine):
    """The first accepted frame decides the frame size, not a rejected one."""
    stream = new_stream(engine)
    with pytest.raises(InputError):
        stream.add_frames(frames_of(2, 560, 56).astype(np.float32))  # tall and float
    with pytest.raises(InputError):
        stream.add_frames(np.zeros((2, 560, 56, 2), np.uint8))  # tall, two channels
    assert stream.frame_size is None
    stream.add_frames(frames_of(2, 56, 112))
    assert stream.frame_size == video.frame_size_for_budget(56, 112, TPF)


# ---------------------------------------------------------------- loading


def test_model_directory_that_does_not_exist(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        memstream.load(model=str(tmp_path / "no-such-model"), device="cpu")
    assert "--model tiny" in one_sentence(err)


def test_model_directory_without_a_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        memstream.load(model=str(tmp_path), device="cpu")
    assert "--model tiny" in one_sentence(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(tiny_cache):
    with pytest.raises(ModelLoadError) as err:
        memstream.load(model="tiny", device="cuda", cache_dir=str(tiny_cache))
    assert "GPU" in one_sentence(err)


def test_unknown_device_and_expert(tiny_cache):
    with pytest.raises(ModelLoadError) as err:
        memstream.load(model="tiny", device="tpu", cache_dir=str(tiny_cache))
    one_sentence(err)
    with pytest.raises(ConfigError) as err:
        memstream.load(model="tiny", expert="oracle", device="cpu", cache_dir=str(tiny_cache))
    one_sentence(err)


# ---------------------------------------------------------------- recovery


def test_the_stream_survives_every_bad_input(engine, video_factory, sample_stream):
    """After each rejected call nothing ingested is lost and the answer is bit-identical."""
    stream = sample_stream
    keys = ("frames", "frames_pending", "blocks", "seconds", "tokens_stored", "window_tokens",
            "bytes_cpu", "frame_size")
    before = {k: stream.stats()[k] for k in keys}
    reference = stream.ask(Q, max_new_tokens=3)
    bad_calls = [
        lambda: stream.add_frames(frames_of(2).astype(np.float32)),
        lambda: stream.add_frames(np.zeros(56, np.uint8)),
        lambda: stream.add_frames([]),
        lambda: stream.add_frames([frames_of(1)[0], frames_of(1, 28, 56)[0]]),
        lambda: stream.add_frames(frames_of(2), [20.0, 19.0]),
        lambda: stream.add_frames(frames_of(2), [20.0, float("nan")]),
        lambda: stream.add_frames(frames_of(2), [20.0]),
        lambda: stream.add_frames(frames_of(2), [1.0, 2.0]),  # before the end of the video
        lambda: stream.ask(""),
        lambda: stream.ask(None),
        lambda: stream.ask(Q, max_new_tokens=0),
        lambda: stream.add_video(str(video_factory.text())),
        lambda: stream.add_video(str(video_factory.empty())),
        lambda: stream.add_video(str(video_factory.audio_only())),
        lambda: stream.add_video(str(video_factory.undecodable())),
        lambda: stream.add_video(str(video_factory.dir / "missing.mp4")),
    ]
    for call in bad_calls:
        with pytest.raises(MemStreamError) as err:
            call()
        one_sentence(err)
        assert {k: stream.stats()[k] for k in keys} == before
    again = stream.ask(Q, max_new_tokens=3)
    assert torch.equal(again.first_logits, reference.first_logits)
    assert again.token_ids == reference.token_ids and again.blocks_seen == reference.blocks_seen
    # and it still takes new frames, continuing in time after the video
    assert stream.add_frames(frames_of(2, 240, 320, seed=3)) == 1
    assert stream.stats()["blocks"] == before["blocks"] + 1
    assert stream.ask(Q, max_new_tokens=1).blocks_seen == before["blocks"] + 1


# ---------------------------------------------------------------- good but odd input


GOOD_ODD = {
    # name: (make, fps, blocks, frame shape (h, w) before resizing)
    "one-frame": (lambda f: f.one_frame(), 1.0, 1, (64, 96)),
    "portrait-1080x1920": (lambda f: f.portrait(), 1.0, 1, (1920, 1080)),
    "odd-size-101x37": (lambda f: f.odd_size(), 1.0, 1, (37, 101)),
    "still-png": (lambda f: f.png(), 1.0, 1, (48, 64)),
    "fps-above-native": (lambda f: SAMPLE, 30.0, 40, (240, 320)),  # 80 native frames at 10 fps
}


@pytest.mark.parametrize("case", list(GOOD_ODD))
def test_good_but_odd_video(engine, video_factory, case):
    make, fps, blocks, (h, w) = GOOD_ODD[case]
    stream = new_stream(engine, fps=fps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about either
        assert stream.add_video(str(make(video_factory))) == blocks
    st = stream.stats()
    assert st["blocks"] == blocks and st["frames_pending"] == 0
    assert st["frame_size"] == video.frame_size_for_budget(h, w, TPF)
    answer = stream.ask(Q, max_new_tokens=2)
    assert answer.blocks_seen == blocks and answer.first_logits.isfinite().all()
    assert len(answer.trace.block_times) == blocks
