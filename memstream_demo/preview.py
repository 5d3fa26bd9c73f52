"""What the player shows for an uploaded file: the file itself when browsers play it, else a small
playable copy (H.264 in MP4, at most 360 px high and 15 fps), so that an .avi is seen, not answered by
the browser's "Video not playable". The memory ingests the original either way."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av

from memstream import video

# what Chromium, Firefox and Safari play: (container formats, video codecs)
PLAYABLE_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2", "webm", "matroska,webm", "ogg"}
PLAYABLE_CODECS = {"h264", "vp8", "vp9", "av1", "theora"}
MAX_HEIGHT, MAX_FPS = 360, 15.0


def browser_plays(path: str) -> bool:
    """Whether a browser's <video> plays `path` (its container and its first video stream's codec)."""
    try:
        with av.open(path) as container:
            streams = container.streams.video
            if not streams:
                return False
            return container.format.name in PLAYABLE_FORMATS and streams[0].codec_context.name in PLAYABLE_CODECS
    except (av.FFmpegError, OSError, ValueError):
        return False


def playable(path: str, out_dir: Path) -> str | None:
    """`path` if browsers play it, else the path of a playable copy written in `out_dir`; None when no
    copy can be made (the reason goes to the server log)."""
    if browser_plays(path):
        return path
    out = Path(out_dir) / f"{Path(path).stem}-preview.mp4"
    try:
        opened = video.open_video(path)
        info = opened.info
        fps = min(MAX_FPS, info.fps or MAX_FPS)
        scale = min(1.0, MAX_HEIGHT / max(1, info.height))
        h, w = max(2, int(info.height * scale) // 2 * 2), max(2, int(info.width * scale) // 2 * 2)
        with av.open(str(out), mode="w", options={"movflags": "faststart"}) as container:
            rate = Fraction(fps).limit_denominator(1000)
            stream = container.add_stream("libx264", rate=rate)
            stream.time_base = 1 / rate  # one tick per frame: pts = frame index
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": "28", "preset": "veryfast"}
            for i, (frame, _t) in enumerate(opened.frames(fps)):
                small = video.resize_frames(frame, (h, w))[0]
                vf = av.VideoFrame.from_ndarray(small, format="rgb24")
                vf.pts = i
                container.mux(stream.encode(vf))
            container.mux(stream.encode())
    except Exception as exc:  # noqa: BLE001 - no preview is not an error of the upload
        print(f"warning: no playable copy of {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    return str(out)
