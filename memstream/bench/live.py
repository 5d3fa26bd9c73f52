"""`bench live`: can a model keep up with a live camera on this machine, and how long does a question take?

For each model (a real-shape preset with few layers) and dtype, in its own subprocess so that its peak RSS
is its own:

1. Fill a `rekv` stream with a synthetic memory of `--minutes` of video at `--fps`: what rekv's ingestion
   would leave after that long (one block store entry and one representative key per block, a full
   `n_local` window, positions advanced block by block), with random keys and values. Building it costs
   seconds instead of hours; a question's cost depends on the memory's sizes, not its values.
2. Ingest `--frames` real frames on top of it (the window is full, as late in a live stream), the first one
   untimed (warm-up): seconds per frame in the vision tower and in the decoder, from `Stream.stats()`.
3. Ask `--questions` questions (one token each): TTFT, as `bench ttft` measures it.

Depth scaling: a preset has 4 decoder and 4 vision layers of the real checkpoint's shapes; the real
checkpoint has L decoder and V vision layers (`REAL_DEPTHS`, or `name:L:V` on the command line). Vision
seconds are scaled by V / 4 and decoder and TTFT seconds by L / 4. Everything that is not a layer (patch
embedding, connector, embeddings, norm, head) is scaled too, so the figures err on the slow side. Peak RSS
is measured on the 4-layer model; `weights_full_gb` and `kv_full_gb` give what full depth adds.

    python -m memstream bench live --models small-smolvlm2-256m,small --dtypes fp32,bf16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from ..backbones import PRESETS, smolvlm
from ..engine import Engine, load
from ..policies.base import BlockInfo
from .common import SyntheticVideo, apply_threads, emit, machine

# (decoder layers, vision layers) of the checkpoints the real-shape presets stand for.
# small: Qwen2.5-VL-3B-Instruct (36 decoder layers, 32 vision blocks; its config.json on the hub).
# small-qwen3-vl: Qwen3-VL-2B-Instruct (qwen3_vl.REAL_SHAPES).
REAL_DEPTHS: dict[str, tuple[int, int]] = {"small": (36, 32), "small-qwen3-vl": (28, 24), **smolvlm.REAL_DEPTHS}
DEFAULT_MODELS = "small-smolvlm2-256m,small-smolvlm2-500m,small-smolvlm2-2.2b,small,small-qwen3-vl"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
QUESTION = "What happened in the last minute?"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("live", help="seconds of ingest per frame, live frame rate, TTFT after M minutes, peak RSS")
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help="comma-separated real-shape presets, each optionally 'name:L:V' (real decoder and vision "
                        f"depths; known: {', '.join(f'{k} {v[0]}/{v[1]}' for k, v in REAL_DEPTHS.items())})")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--minutes", type=float, default=10.0, help="video in the synthetic memory before the questions")
    p.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video")
    p.add_argument("--frames", type=int, default=4, help="real frames ingested on the full memory (first untimed)")
    p.add_argument("--questions", type=int, default=2, help="questions timed (first untimed)")
    p.add_argument("--tokens-per-frame", type=int, default=None,
                   help="LLM tokens per frame (default: each family's own: SmolVLM2 64 or 81, Qwen 256)")
    p.add_argument("--n-local", type=int, default=None,
                   help="rekv's ingest window in tokens (default: rekv's, 15000); a live CPU demo wants less")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one model:dtype here
    p.add_argument("--json", action="store_true", help="print one JSON object per model and dtype")
    p.set_defaults(handler=run)


def parse_model(item: str) -> tuple[str, int, int]:
    """'name' or 'name:L:V' -> (preset, real decoder layers, real vision layers)."""
    name, *depths = item.strip().split(":")
    if name not in PRESETS:
        raise SystemExit(f"bench live: {name!r} is not a preset ({', '.join(PRESETS)}).")
    if depths:
        return name, int(depths[0]), int(depths[1])
    if name not in REAL_DEPTHS:
        raise SystemExit(f"bench live: give the real depths of {name!r} as {name}:L:V.")
    return (name, *REAL_DEPTHS[name])


def run(args: argparse.Namespace) -> int:
    if args.one:
        return emit(measure_one(args), True)
    rows = []
    for item in args.models.split(","):
        parse_model(item)  # fail before any subprocess starts
    for item in args.models.split(","):
        for dtype in args.dtypes.split(","):
            cmd = [sys.executable, "-m", "memstream", "bench", "live", "--one", f"{item}:{dtype}" if ":" in item
                   else f"{item}::{dtype}", "--minutes", str(args.minutes), "--fps", str(args.fps),
                   "--frames", str(args.frames), "--questions", str(args.questions), "--json"]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--tokens-per-frame", str(args.tokens_per_frame)] if args.tokens_per_frame else []
            cmd += ["--n-local", str(args.n_local)] if args.n_local else []
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"bench live: {item} {dtype} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            emit(row, args.json) if args.json else print(table_row(row), flush=True)
    return 0


def table_row(r: dict[str, Any]) -> str:
    """One markdown table row: model, dtype, tokens/frame, s/frame (vision + decoder), live fps, TTFT, RSS."""
    return (f"| {r['model']} | {r['dtype']} | {r['tokens_per_frame']} | {r['frame_s']:.2f} "
            f"({r['vision_s']:.2f} + {r['decoder_s']:.2f}) | {r['frame_cpu_s']:.2f} | {r['live_fps']:.2f} | "
            f"{r['threads'] / r['frame_cpu_s']:.2f} | {r['ttft_s']:.2f} ({r['ttft_cpu_s']:.2f}) | "
            f"{r['peak_rss_gb']:.1f} | {r['weights_full_gb']:.1f} + {r['kv_full_gb']:.1f} | "
            f"{r['load_average'][0]:.1f} |")


def measure_one(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one 'name:L:V:dtype' (or 'name::dtype') in this process."""
    apply_threads(args)
    spec_text, dtype_name = args.one.rsplit(":", 1)
    name, real_l, real_v = parse_model(spec_text.rstrip(":"))
    engine = load(model=name, device="cpu")
    bb = engine.backbone
    if DTYPES[dtype_name] != bb.dtype:  # the checkpoint is stored in fp32; cast like a bf16 load would
        from ..backbones import load_backbone

        engine = Engine(load_backbone(name, "cpu", dtype=DTYPES[dtype_name]))
        bb = engine.backbone
    tpf = args.tokens_per_frame or bb.spec.default_tokens_per_frame
    window = {"n_local": args.n_local} if getattr(args, "n_local", None) else {}
    stream = engine.stream(policy="rekv", fps=args.fps, tokens_per_frame=tpf, **window)
    video = SyntheticVideo()
    per = bb.spec.frames_per_block
    step = 1.0 / args.fps
    stream.add_frames(video.frames(0, per), [i * step for i in range(per)])  # fixes the frame size; a real block
    n_blocks = int(args.minutes * 60 * args.fps) // per
    t0 = time.perf_counter()
    fill_rekv(stream, n_blocks)
    fill_s = time.perf_counter() - t0
    before = stream.stats()
    start = per * (n_blocks + 1)
    stream.add_frames(video.frames(start, per), [(start + i) * step for i in range(per)])  # warm-up, untimed
    warm = stream.stats()
    timed_frames = max(per, (args.frames - 1) // per * per)
    cpu0 = time.process_time()
    stream.add_frames(video.frames(start + per, timed_frames), [(start + per + i) * step for i in range(timed_frames)])
    frame_cpu = (time.process_time() - cpu0) / timed_frames  # CPU seconds, all threads together
    after = stream.stats()
    vision = (after["encode_s"] - warm["encode_s"]) / timed_frames
    decoder = (after["ingest_s"] - warm["ingest_s"]) / timed_frames - vision
    ttfts, ttft_cpu = [], []
    for i in range(max(2, args.questions)):
        t, c = time.perf_counter(), time.process_time()
        stream.ask(QUESTION, max_new_tokens=1)
        if i:  # the first question warms up
            ttfts.append(time.perf_counter() - t)
            ttft_cpu.append(time.process_time() - c)
    built_l = bb.spec.n_layers
    vision_layers = len(vision_blocks(bb.model))
    frame_s = vision * real_v / vision_layers + decoder * real_l / built_l
    weights = sum(p.numel() for p in bb.model.parameters())
    extra = (real_l - built_l) * layer_params(decoder_layer(bb)) + \
        (real_v - vision_layers) * layer_params(vision_blocks(bb.model)[0])
    size = torch.finfo(bb.dtype).bits // 8
    return {
        "bench": "live", "model": name, "dtype": dtype_name, "real_depths": [real_l, real_v],
        "built_depths": [built_l, vision_layers], "tokens_per_frame": tpf,
        "tokens_per_block": before["tokens_stored"] / max(1, before["blocks"]),
        "minutes": args.minutes, "blocks": after["blocks"], "n_local": stream.memory.n_local,
        "vision_s": vision * real_v / vision_layers, "decoder_s": decoder * real_l / built_l,
        "frame_s": frame_s, "live_fps": 1.0 / frame_s,
        # CPU seconds (all threads) per frame and per question at full depth: what an idle machine with
        # `threads` cores would take at best divided by the threads; wall figures depend on the load
        "frame_cpu_s": frame_cpu * ((vision * real_v / vision_layers + decoder * real_l / built_l)
                                    / max(1e-9, vision + decoder)),
        "ttft_cpu_s": float(np.median(ttft_cpu)) * real_l / built_l,
        "load_average": list(os.getloadavg()),
        "ttft_s": float(np.median(ttfts)) * real_l / built_l, "ttft_built_s": float(np.median(ttfts)),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "weights_full_gb": (weights + extra) * size / 1e9,
        "kv_full_gb": (before["bytes_cpu"]) * real_l / built_l / 1e9,
        "fill_s": fill_s, "threads": torch.get_num_threads(), "machine": machine(),
    }


def decoder_layer(bb) -> torch.nn.Module:
    return bb.decoder_layers[0]


def vision_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The vision tower's layer list: the longest ModuleList under a module named *visual* or *vision*."""
    found = [m for n, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList) and ("visual" in n or "vision" in n)]
    return max(found, key=len)


