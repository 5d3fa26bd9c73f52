"""`bench boundary`: what the process boundary of the model work costs (worker-process mode, as on ZeroGPU).

Two engines share one backbone: one runs the model work in this process, the other in a spawned worker
process (`load(..., worker_process=True)`); a stream of each ingests the same M minutes of synthetic
video in calls of `--blocks-per-call` blocks, then answers the same questions (`max_new_tokens=1`).
Reported per policy, minutes and mode: the median seconds per ingest call and per question (as the
caller waits), and for the worker mode the bytes that crossed per call (the pickled call, its tensor
data, the reply) and the seconds the worker itself spent, whose difference to the wall is the overhead
(pickling, the pipe, moving the memory's tensors). The block store never crosses: the worker maps its
files and a question reads only the blocks its layers retrieve.

`--synthetic` (rekv only), for models too slow to ingest M minutes twice: one ingest call is real, then
both memories are filled to M minutes with the same random keys and values of the right shapes
(`bench live`'s filler), then one more real ingest call and the questions: the calls measured see a
memory of M minutes, with its full window and store.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from ..engine import Engine, load
from ..errors import ConfigError
from ..worker import worker_runner
from .common import SyntheticVideo, add_common_arguments, apply_threads, emit, per_policy, policy_help, policy_options
from .live import fill_rekv
from .ttft import QUESTIONS, stream_frames


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("boundary", help="per-call overhead and bytes of the worker-process mode vs in-process")
    p.add_argument("--policy", default="rekv,memstream-internal,hermes",
                   help=policy_help() + "; several, comma separated")
    p.add_argument("--minutes", default="1,10", help="stream lengths, minutes, comma separated")
    p.add_argument("--blocks-per-call", type=int, default=8, help="blocks per ingest call (ZeroGPU's batch)")
    p.add_argument("--questions", type=int, default=3, help="questions per stream")
    p.add_argument("--synthetic", action="store_true",
                   help="rekv only: fill the memory to the stream length with random KV between two real ingest calls")
    add_common_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    local = load(model=args.model, expert=args.expert, device=args.device)
    remote = Engine(local.backbone, local.expert, runner=lambda e: worker_runner(e, device=args.device))
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    shares = per_policy(policies, policy_options(args))
    rows = []
    try:
        for minutes in [float(m) for m in args.minutes.split(",")]:
            for policy in policies:
                row = measure(local, remote, policy, minutes, fps=args.fps, tokens_per_frame=args.tokens_per_frame,
                              blocks_per_call=args.blocks_per_call, questions=args.questions,
                              synthetic=args.synthetic, **shares[policy])
                rows.append(row)
                emit({"bench": "boundary", **row}, args.json)
    finally:
        remote.close()
    return 0


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def measure(local: Engine, remote: Engine, policy: str, minutes: float, *, fps: float, tokens_per_frame: int,
            blocks_per_call: int, questions: int, synthetic: bool = False, **options: Any) -> dict[str, Any]:
    """One policy at one stream length, in both modes (ingest interleaved call by call, then the questions).
    `synthetic`: two real ingest calls around a random fill of the rest (rekv's memory layout)."""
    if synthetic and policy != "rekv":
        raise ConfigError("bench boundary --synthetic fills rekv's memory layout; use --policy rekv.")
    per = local.backbone.spec.frames_per_block
    n_frames = stream_frames(minutes, fps, per)
    video, times = SyntheticVideo(), np.arange(n_frames) / fps
    streams = {mode: engine.stream(policy=policy, fps=fps, tokens_per_frame=tokens_per_frame, **options)
               for mode, engine in (("in_process", local), ("worker", remote))}
    runner = remote.runner
    ingest_wall: dict[str, list[float]] = {m: [] for m in streams}
    chunk = per * blocks_per_call
    n_calls = 0
    starts = list(range(0, n_frames, chunk))
    if synthetic and len(starts) > 2:
        starts = [starts[0], starts[-1]]
    for start in starts:
        if synthetic and start == starts[-1] and start > 0:  # the blocks between the two real calls, at random
            for stream in streams.values():
                torch.manual_seed(0)  # the same memory in both modes
                fill_rekv(stream, start // per - stream.stats()["blocks"])
        frames = video.frames(start, min(chunk, n_frames - start))
        for mode, stream in streams.items():
            before = stream.stats()["ingest_s"]
            stream.add_frames(frames, times[start:start + chunk])
            ingest_wall[mode].append(stream.stats()["ingest_s"] - before)
        n_calls += 1
    ingest_calls = list(runner.calls)[-n_calls:]
    ask_wall: dict[str, list[float]] = {m: [] for m in streams}
    answers = {}
    for i in range(max(1, questions)):
        for mode, stream in streams.items():
            t0 = time.perf_counter()
            answers[mode] = stream.ask(QUESTIONS[i % len(QUESTIONS)], max_new_tokens=1)
            ask_wall[mode].append(time.perf_counter() - t0)
    answer_calls = list(runner.calls)[-max(1, questions):]
    assert all(c.op == "ingest" for c in ingest_calls) and all(c.op == "answer" for c in answer_calls)
    same = bool((answers["in_process"].first_logits - answers["worker"].first_logits).abs().max() < 1e-5)
    stats = streams["worker"].stats()
    last = ingest_calls[-1]
    return {
        "policy": policy, "minutes": minutes, "blocks": stats["blocks"], "tokens_stored": stats["tokens_stored"],
        "window_tokens": stats["window_tokens"], "store_bytes": stats["bytes_cpu"],
        "blocks_per_call": blocks_per_call,
        "ingest_call_s": {m: median(v) for m, v in ingest_wall.items()},
        "ingest_worker_work_s": median([c.work_s for c in ingest_calls]),
        "ingest_overhead_s": median([c.wall_s - c.work_s for c in ingest_calls]),
        "ingest_last_bytes": {"sent": last.bytes_sent, "sent_tensors": last.tensor_bytes_sent,
                              "received": last.bytes_received, "received_tensors": last.tensor_bytes_received,
                              "files_written_by_app": last.file_bytes_sent,
                              "files_written_by_worker": last.file_bytes_received},
        "question_s": {m: median(v) for m, v in ask_wall.items()},
        "question_overhead_s": median([c.wall_s - c.work_s for c in answer_calls]),
        "question_bytes": {"sent": answer_calls[-1].bytes_sent, "sent_tensors": answer_calls[-1].tensor_bytes_sent,
                           "received": answer_calls[-1].bytes_received,
                           "files_written_by_app": answer_calls[-1].file_bytes_sent},
        "first_logits_equal": same, "synthetic": synthetic,
        "model": local.backbone.name, "tokens_per_frame": tokens_per_frame,
    }
