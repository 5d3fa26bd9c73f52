"""`bench efficiency`: how much of this machine's matmul speed ingestion achieves (MFU).

For each device (the CPU and, when there is one, the GPU):

1. the matmul peak is measured in the same run: square products of a few sizes in the model's
   dtype (float32 on CPU, bfloat16 on CUDA), best FLOP/s over sizes and repetitions;
2. a stream ingests warm-up calls, then `--calls` timed `add_frames` calls of `--blocks-per-call`
   blocks each (by default what `add_video` feeds: `encode_batch` blocks per vision call); the
   FLOPs of each block are counted from the model config (`flops.py`) for the context it had
   (sinks + window);
3. mfu = median over calls of (the call's FLOP/s / the peak probed right around it), where the
   probe is the best of one square matmul before and one after the call. Other jobs on a shared
   machine slow the matmuls and the blocks alike, so comparing each call with its neighbouring
   probe keeps the ratio meaningful; `mfu_global` (all FLOPs / all seconds / best peak of the run)
   is reported too and is the same figure on a quiet machine.
4. Within each block the vision tower's call is timed too, so `mfu_vision` and `mfu_decoder`
   (the rest of the block: decoder over the memory, commit, resize) say which part loses time.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..config import StreamConfig
from ..engine import Engine, load
from .common import (
    SyntheticVideo,
    add_common_arguments,
    apply_threads,
    emit,
    machine,
    policy_help,
    policy_options,
    spread,
    synchronize,
    timed,
)
from .flops import Flops, ingest_block_flops, matmul_flops, vision_flops

# Square matmul sides tried for the peak: large enough to be compute bound on each kind of device,
# small enough that one product fits the time budget (a GPU needs far larger ones to saturate).
PEAK_SIZES = {"cpu": (512, 1024, 2048), "cuda": (2048, 4096, 8192)}
# The probe timed around each call: one product that already runs near the peak on that device.
PROBE_SIZE = {"cpu": 1024, "cuda": 8192}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("efficiency", help="ingest FLOP/s divided by the measured matmul peak (MFU)")
    p.add_argument("--policy", default="rekv", help=policy_help())
    p.add_argument("--calls", type=int, default=4, help="timed add_frames calls per device")
    p.add_argument("--blocks-per-call", type=int, default=StreamConfig().encode_batch,
                   help="blocks per add_frames call (default: what add_video feeds, encode_batch)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (allocations, kernel choice)")
    p.add_argument("--devices", default="auto", help="'auto' (cpu, plus cuda if present) or a comma list")
    p.add_argument("--peak-seconds", type=float, default=3.0, help="time spent measuring the matmul peak")
    add_common_arguments(p, model_default="tiny")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    devices = (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])) if args.devices == "auto" \
        else [d.strip() for d in args.devices.split(",") if d.strip()]
    per_device = []
    for dev in devices:
        engine = load(model=args.model, expert=args.expert, device=dev)
        peak = matmul_peak(engine.device, engine.backbone.dtype, args.peak_seconds)
        row = measure_efficiency(engine, args.policy, args.calls, blocks_per_call=args.blocks_per_call,
                                 warmup=args.warmup, tokens_per_frame=args.tokens_per_frame, fps=args.fps,
                                 **policy_options(args))
        row.update(peak_tflops=peak["tflops"], peak_matmul=peak, mfu=row.pop("mfu_local"),
                   mfu_global=row["achieved_tflops"] / peak["tflops"])
        per_device.append(row)
        del engine
    result = {"bench": "efficiency", "model": args.model, "policy": args.policy, "mfu": per_device[0]["mfu"],
              "device": per_device[0]["device"], "devices": per_device, "machine": machine()}
    return emit(result, args.json)


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 3.0) -> dict[str, Any]:
    """Best FLOP/s of [n, n] @ [n, n] over PEAK_SIZES and repetitions, within about `seconds`.

    Returns {"tflops": best, "size": n of the best, "dtype"}. Each size gets one untimed call
    (thread pools, kernel selection), then repeats until its share of the time is spent.
    """
    best, best_n = 0.0, 0
    sizes = PEAK_SIZES.get(device.type, PEAK_SIZES["cpu"])
    budget = seconds / len(sizes)
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        torch.mm(a, b, out=out)
        spent = 0.0
        while spent < budget:
            _, dt = timed(device, lambda a=a, b=b, out=out: torch.mm(a, b, out=out))
            spent += dt
            rate = matmul_flops(n) / dt / 1e12
            if rate > best:
                best, best_n = rate, n
    return {"tflops": best, "size": best_n, "dtype": str(dtype).removeprefix("torch.")}


def measure_efficiency(engine: Engine, policy: str, calls: int, *, blocks_per_call: int = 1, warmup: int = 2,
                       tokens_per_frame: int, fps: float = 1.0, **stream_options: Any) -> dict[str, Any]:
    """Time `calls` add_frames calls of `blocks_per_call` blocks each (after `warmup` calls), split
    into the vision tower and the rest (decoder forward per block, commits, resize), and count
    their FLOPs. Rates are in TFLOP/s; `mfu*` are medians over calls of (rate / the matmul probe
    timed around the call)."""
    bb = engine.backbone
    config = bb.model.config
    stream = engine.stream(policy=policy, fps=fps, tokens_per_frame=tokens_per_frame, **stream_options)
    synthetic = SyntheticVideo()
    mem = stream.memory
    probe = _matmul_probe(engine.device, bb.dtype, PROBE_SIZE.get(engine.device.type, PROBE_SIZE["cpu"]))
    stream.sync = lambda: synchronize(engine.device)  # the stream's encode_s then counts finished work

    size = bb.frame_size(synthetic.height, synthetic.width, tokens_per_frame)  # what the stream will use
    grid = (size[0] // bb.spec.pixels_per_token, size[1] // bb.spec.pixels_per_token)
    n_local = stream.config.options().get("n_local")
    rows: list[dict[str, float]] = []  # per timed call: seconds, FLOPs, probe
    before = probe()
    for call in range(warmup + calls):
        frames = synthetic.frames(2 * blocks_per_call * call, 2 * blocks_per_call)
        window = mem.window_tokens()
        flops = Flops()
        for j in range(blocks_per_call):  # each block attends to the sinks + the window before it
            seen = window + j * grid[0] * grid[1]
            flops = flops + ingest_block_flops(config, grid, mem.n_sink + (seen if n_local is None
                                                                           else min(n_local, seen)))
        encoded = stream.stats()["encode_s"]
        _, dt = timed(engine.device, lambda frames=frames: stream.add_frames(frames))
        after = probe()
        if call >= warmup:
            rows.append({"s": dt, "vision_s": stream.stats()["encode_s"] - encoded, "flops": flops.total,
                         "attention": flops.attention, "peak": max(before, after)})
        before = after
    vision_call = vision_flops(config.vision_config, *grid, blocks=blocks_per_call).total
    total_s = sum(r["s"] for r in rows)
    total_flops = sum(r["flops"] for r in rows)
    vision_s = sum(r["vision_s"] for r in rows)
    n_blocks = calls * blocks_per_call

    def local(rate) -> float:  # median over calls of (TFLOP/s from `rate(row)`) / the call's probe
        return spread([rate(r) / 1e12 / r["peak"] for r in rows])["median"]

    per = spread([r["s"] / blocks_per_call for r in rows])
    return {
        "device": str(engine.device),
        "blocks": n_blocks,
        "blocks_per_call": blocks_per_call,
        "tokens_per_block": grid[0] * grid[1],
        "block_s": per["median"],
        "block_minmax_s": [per["min"], per["max"]],
        "vision_s_per_block": vision_s / n_blocks,
        "gflop_per_block": total_flops / n_blocks / 1e9,
        "attention_share": sum(r["attention"] for r in rows) / total_flops,
        "vision_share": vision_call * calls / total_flops,
        "achieved_tflops": total_flops / total_s / 1e12,
        "vision_tflops": vision_call * calls / vision_s / 1e12,
        "decoder_tflops": (total_flops - vision_call * calls) / (total_s - vision_s) / 1e12,
        "mfu_local": local(lambda r: r["flops"] / r["s"]),
        "mfu_vision": local(lambda r: vision_call / r["vision_s"]),
        # the rest of the call: decoder over the memory for each block, commits, frame resize
        "mfu_decoder": local(lambda r: (r["flops"] - vision_call) / (r["s"] - r["vision_s"])),
    }


def _matmul_probe(device: torch.device, dtype: torch.dtype, n: int = 1024):
    """A function returning the TFLOP/s of one [n, n] @ [n, n] product right now."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)

    def probe() -> float:
        _, dt = timed(device, lambda: torch.mm(a, b, out=out))
        return matmul_flops(n) / dt / 1e12

    return probe
