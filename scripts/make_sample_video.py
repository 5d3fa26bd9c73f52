"""Write assets/sample.mp4: an 8-second, 10 fps, 320x240 clip of labelled moving shapes.

The clip is the demo's default video and a fixture for tests, so it is deterministic and
its content is easy to ask about: a red circle "ball" bounces left and right, a blue square
"box" moves up and down, a green triangle "tri" appears only in the second half (t >= 4 s),
and the top-left corner shows the current second ("t=3s"). Needs only PyAV and Pillow.

    python scripts/make_sample_video.py [--out assets/sample.mp4]
"""

from __future__ import annotations

import argparse
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, FPS, SECONDS = 320, 240, 10, 8
BACKGROUND = (235, 235, 225)


def draw_frame(i: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> np.ndarray:
    """Frame i (t = i / FPS seconds) as uint8 [HEIGHT, WIDTH, 3]."""
    t = i / FPS
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    # ball: one left-right round trip every 5 s along the lower half
    x = 40 + (WIDTH - 80) * (1 - abs((t / 2.5) % 2 - 1))
    draw.ellipse((x - 18, 150, x + 18, 186), fill=(220, 30, 30), outline=(90, 0, 0), width=2)
    draw.text((x - 14, 190), "ball", fill=(120, 0, 0), font=font)
    # box: slow vertical sway on the left
    y = 90 + 40 * math.sin(2 * math.pi * t / 8)
    draw.rectangle((30, y - 18, 66, y + 18), fill=(40, 70, 210), outline=(10, 20, 90), width=2)
    draw.text((34, y + 22), "box", fill=(10, 20, 110), font=font)
    if t >= SECONDS / 2:  # the triangle exists only in the second half, for "when" questions
        cx = 250 - 10 * (t - SECONDS / 2)
        draw.polygon([(cx, 40), (cx - 24, 84), (cx + 24, 84)], fill=(30, 170, 60), outline=(0, 80, 20))
        draw.text((cx - 9, 88), "tri", fill=(0, 90, 30), font=font)
    draw.rectangle((4, 4, 62, 26), fill=(255, 255, 255))
    draw.text((8, 7), f"t={int(t)}s", fill=(0, 0, 0), font=font)
    return np.asarray(image)


def pick_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_sample(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=16)  # the bundled font: same pixels on every machine
    codec = pick_codec()
    # faststart puts the index first so that browsers (the Gradio demo) can play it while loading
    with av.open(str(out), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        if codec == "libx264":
            stream.options = {
                "crf": "23",
                "preset": "medium",
                "threads": "1",
            }  # 1 thread: same bytes every run
        else:
            stream.bit_rate = 800_000
        for i in range(FPS * SECONDS):
            frame = av.VideoFrame.from_ndarray(draw_frame(i, font), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent.parent / "assets" / "sample.mp4"
    parser.add_argument("--out", type=Path, default=default, help="where to write the mp4")
    out = write_sample(parser.parse_args().out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB, {SECONDS} s at {FPS} fps, {WIDTH}x{HEIGHT})")


if __name__ == "__main__":
    main()
