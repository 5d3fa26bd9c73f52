"""`bench compression`: what MemStream's patch compression saves and what AKS + compression cost.

For each token budget (`--budgets`, tokens per frame) three streams ingest the same frames of a real
video (default assets/sample.mp4, sampled at `--fps` and looped until there are `--blocks` blocks):

    rekv         the baseline: every token stored, dense window
    aks          memstream-internal with compression off: AKS alone (its overhead vs rekv)
    aks+compress memstream-internal with compression on (threshold --compress-threshold, default 0.95)

The three are fed block by block, interleaved (block i of each stream, in an order rotating with i),
so a shared, noisy machine slows them alike; each overhead is the median over blocks of the paired
per-block time ratio (variant / rekv) minus 1. Reported per budget: tokens and bytes (keys and values,
all layers) stored per minute of video, the reduction of stored tokens vs rekv, median seconds per
block and the two overheads. The first `--warmup` blocks are ingested but not timed.

With the default window (15000 tokens) AKS usually makes ingestion *cheaper*: the sparse window holds
only the kept tokens of past blocks, so until it is full each new block attends to fewer tokens. The
selection's own cost shows with `--n-local` small enough that both windows are full from the start.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine, load
from ..policies import MemStreamConfig
from ..video import sample_frames
from .common import add_common_arguments, apply_threads, emit, machine, policy_options, timed

DEFAULT_VIDEO = str(Path(__file__).resolve().parents[2] / "assets" / "sample.mp4")
VARIANTS = ("rekv", "aks", "aks+compress")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compression", help="tokens stored with/without compression, AKS + compression overhead")
    p.add_argument("--video", default=DEFAULT_VIDEO, help="video file (looped when it has too few frames)")
    p.add_argument("--budgets", default="64,128,256,512", help="tokens per frame to measure, comma separated")
    p.add_argument("--blocks", type=int, default=32, help="blocks ingested per stream (2 frames each)")
    p.add_argument("--warmup", type=int, default=2, help="first blocks ingested but not timed")
    add_common_arguments(p)
    p.set_defaults(handler=run, fps=4.0)  # 4 fps: the 8 s sample gives 16 blocks before looping


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    engine = load(model=args.model, device=args.device)
    frames = [f for f, _ in sample_frames(args.video, args.fps)]
    options = policy_options(args)
    threshold = options.pop("compress_threshold", MemStreamConfig().compress_threshold)
    rows = [measure(engine, frames, b, args.blocks, args.fps, threshold, args.warmup, **options) for b in budgets]
    result = {"bench": "compression", "model": engine.backbone.name, "device": str(engine.device),
              "video": args.video, "fps": args.fps, "blocks": args.blocks, "compress_threshold": threshold,
              "options": options, "machine": machine(), "rows": rows}
    if args.json:
        return emit({**result, "markdown": markdown(rows)}, True)
    emit(result, False)
    print(markdown(rows))  # the table once, after the key: value lines
    return 0


def measure(engine: Engine, frames: list[np.ndarray], tokens_per_frame: int, blocks: int, fps: float,
            threshold: float, warmup: int = 2, **options: Any) -> dict[str, Any]:
    """Ingest `blocks` blocks of `frames` (looped) into the three variants, interleaved; one table row."""
    base = dict(fps=fps, tokens_per_frame=tokens_per_frame)
    if "n_local" in options:
        base["n_local"] = options.pop("n_local")
    if "encode_batch" in options:
        base["encode_batch"] = options.pop("encode_batch")
    memstream = {**options, "policy": "memstream-internal"}
    streams = {
        "rekv": engine.stream(policy="rekv", **base),
        "aks": engine.stream(**memstream, compress_threshold=None, **base),
        "aks+compress": engine.stream(**memstream, compress_threshold=threshold, **base),
    }
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for i in range(blocks):
        pair = np.stack([frames[(2 * i) % len(frames)], frames[(2 * i + 1) % len(frames)]])
        times = [2 * i / fps, (2 * i + 1) / fps]
        order = VARIANTS[i % 3:] + VARIANTS[: i % 3]  # rotate who goes first
        for name in order:
            _, s = timed(engine.device, lambda st=streams[name], p=pair, t=times: st.add_frames(p, t))
            if i >= warmup:
                seconds[name].append(s)
    minutes = 2 * blocks / fps / 60
    stats = {name: st.stats() for name, st in streams.items()}
    rekv, comp = stats["rekv"], stats["aks+compress"]

    def overhead(name: str) -> float:
        return statistics.median(a / b for a, b in zip(seconds[name], seconds["rekv"])) - 1

    return {
        "tokens_per_frame": tokens_per_frame,
        "tokens_per_block": rekv["tokens_per_block"],
        "tokens_per_min": {name: st["tokens_stored"] / minutes for name, st in stats.items()},
        "bytes_per_min": {name: st["bytes_per_block"] * st["blocks"] / minutes for name, st in stats.items()},
        "token_reduction": 1 - comp["tokens_stored"] / rekv["tokens_stored"],
        "compression_ratio": comp["compression_ratio"],
        "aks_kept_tokens": comp["aks_kept_tokens"],
        "block_s": {name: statistics.median(s) for name, s in seconds.items()},
        "aks_overhead": overhead("aks"),
        "aks_compress_overhead": overhead("aks+compress"),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (what BENCHMARKS.md shows)."""
    lines = ["| tokens/frame | tokens/min rekv | tokens/min compressed | fewer tokens | MB/min rekv | "
             "MB/min compressed | s/block rekv | s/block AKS | s/block AKS+compr. | AKS overhead | "
             "AKS+compr. overhead |",
             "|" + "---|" * 11]
    for r in rows:
        t, b, s = r["tokens_per_min"], r["bytes_per_min"], r["block_s"]
        lines.append(f"| {r['tokens_per_frame']} | {t['rekv']:.0f} | {t['aks+compress']:.0f} | "
                     f"{100 * r['token_reduction']:.0f}% | {b['rekv'] / 1e6:.2f} | {b['aks+compress'] / 1e6:.2f} | "
                     f"{s['rekv']:.4f} | {s['aks']:.4f} | {s['aks+compress']:.4f} | "
                     f"{100 * r['aks_overhead']:+.1f}% | {100 * r['aks_compress_overhead']:+.1f}% |")
    return "\n".join(lines)
