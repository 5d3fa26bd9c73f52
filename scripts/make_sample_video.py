"""Write the sample clips: assets/sample.mp4 (tests) and, with --demo, assets/demo_sample.mp4 (the demo).

assets/sample.mp4: an 8-second, 10 fps, 320x240 clip of labelled moving shapes, the tests' fixture:
a red circle "ball" bounces left and right, a blue square "box" moves up and down, a green triangle
"tri" appears only in the second half (t >= 4 s), and the top-left corner shows the current second.

assets/demo_sample.mp4 (--demo): three minutes at 10 fps, 320x240, in which the ball bounces throughout
and one scripted event at a time happens at a known moment (`EVENTS`, listed in docs/demo.md), so
each question ("When did the yellow star appear?") has a right moment to retrieve. Long enough for
real-time pacing to visibly stream and for hermes' budget to compress; a few hundred KB.

Both are deterministic (the bundled font, one encoder thread). Needs only PyAV and Pillow.

    python scripts/make_sample_video.py [--out assets/sample.mp4]
    python scripts/make_sample_video.py --demo [--out assets/demo_sample.mp4]
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
DEMO_SECONDS = 180
BACKGROUND = (235, 235, 225)
NIGHT = (25, 30, 70)

# The demo clip's scripted events: (start s, end s, what happens, a question whose right moment it is).
EVENTS = [
    (15, 35, "a blue box slides from left to right", "When did the blue box cross the screen?"),
    (45, 60, "a green triangle appears at the top right", "When was the green triangle visible?"),
    (70, 85, "the background turns dark blue (night)", "When did it get dark?"),
    (95, 110, "a yellow star appears in the centre", "When did the yellow star appear?"),
    (120, 135, "a red STOP sign appears", "When was the stop sign shown?"),
    (145, 160, "a purple car drives from right to left", "When did the car drive by?"),
    (165, 178, "the ball turns orange", "When did the ball change colour?"),
]


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


def active(t: float, start: float, end: float) -> float | None:
    """How far (0..1) event [start, end) has run at time t, or None outside it."""
    return (t - start) / (end - start) if start <= t < end else None


def draw_demo_frame(i: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> np.ndarray:
    """Frame i of the demo clip (t = i / FPS seconds): the bouncing ball plus the `EVENTS` running at t."""
    t = i / FPS
    night = active(t, 70, 85) is not None
    image = Image.new("RGB", (WIDTH, HEIGHT), NIGHT if night else BACKGROUND)
    draw = ImageDraw.Draw(image)
    ink = (240, 240, 240) if night else (40, 40, 40)
    x = 40 + (WIDTH - 80) * (1 - abs((t / 2.5) % 2 - 1))
    ball = (240, 140, 20) if active(t, 165, 178) is not None else (220, 30, 30)
    draw.ellipse((x - 14, 196, x + 14, 224), fill=ball, outline=(60, 0, 0), width=2)
    if (p := active(t, 15, 35)) is not None:  # blue box, left to right
        bx = -30 + p * (WIDTH + 60)
        draw.rectangle((bx - 22, 100, bx + 22, 144), fill=(40, 70, 210), outline=(10, 20, 90), width=2)
        draw.text((bx - 12, 148), "box", fill=ink, font=font)
    if active(t, 45, 60) is not None:  # green triangle, top right
        draw.polygon([(250, 40), (218, 100), (282, 100)], fill=(30, 170, 60), outline=(0, 80, 20))
    if active(t, 95, 110) is not None:  # yellow star, centre
        cx, cy, r1, r2 = WIDTH / 2, 110, 42, 17
        pts = [(cx + (r1 if k % 2 == 0 else r2) * math.sin(k * math.pi / 5),
                cy - (r1 if k % 2 == 0 else r2) * math.cos(k * math.pi / 5)) for k in range(10)]
        draw.polygon(pts, fill=(250, 210, 20), outline=(150, 110, 0))
    if active(t, 120, 135) is not None:  # STOP sign
        cx, cy, r = 100, 100, 38
        pts = [(cx + r * math.cos(math.pi / 8 + k * math.pi / 4), cy + r * math.sin(math.pi / 8 + k * math.pi / 4))
               for k in range(8)]
        draw.polygon(pts, fill=(200, 20, 30), outline=(255, 255, 255))
        draw.text((cx - 22, cy - 9), "STOP", fill=(255, 255, 255), font=font)
        draw.rectangle((cx - 3, cy + r, cx + 3, cy + r + 50), fill=(120, 120, 120))
    if (p := active(t, 145, 160)) is not None:  # purple car, right to left
        cx = WIDTH + 50 - p * (WIDTH + 100)
        draw.rectangle((cx - 40, 130, cx + 40, 160), fill=(130, 40, 170), outline=(50, 0, 70), width=2)
        draw.rectangle((cx - 22, 112, cx + 18, 130), fill=(160, 90, 200))
        for wx in (cx - 24, cx + 24):
            draw.ellipse((wx - 10, 152, wx + 10, 172), fill=(20, 20, 20))
    draw.rectangle((4, 4, 92, 26), fill=(255, 255, 255))
    draw.text((8, 7), f"t={int(t) // 60}:{int(t) % 60:02d}", fill=(0, 0, 0), font=font)
    return np.asarray(image)


def pick_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_sample(out: Path, demo: bool = False) -> Path:
    """Write the tests' clip, or with `demo` the demo's three-minute clip, to `out`."""
    draw, seconds = (draw_demo_frame, DEMO_SECONDS) if demo else (draw_frame, SECONDS)
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
                "crf": "30" if demo else "23",
                "preset": "medium",
                "threads": "1",
            }  # 1 thread: same bytes every run
        else:
            stream.bit_rate = 800_000
        for i in range(FPS * seconds):
            frame = av.VideoFrame.from_ndarray(draw(i, font), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    assets = Path(__file__).resolve().parent.parent / "assets"
    parser.add_argument("--demo", action="store_true", help="the demo's three-minute clip of scripted events")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the mp4 (default: assets/sample.mp4; with --demo assets/demo_sample.mp4)")
    args = parser.parse_args()
    out = write_sample(args.out or assets / ("demo_sample.mp4" if args.demo else "sample.mp4"), args.demo)
    seconds = DEMO_SECONDS if args.demo else SECONDS
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB, {seconds} s at {FPS} fps, {WIDTH}x{HEIGHT})")


if __name__ == "__main__":
    main()
