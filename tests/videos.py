"""Small synthetic video files for the tests, written with PyAV (no ffmpeg binary needed).

Every helper takes the path to write and returns it, so a test can say
``probe_video(make_truncated_video(tmp_path / "cut.mp4"))``. The frames are
deterministic so that tests can check which native frame was sampled.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: int = 10,
    codec: str = "mpeg4",
    options: dict[str, str] | None = None,
) -> Path:
    """Encode uint8 frames [T, H, W, 3] into a video file at `fps` frames per second.

    The frame size is cropped down to even numbers because yuv420p needs them; use
    ``codec="rawvideo"`` in an .avi/.mkv container (RGB) to keep odd sizes exactly.
    `options` are container options, e.g. ``{"movflags": "faststart"}``.
    """
    path = Path(path)
    frames = np.asarray(frames)
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3, frames.shape
    with av.open(str(path), mode="w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        if codec == "rawvideo":
            stream.pix_fmt = "bgr24"
            height, width = frames.shape[1:3]
        else:
            stream.pix_fmt = "yuv420p"
            height, width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
            frames = frames[:, :height, :width]
            stream.bit_rate = 2_000_000  # high enough that flat grey levels survive within +-1
        stream.width, stream.height = width, height
        stream.time_base = Fraction(1, fps)
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = i
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


def counter_frames(n: int, height: int = 64, width: int = 96) -> np.ndarray:
    """uint8 [n, height, width, 3] frames whose mean brightness encodes the frame index.

    Frame i is flat grey with level ``index_level(i)``, so after lossy coding the index can
    still be read back with :func:`frame_index`.
    """
    levels = np.array([index_level(i) for i in range(n)], dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def index_level(i: int) -> int:
    """Grey level for frame i: steps of 8 so that codec noise cannot blur two indices (i < 30)."""
    return 8 + 8 * (i % 30)


def frame_index(frame: np.ndarray) -> int:
    """Inverse of :func:`index_level` for a decoded frame (modulo 30)."""
    return round((float(frame.mean()) - 8) / 8)


def make_empty_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_text_file(path: str | os.PathLike) -> Path:
    """A text file, typically named .mp4, that no demuxer accepts."""
    path = Path(path)
    path.write_text("this is not a video, just some words in a file\n" * 20)
    return path


def make_png_file(path: str | os.PathLike, height: int = 48, width: int = 64) -> Path:
    from PIL import Image

    path = Path(path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def make_truncated_video(path: str | os.PathLike, n_frames: int = 60, keep: float = 0.6) -> Path:
    """A valid video cut at `keep` of its bytes, as if a download stopped half way.

    Matroska is used because its index is not needed to read the frames before the cut
    (an mp4 cut this way usually loses its moov atom and nothing at all can be read).
    """
    path = Path(path)
    write_video(path, counter_frames(n_frames), fps=10, codec="mpeg4")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_corrupt_video(path: str | os.PathLike, n_frames: int = 60, start: float = 0.5) -> Path:
    """A valid video whose bytes from `start` (a fraction of the file) on are random noise."""
    path = Path(path)
    write_video(path, counter_frames(n_frames), fps=10, codec="mpeg4")
    data = bytearray(path.read_bytes())
    cut = int(len(data) * start)
    rng = np.random.default_rng(1)
    data[cut:] = rng.integers(0, 256, len(data) - cut, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def make_undecodable_video(path: str | os.PathLike) -> Path:
    """An mp4 whose header is intact but whose first (and only key) frame is cut in half.

    Two frames of noise make the key frame most of the file, so no decoder can produce a
    picture. libx264 is used because the mpeg4 decoder conceals errors and shows half a frame.
    """
    path = Path(path)
    noise = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    write_video(path, noise, codec="libx264", options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_rotated_video(path: str | os.PathLike, n_frames: int = 3) -> Path:
    """Frames stored 40 high x 60 wide with a red top band, tagged to be shown turned 90 degrees
    clockwise (as phones store portrait clips): displayed, they are 60 high x 40 wide, red on the right."""
    path = Path(path)
    frame = np.zeros((40, 60, 3), np.uint8)
    frame[:10, :, 0] = 255
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 60, 40, "yuv420p"
        stream.set_display_rotation(-90)
        for i in range(n_frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = i
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


def make_audio_only(path: str | os.PathLike, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An AAC audio file with no video stream (use a .m4a name)."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        n = int(seconds * rate)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
        block = 1024
        for i in range(0, n, block):
            chunk = tone[i : i + block][None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_one_frame_video(path: str | os.PathLike) -> Path:
    return write_video(path, counter_frames(1), fps=10)


def make_portrait_video(path: str | os.PathLike, n_frames: int = 4) -> Path:
    """A 1080x1920 (width x height) portrait clip: frames are [1920, 1080, 3]."""
    return write_video(path, counter_frames(n_frames, height=1920, width=1080), fps=10)


def make_odd_size_video(path: str | os.PathLike, n_frames: int = 5) -> Path:
    """Frames 37 high and 101 wide, stored losslessly as rawvideo so the odd size survives."""
    return write_video(path, counter_frames(n_frames, height=37, width=101), fps=10, codec="rawvideo")
