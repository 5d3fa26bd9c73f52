"""Video input: token-budget frame sizes for Qwen2.5-VL, resizing, probing and lazy frame sampling.

Frames are numpy uint8 arrays [H, W, 3] (RGB) and times are seconds from the first frame.
Decoding uses decord when it can open the file and PyAV otherwise; PyAV also does every
validity check first, because decord can crash or hang on files that are not videos.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from memstream.errors import ConfigError, InputError, VideoError

TOKEN_PX = 28  # one LLM token of Qwen2.5-VL = 2x2 merged 14-px patches = 28x28 pixels
_EPS = 1e-3  # tolerance, in sample periods, that absorbs float32 timestamps from decord


def grid_for_budget(height: int, width: int, tokens_per_frame: int) -> tuple[int, int]:
    """LLM-token grid (gh, gw) of one 2-frame block for a height x width (pixels) video.

    A block of 2 frames becomes gh*gw tokens, so the budget is B = 2*tokens_per_frame and
    gh*gw <= B. Among all gh in 1..B (with gw the floor or ceil of gh*width/height, capped
    at B//gh) the rule minimises ``2*|log(gh/gw) - log(height/width)| + log(B/(gh*gw))``:
    aspect distortion counts twice as much as unused budget, both as relative (log) errors.
    Ties go to the smaller aspect error, then to more tokens.
    """
    if not all(_is_int(v) for v in (height, width, tokens_per_frame)):
        raise ConfigError(
            f"Height, width and tokens_per_frame must be integers, got {height!r}x{width!r}, "
            f"{tokens_per_frame!r}."
        )
    if not 4 <= tokens_per_frame <= 16384:
        raise ConfigError(f"tokens_per_frame must be between 4 and 16384, got {tokens_per_frame}.")
    if height < 1 or width < 1:
        raise ConfigError(f"Frame height and width must be at least 1 pixel, got {height}x{width}.")
    return _best_grid(int(height), int(width), 2 * int(tokens_per_frame))


@lru_cache(maxsize=256)  # a video asks for the same grid for every block
def _best_grid(height: int, width: int, budget: int) -> tuple[int, int]:
    target = math.log(height / width)
    best: tuple[float, float, int, int, int] = (math.inf, math.inf, 0, 1, 1)
    for gh in range(1, budget + 1):
        ideal = gh * width / height
        for gw in {min(max(1, math.floor(ideal)), budget // gh), min(max(1, math.ceil(ideal)), budget // gh)}:
            aspect_err = abs(math.log(gh / gw) - target)
            cost = 2 * aspect_err + math.log(budget / (gh * gw))
            best = min(best, (round(cost, 9), round(aspect_err, 9), -gh * gw, gh, gw))
    return best[3], best[4]


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def frame_size_for_budget(height: int, width: int, tokens_per_frame: int,
                          token_px: int = TOKEN_PX) -> tuple[int, int]:
    """Frame size (H, W) in pixels, multiples of `token_px` (the side one LLM token covers,
    `BackboneSpec.pixels_per_token`: 28 for Qwen2.5-VL, 32 for Qwen3-VL), for :func:`grid_for_budget`."""
    gh, gw = grid_for_budget(height, width, tokens_per_frame)
    return token_px * gh, token_px * gw


def to_rgb_frames(frames: Any) -> np.ndarray:
    """Normalise frames to uint8 RGB [T, H, W, 3], or raise InputError with one sentence.

    Accepted: numpy arrays or torch tensors [T, H, W, 3], one frame [H, W, 3] or [H, W] (gives
    T=1), grey [T, H, W] or [T, H, W, 1], RGBA [..., 4] (alpha is dropped), integer values within
    0..255, and a list of equally sized frames. A 3-D array whose last axis is 1, 3 or 4 is read
    as one frame, otherwise as grey frames.
    """
    if hasattr(frames, "detach"):  # a torch tensor
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, list | tuple):
        if not frames:
            raise InputError("No frames were given.")
        try:
            frames = np.stack([np.asarray(f) for f in frames])
        except ValueError as exc:
            raise InputError("All frames in one call must have the same size.") from exc
    if not isinstance(frames, np.ndarray):
        raise InputError(f"Frames must be a uint8 array [T, H, W, 3], got {type(frames).__name__}.")
    arr = frames
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "iu":
            raise InputError(f"Frames must be uint8 RGB values in 0..255, got dtype {arr.dtype}.")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise InputError("Integer frames must hold values in 0..255 to be read as uint8 pixels.")
        arr = arr.astype(np.uint8)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4)):
        arr = arr[None]
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or arr.shape[0] == 0:
        raise InputError(f"Frames must have shape [T, H, W, 3] (or one frame [H, W, 3]), got {arr.shape}.")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise InputError(f"Frames must be at least 1x1 pixels, got {arr.shape[1]}x{arr.shape[2]}.")
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr[..., :3]


def resize_frames(frames: Any, size: tuple[int, int]) -> np.ndarray:
    """Resize frames (anything `to_rgb_frames` accepts) to uint8 [T, H, W, 3], H x W = `size`.

    Antialiased bicubic (PIL): it works on uint8 directly (no float copy of the clip) and is
    deterministic.
    """
    from PIL import Image

    if not isinstance(size, tuple | list) or len(size) != 2 or not all(_is_int(v) and v >= 1 for v in size):
        raise ConfigError(f"Resize target must be (height, width) with positive integers, got {size!r}.")
    arr = to_rgb_frames(frames)
    height, width = int(size[0]), int(size[1])
    out = np.empty((arr.shape[0], height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(arr):
        if frame.shape[:2] == (height, width):
            out[i] = frame
        else:
            image = Image.fromarray(np.ascontiguousarray(frame))
            out[i] = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
    return out


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learned: native fps, frame count estimate, seconds, size, backend."""

    path: str
    fps: float
    n_frames: int
    duration_s: float
    height: int
    width: int
    backend: str  # "decord" or "pyav": the one sample_frames will decode with


@dataclass
class _Opened:
    info: VideoInfo
    reader: Any  # decord.VideoReader, or None when PyAV decodes
    starts: np.ndarray  # float64 [N] start time (s) of each native frame (decord only, else empty)
    end_s: float  # when the last native frame stops being shown (decord only)
    declared_s: float | None  # duration claimed by the container header, to detect truncation
    rotation: int  # quarter turns counter-clockwise that PyAV frames need (decord applies them)


def _open(path: str | os.PathLike) -> _Opened:
    import av

    p = Path(path)
    if not p.exists():
        raise VideoError(f"Video file {p} does not exist.")
    if p.is_dir():
        raise VideoError(f"{p} is a directory, not a video file.")
    if p.stat().st_size == 0:
        raise VideoError(f"Video file {p} is empty (0 bytes).")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, OSError) as err:
        raise VideoError(f"{p} is not a readable video file ({type(err).__name__}).") from err
    with container:
        if not container.streams.video:
            raise VideoError(f"{p} has no video stream.")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0  # 25 is ffmpeg's own default
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        else:
            declared = container.duration / 1e6 if container.duration else None
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError:
            first = None
        if first is None:
            raise VideoError(f"{p} has no decodable video frames.")
        rotation = round((first.rotation or 0) / 90) % 4
        n_frames = stream.frames or (round(declared * fps) if declared else 0)
        if not n_frames:  # no frame count in the header (still images, raw streams): count packets
            n_frames = 1 + sum(1 for pkt in container.demux(stream) if pkt.size)
    height, width = (first.width, first.height) if rotation % 2 else (first.height, first.width)
    reader = _decord_reader(p)
    if reader is None:
        duration = declared if declared else n_frames / fps
        info = VideoInfo(str(p), fps, int(n_frames), round(duration, 6), height, width, "pyav")
        return _Opened(info, None, np.zeros(0), 0.0, declared, rotation)
    fps = float(reader.get_avg_fps()) or fps
    stamps = np.asarray(reader.get_frame_timestamp(np.arange(len(reader))), dtype=np.float64)
    stamps -= stamps[0, 0]  # some containers start above 0; times count from the first frame
    starts, end = stamps[:, 0], max(float(stamps[-1, 1]), stamps[-1, 0] + 1 / fps)
    grid = np.arange(len(starts)) / fps
    if np.allclose(starts, grid, rtol=0, atol=1e-3):  # constant rate: exact times, not decord's float32
        starts, end = grid, len(starts) / fps
    info = VideoInfo(str(p), fps, len(reader), round(end, 6), height, width, "decord")
    return _Opened(info, reader, starts, end, declared, rotation)


