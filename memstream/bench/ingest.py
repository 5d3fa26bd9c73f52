"""`bench ingest`: seconds per block as a stream grows.

A synthetic stream is fed two frames (one block) per `Stream.add_frames` call, and each call is
timed on its own: resize, vision tower, decoder forward over the memory, commit. The result
compares the median of the first 10% of blocks with the median of the last 10%: a bounded policy
(fixed window + offloaded store) should cost the same per block at the end as at the start, while
`full` grows because every new block attends to everything before it.

On a shared machine other jobs can slow the end of a run more than its start. So after each block
the same fixed piece of work is timed as a probe: the vision tower on one fixed pair of frames
(its cost does not depend on the memory). `ratio_normalised` compares blocks in units of their
neighbouring probe; on a quiet machine it equals `ratio`.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..engine import Engine, load
from ..video import resize_frames
from .common import (
    SyntheticVideo,
    add_common_arguments,
    apply_threads,
    binned_medians,
    emit,
    policy_help,
    policy_options,
    spread,
    timed,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="seconds per block at the start and at the end of a long stream")
    p.add_argument("--policy", default="rekv", help=policy_help())
    p.add_argument("--blocks", type=int, default=400, help="blocks to ingest (2 frames each)")
    p.add_argument("--curve-bins", type=int, default=20, help="points of the per-block cost curve in the output")
    add_common_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    engine = load(model=args.model, expert=args.expert, device=args.device)
    options = policy_options(args)
    result = measure_ingest(engine, args.policy, args.blocks, tokens_per_frame=args.tokens_per_frame,
                            fps=args.fps, curve_bins=args.curve_bins, **options)
    return emit({"bench": "ingest", **result}, args.json)


def measure_ingest(engine: Engine, policy: str, blocks: int, *, tokens_per_frame: int, fps: float = 1.0,
                   curve_bins: int = 20, **stream_options: Any) -> dict[str, Any]:
    """Ingest `blocks` synthetic blocks one `add_frames` call at a time and time each call.

    Returns policy, blocks, first_block_s / last_block_s (median seconds per block over the first
    and the last 10% of the stream, at least one block each), ratio = last / first, their min-max
    spreads, `ratio_normalised` (the same ratio in units of a fixed probe timed after each block,
    see the module docstring) and `curve`: [[block index, median seconds]] over `curve_bins` runs.
    """
    if blocks < 2:
        raise ValueError("an ingest benchmark needs at least 2 blocks")
    stream = engine.stream(policy=policy, fps=fps, tokens_per_frame=tokens_per_frame, **stream_options)
    video = SyntheticVideo()
    per_block: list[float] = []
    in_probes: list[float] = []  # each block's seconds over its neighbouring probe's
    size = engine.backbone.frame_size(video.height, video.width, tokens_per_frame)  # what the stream will use
    per = engine.backbone.spec.frames_per_block  # frames of one block (Qwen 2, SmolVLM2 1)
    probe_pair = resize_frames(video.frames(0, per), size)

    def probe() -> torch.Tensor:
        return engine.backbone.encode_blocks(probe_pair)

    for i in range(blocks):
        pair = video.frames(per * i, per)  # made outside the timed region
        _, seconds = timed(engine.device, lambda pair=pair: stream.add_frames(pair))
        per_block.append(seconds)
        in_probes.append(seconds / timed(engine.device, probe)[1])
    tenth = max(1, blocks // 10)
    first, last = spread(per_block[:tenth]), spread(per_block[-tenth:])
    first_n, last_n = spread(in_probes[:tenth])["median"], spread(in_probes[-tenth:])["median"]
    stats = stream.stats()
    return {
        "policy": policy,
        "blocks": blocks,
        "first_block_s": first["median"],
        "last_block_s": last["median"],
        "ratio": last["median"] / first["median"],
        "ratio_normalised": last_n / first_n,
        "first_block_minmax_s": [first["min"], first["max"]],
        "last_block_minmax_s": [last["min"], last["max"]],
        "blocks_per_s": blocks / sum(per_block),
        "tokens_per_block": stats["tokens_per_block"],
        "window_tokens": stats["window_tokens"],
        "model": engine.backbone.name,
        "device": str(engine.device),
        "curve": binned_medians(per_block, curve_bins),
    }
