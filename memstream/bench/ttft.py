"""`bench ttft`: time to first token after M minutes of stream.

For a memory policy, the stream ingests M minutes of synthetic video (fps frames per second, two
frames per block) before the clock starts; then each question is timed from the call of
`Stream.ask(question, max_new_tokens=1)` until it returns (first token in hand, device
synchronised). The engine's own `Answer.ttft_s` (measured from when the question holds the memory
lock, without building the trace) is reported next to it.

`offline` is what a user without memstream does: keep the sampled frames and, when the question
comes, make one standard call that encodes all of them and the question
(`Engine.reference_answer`: resize, vision tower over every frame, one prefill of the stock model).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ..engine import Engine, load
from .common import (
    SyntheticVideo,
    add_common_arguments,
    apply_threads,
    emit,
    per_policy,
    policy_help,
    policy_options,
    spread,
    timed,
)

OFFLINE = "offline"
QUESTIONS = (
    "What is moving in the video?",
    "Where is the white square at the end?",
    "What colours does the background have?",
    "Did anything change in the last minute?",
    "How many objects are there?",
    "Describe the motion from the start.",
    "Is the video getting darker or brighter?",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ttft", help="time to first token after M minutes of stream (or offline)")
    p.add_argument("--policy", default="rekv",
                   help=policy_help() + f", or '{OFFLINE}' (no memstream); several, comma separated, are measured "
                        "in one run with their questions interleaved (one JSON line each)")
    p.add_argument("--minutes", type=float, default=1.0, help="stream length before the questions, minutes")
    p.add_argument("--questions", type=int, default=5, help=f"questions asked (at most {len(QUESTIONS)})")
    add_common_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    engine = load(model=args.model, expert=args.expert, device=args.device)
    options = policy_options(args)
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    rows = measure_ttft_interleaved(engine, policies, args.minutes, fps=args.fps,
                                    tokens_per_frame=args.tokens_per_frame, questions=args.questions, **options)
    for row in rows[:-1]:  # one JSON line per policy; the last line is the last policy's
        emit({"bench": "ttft", **row, "interleaved": policies}, args.json)
    return emit({"bench": "ttft", **rows[-1], **({"interleaved": policies} if len(policies) > 1 else {})}, args.json)


def stream_frames(minutes: float, fps: float, per: int = 2) -> int:
    """Frames sampled in `minutes` at `fps`, rounded down to whole blocks of `per` frames (at least one block)."""
    return max(per, int(minutes * 60 * fps) // per * per)


def measure_ttft(engine: Engine, policy: str, minutes: float, *, fps: float = 1.0, tokens_per_frame: int,
                 questions: int = 5, **stream_options: Any) -> dict[str, Any]:
    """Median (and min-max) seconds to the first token over `questions` questions asked after
    `minutes` of stream. Returns policy, minutes, blocks, ttft_s, ttft_minmax_s and more."""
    return measure_ttft_interleaved(engine, [policy], minutes, fps=fps, tokens_per_frame=tokens_per_frame,
                                    questions=questions, **stream_options)[0]


def measure_ttft_interleaved(engine: Engine, policies: list[str], minutes: float, *, fps: float = 1.0,
                             tokens_per_frame: int, questions: int = 5, **stream_options: Any) -> list[dict[str, Any]]:
    """`measure_ttft` for several policies on the same frames: every stream ingests first, then each
    question is asked of every policy in turn, so load from other jobs hits all of them alike and
    their ratios are fair. Each policy gets the options it takes (e.g. hermes' budget only hermes); an
    option none of them takes is a ConfigError."""
    n_frames = stream_frames(minutes, fps, engine.backbone.spec.frames_per_block)
    video = SyntheticVideo()
    asked = [QUESTIONS[i % len(QUESTIONS)] for i in range(max(1, questions))]
    times = np.arange(n_frames) / fps
    askers = {}
    shares = per_policy([p for p in policies if p != OFFLINE], stream_options)
    for policy in policies:
        if policy == OFFLINE:
            frames = video.frames(0, n_frames)  # a user without memstream keeps the frames themselves
            askers[policy] = (lambda q, frames=frames: engine.reference_answer(
                frames, times, q, fps=fps, tokens_per_frame=tokens_per_frame, max_new_tokens=1), None)
            continue
        stream = engine.stream(policy=policy, fps=fps, tokens_per_frame=tokens_per_frame, **shares[policy])
        chunk = engine.backbone.spec.frames_per_block * stream.config.encode_batch  # as add_video feeds it
        for start in range(0, n_frames, chunk):
            stream.add_frames(video.frames(start, min(chunk, n_frames - start)), times[start:start + chunk])
        askers[policy] = (lambda q, stream=stream: stream.ask(q, max_new_tokens=1), stream)
    wall: dict[str, list[float]] = {p: [] for p in policies}
    engine_ttft: dict[str, list[float]] = {p: [] for p in policies}
    tokens: dict[str, int] = {}
    for q in asked:
        for policy in policies:
            answer, seconds = timed(engine.device, lambda q=q, policy=policy: askers[policy][0](q))
            wall[policy].append(seconds)
            engine_ttft[policy].append(answer.ttft_s)
            tokens[policy] = answer.tokens_seen
    rows = []
    for policy in policies:
        s = spread(wall[policy])
        stream = askers[policy][1]
        rows.append({
            "policy": policy,
            "minutes": minutes,
            "blocks": n_frames // engine.backbone.spec.frames_per_block,
            "ttft_s": s["median"],
            "ttft_minmax_s": [s["min"], s["max"]],
            "engine_ttft_s": spread(engine_ttft[policy])["median"],
            "questions": len(asked),
            "video_tokens": tokens[policy] if stream is None else stream.stats()["tokens_stored"],
            "tokens_raw": tokens[policy] if stream is None else stream.stats()["tokens_raw"],
            "model": engine.backbone.name,
            "device": str(engine.device),
            **({} if stream is None or "budget" not in stream.stats() else {"budget": stream.stats()["budget"]}),
            **({} if stream is None or "topk" not in stream.config.options() else {"topk": stream.config.topk}),
        })
    return rows