def _decord_reader(path: Path) -> Any:
    """A decord.VideoReader for `path`, or None when decord is missing or cannot read the file."""
    try:
        import decord
    except ImportError:
        return None
    decord.logging.set_level(decord.logging.QUIET)  # it prints ffmpeg chatter to stderr otherwise
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        return reader if len(reader) > 0 else None
    except (RuntimeError, ValueError, decord.DECORDError):
        return None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Check that `path` is a decodable video and describe it; raises VideoError if not.

    A still image (PNG, JPEG...) that ffmpeg decodes is accepted as a 1-frame video. To sample
    the file afterwards, `open_video` gives the same description without opening it twice.
    """
    return _open(path).info


class OpenedVideo:
    """A video file checked and opened once: its `info` (what `probe_video` reports) and lazy
    sampling from that same opening, so that probing then sampling costs one open, not two."""

    def __init__(self, opened: _Opened):
        self._opened = opened
        self.info: VideoInfo = opened.info

    def frames(self, fps: float, chunk: int = 32) -> Iterator[tuple[np.ndarray, float]]:
        """Yield (frame uint8 [H, W, 3] at native size, time in s) as `sample_frames` does.

        Each call starts again at the beginning of the file. With decord the calls share one
        reader, so consume them one at a time (one thread).
        """
        _check_sampling(fps, None, chunk)
        opened = self._opened
        return _iter_decord(opened, float(fps), int(chunk)) if opened.reader else _iter_pyav(opened, float(fps))


def open_video(path: str | os.PathLike) -> OpenedVideo:
    """Check that `path` is a decodable video (VideoError with one sentence if not) and keep it
    open for sampling: `open_video(p).info` is `probe_video(p)`, `.frames(fps)` is `sample_frames`."""
    return OpenedVideo(_open(path))


def _check_sampling(fps: float, max_frames: int | None, chunk: int) -> None:
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise ConfigError(f"Sampling fps must be a finite number above 0, got {fps!r}.")
    if max_frames is not None and (not _is_int(max_frames) or max_frames < 1):
        raise ConfigError(f"max_frames must be None or an integer of at least 1, got {max_frames!r}.")
    if not _is_int(chunk) or chunk < 1:
        raise ConfigError(f"chunk must be an integer of at least 1, got {chunk!r}.")


def sample_frames(
    path: str | os.PathLike, fps: float, max_frames: int | None = None, chunk: int = 32
) -> Iterator[tuple[np.ndarray, float]]:
    """Yield (frame uint8 [H, W, 3] at native size, time in s) for sample times 0, 1/fps, 2/fps...

    Each sample time takes the native frame shown at that time (the last one starting at or
    before it); a native frame is never yielded twice, so fps above the native rate gives
    every native frame once. The time yielded is the frame's own timestamp. The file is
    checked when this is called; decoding is lazy, `chunk` frames at a time. If the video
    turns out truncated or damaged, the frames before the damage are yielded and a warning
    is issued.
    """
    _check_sampling(fps, max_frames, chunk)  # before opening: a bad argument costs no decoding
    frames = open_video(path).frames(fps, chunk)
    return frames if max_frames is None else islice(frames, int(max_frames))


def _takes_sample(start: float, end: float, fps: float) -> bool:
    """Whether a frame shown during [start, end) seconds holds a sample time k/fps."""
    return math.ceil(start * fps - _EPS) < end * fps - _EPS


def _warn_if_cut(opened: _Opened, covered_s: float, damaged: bool = False) -> None:
    # a short read is only "cut" beyond 1 s or 10%: audio tracks often outlast the video a little
    declared = opened.declared_s
    if damaged or (declared is not None and declared - covered_s > max(1.0, 0.1 * declared)):
        warnings.warn(
            f"{opened.info.path} is damaged or truncated after {covered_s:.1f} s, "
            "so only the frames before that point were used.",
            stacklevel=3,
        )


def _iter_decord(opened: _Opened, fps: float, chunk: int) -> Iterator[tuple[np.ndarray, float]]:
    import decord

    reader, starts = opened.reader, opened.starts
    ends = np.append(starts[1:], opened.end_s)
    chosen = [i for i in range(len(starts)) if _takes_sample(starts[i], ends[i], fps)]
    for c0 in range(0, len(chosen), chunk):
        indices = chosen[c0 : c0 + chunk]
        try:
            batch = reader.get_batch(indices).asnumpy()
        except (RuntimeError, decord.DECORDError):
            # A damaged packet. decord's state after a failed batch is unreliable (retrying frame by
            # frame loses good frames), so PyAV takes over from this chunk and reports the damage.
            yield from _iter_pyav(opened, fps, from_s=float(starts[indices[0]]))
            return
        for i, frame in zip(indices, batch, strict=True):
            yield frame, round(float(starts[i]), 6)
    _warn_if_cut(opened, opened.end_s)


def _iter_pyav(opened: _Opened, fps: float, from_s: float = 0.0) -> Iterator[tuple[np.ndarray, float]]:
    """Sequential PyAV decoding; frames before `from_s` seconds are decoded but not yielded.

    Frames the decoder flags as corrupt (rebuilt from a damaged packet) are skipped: at the
    end of the file they mean it was cut; in the middle they are reported in one warning.
    """
    import av

    def pixels(frame: av.VideoFrame) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24")
        return np.ascontiguousarray(np.rot90(rgb, opened.rotation)) if opened.rotation else rgb

    prev: av.VideoFrame | None = None
    prev_t = t0 = 0.0
    skip_before = from_s - 0.5 / opened.info.fps  # half a frame: decord and PyAV times differ slightly
    failed, pending_corrupt, skipped = False, 0, 0
    with av.open(opened.info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for n, frame in enumerate(container.decode(stream)):
                if frame.is_corrupt:
                    pending_corrupt += 1
                    continue
                skipped, pending_corrupt = skipped + pending_corrupt, 0
                t = frame.time if frame.time is not None else n / opened.info.fps
                t0 = t if prev is None else t0
                t -= t0
                if prev is not None and prev_t >= skip_before and _takes_sample(prev_t, t, fps):
                    yield pixels(prev), round(prev_t, 6)
                prev, prev_t = frame, t
        except av.error.FFmpegError:
            failed = True
        if prev is None:
            raise VideoError(f"{opened.info.path} has no decodable video frames.")
        end = prev_t + 1 / opened.info.fps
        if prev_t >= skip_before and _takes_sample(prev_t, end, fps):
            yield pixels(prev), round(prev_t, 6)
    if skipped:
        warnings.warn(f"{opened.info.path} has {skipped} damaged frames that were skipped.", stacklevel=2)
    _warn_if_cut(opened, end, failed or pending_corrupt > 0)
