"""Shared pytest setup. Each section belongs to one area; add new fixtures in their own section."""

from __future__ import annotations

from pathlib import Path

import pytest

# ---------------------------------------------------------------------------
# Video input (memstream/video.py): synthetic video files written with PyAV
# ---------------------------------------------------------------------------


@pytest.fixture
def video_factory(tmp_path: Path):
    """The helpers of tests/videos.py, each writing into this test's tmp dir by file name.

    ``video_factory.truncated("cut.mkv")`` writes tmp_path / "cut.mkv" and returns its path.
    """
    import videos

    class Factory:
        dir = tmp_path
        write = staticmethod(lambda name, frames, **kw: videos.write_video(tmp_path / name, frames, **kw))
        empty = staticmethod(lambda name="empty.mp4": videos.make_empty_file(tmp_path / name))
        text = staticmethod(lambda name="text.mp4": videos.make_text_file(tmp_path / name))
        png = staticmethod(lambda name="still.png": videos.make_png_file(tmp_path / name))
        truncated = staticmethod(
            lambda name="cut.mkv", **kw: videos.make_truncated_video(tmp_path / name, **kw)
        )
        corrupt = staticmethod(
            lambda name="noise.mkv", **kw: videos.make_corrupt_video(tmp_path / name, **kw)
        )
        undecodable = staticmethod(lambda name="halfkey.mp4": videos.make_undecodable_video(tmp_path / name))
        rotated = staticmethod(lambda name="rotated.mp4": videos.make_rotated_video(tmp_path / name))
        audio_only = staticmethod(lambda name="tone.m4a": videos.make_audio_only(tmp_path / name))
        one_frame = staticmethod(lambda name="one.mp4": videos.make_one_frame_video(tmp_path / name))
        portrait = staticmethod(
            lambda name="portrait.mp4", **kw: videos.make_portrait_video(tmp_path / name, **kw)
        )
        odd_size = staticmethod(lambda name="odd.avi": videos.make_odd_size_video(tmp_path / name))

    return Factory()


# ---------------------------------------------------------------------------
# Engine: one tiny random-weight model for the whole session (built offline in ~1 s)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """Where the tiny checkpoint is built for this test session (isolated from ~/.cache)."""
    return tmp_path_factory.mktemp("memstream-cache")


@pytest.fixture(scope="session")
def engine(tiny_cache):
    import memstream

    return memstream.load(model="tiny", device="cpu", cache_dir=str(tiny_cache))


@pytest.fixture(scope="session")
def qwen3_engine(tiny_cache):
    """The Qwen3-VL family's tiny preset (tests/test_qwen3_vl.py, and tests parametrized over families)."""
    import memstream

    return memstream.load(model="tiny-qwen3-vl", device="cpu", cache_dir=str(tiny_cache))


@pytest.fixture
def failing_layer(engine, monkeypatch):
    """A context manager: inside it, decoder layer 1 raises (a failure in the middle of a forward)."""
    import contextlib

    @contextlib.contextmanager
    def broken():
        layer = engine.backbone.lm.layers[1]

        def fail(*args, **kwargs):
            raise RuntimeError("simulated failure in layer 1")

        with monkeypatch.context() as mp:
            mp.setattr(layer, "forward", fail)
            yield

    return broken