def layer_params(layer: torch.nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def fill_rekv(stream, n_blocks: int) -> None:
    """Append `n_blocks` blocks to a rekv stream's memory as its ingestion would leave them, with random
    keys and values: store entry [L, 2, Hkv, n, d], representative key [1, Hkv, d] per layer, positions
    advanced, a BlockInfo; then the window holds the last n_local tokens."""
    mem, bb = stream.memory, stream.engine.backbone
    spec, dtype = bb.spec, bb.dtype
    last = mem.blocks[-1]
    n, grid = last.n_tokens, last.grid
    shape = (spec.n_layers, 2, spec.n_kv_heads, n, spec.head_dim)
    nb, na = last.text_rows
    for i in range(n_blocks):
        _, t_off = mem.positions.block(*grid, nb, na)  # positions advanced as an ingest would
        mem.store.add(torch.randn(shape, dtype=dtype))
        for layer in range(spec.n_layers):
            mem.rep[layer].append(torch.randn(1, spec.n_kv_heads, spec.head_dim, dtype=dtype))
        t = last.start_s + (i + 1) * spec.frames_per_block / stream.config.fps
        mem.blocks.append(BlockInfo(len(mem.blocks), (t,), n, t_off, grid, None, last.text_rows))
    held = min(mem.n_local or 10**9, n * len(mem.blocks))
    mem.window = [tuple(torch.randn(1, spec.n_kv_heads, held, spec.head_dim, dtype=dtype) for _ in range(2))
                  for _ in range(spec.n_layers)]
