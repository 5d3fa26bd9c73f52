"""`bench memory`: bytes each block costs, and peak accelerator memory as a stream grows.

For each policy and tokens_per_frame, a stream ingests up to two lengths (`--lengths`, blocks);
at each length it records `Stream.stats()` bytes in host memory (`bytes_cpu`: the block store,
plus the working set on a CPU-only run) and on the accelerator (`bytes_gpu`: sinks, window,
representative keys), per block, and the analytic size of one block's keys and values
(layers x 2 x kv_heads x tokens x head_dim x element size). On CUDA it also records the peak of
`torch.cuda.max_memory_allocated` since the stream opened (model weights included): for a bounded
policy it must be the same at both lengths once the window is full.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from ..engine import Engine, load
from .common import (
    SyntheticVideo,
    add_common_arguments,
    apply_threads,
    emit,
    per_policy,
    policy_options,
    synchronize,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="bytes per block (CPU, GPU) and peak GPU memory at two stream lengths")
    p.add_argument("--policies", default="full,rekv", help="comma-separated policies")
    p.add_argument("--tpf", default="64,256", help="comma-separated tokens_per_frame values")
    p.add_argument("--lengths", default="150,300", help="two stream lengths in blocks, e.g. 150,300")
    add_common_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    engine = load(model=args.model, expert=args.expert, device=args.device)
    lengths = sorted(int(x) for x in args.lengths.split(","))
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    shares = per_policy(policies, policy_options(args))  # each policy its own options
    rows = []
    tpfs = [int(x) for x in args.tpf.split(",")]
    for policy in policies:
        for tpf in tpfs:
            # progress on stderr (a run takes minutes; stdout stays the result, --json parseable)
            print(f"memory: {policy}, {tpf} tokens/frame, up to {lengths[-1]} blocks "
                  f"({len(rows) + 1}/{len(policies) * len(tpfs)})…", file=sys.stderr, flush=True)
            rows.append(measure_memory(engine, policy, tpf, lengths, fps=args.fps, **shares[policy]))
    result = {"model": engine.backbone.name, "device": str(engine.device), "lengths": lengths, "rows": rows}
    return emit({"bench": "memory", **result}, args.json)


def kv_bytes_per_block(engine: Engine, tokens: int) -> int:
    """Keys + values of `tokens` tokens in every decoder layer, in the model's dtype."""
    s = engine.backbone.spec
    return s.n_layers * 2 * s.n_kv_heads * tokens * s.head_dim * torch.finfo(engine.backbone.dtype).bits // 8


def measure_memory(engine: Engine, policy: str, tokens_per_frame: int, lengths: list[int], *, fps: float = 1.0,
                   **stream_options: Any) -> dict[str, Any]:
    """Ingest up to each of `lengths` blocks and record sizes there (see the module docstring)."""
    cuda = engine.device.type == "cuda"
    if cuda:
        synchronize(engine.device)
        torch.cuda.reset_peak_memory_stats(engine.device)
    stream = engine.stream(policy=policy, fps=fps, tokens_per_frame=tokens_per_frame, **stream_options)
    synthetic = SyntheticVideo()
    at: list[dict[str, Any]] = []
    done = 0
    for length in lengths:
        while done < length:
            stream.add_frames(synthetic.frames(2 * done, 2))
            done += 1
        synchronize(engine.device)
        st = stream.stats()
        at.append({
            "blocks": done,
            "bytes_cpu": st["bytes_cpu"],
            "bytes_gpu": st["bytes_gpu"],
            "bytes_cpu_per_block": st["bytes_cpu"] / done,
            "bytes_gpu_per_block": st["bytes_gpu"] / done,
            "window_tokens": st["window_tokens"],
            "peak_gpu_bytes": torch.cuda.max_memory_allocated(engine.device) if cuda else None,
        })
    tokens = stream.stats()["tokens_per_block"]
    first, last = at[0], at[-1]
    span = max(1, last["blocks"] - first["blocks"])
    return {
        "policy": policy,
        "tokens_per_frame": tokens_per_frame,
        "tokens_per_block": tokens,
        "kv_bytes_per_block": kv_bytes_per_block(engine, tokens),
        # growth between the two lengths: what one more block costs once the window is full
        "marginal_cpu_bytes_per_block": (last["bytes_cpu"] - first["bytes_cpu"]) / span,
        "marginal_gpu_bytes_per_block": (last["bytes_gpu"] - first["bytes_gpu"]) / span,
        "at": at,
    }
