"""What every benchmark shares: synthetic frames, device-aware timing, summaries and output.

Timings are wall-clock seconds from `time.perf_counter`. On CUDA, kernels run asynchronously, so
every timed region is bracketed by `torch.cuda.synchronize()`: otherwise the clock would stop when
the work is queued, not when it is done.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from .. import options
from ..config import options_for
from ..policies import policy_names

T = TypeVar("T")

# A 4:3 camera frame; `add_frames` resizes it to the token budget, as it would a real camera's.
FRAME_HEIGHT, FRAME_WIDTH = 240, 320
# 64 tokens per frame = a block of at most 128 LLM tokens (108 for 4:3, see docs/design.md): long
# streams stay within what the offline baseline can hold in one forward on a CPU.
BENCH_TOKENS_PER_FRAME = 64


class SyntheticVideo:
    """A moving pattern: a bright square sliding over a colour gradient, plus fixed noise.

    `frames(start, n)` returns uint8 [n, H, W, 3] for frame indices start .. start+n-1. Frames are
    cheap to make (a slice and an add), so a benchmark can generate them outside its timed region
    for streams of any length without holding them all in memory. Content does not change the
    amount of compute (the model's cost depends on shapes only); motion keeps blocks distinct so
    retrieval scores are not all ties.
    """

    def __init__(self, height: int = FRAME_HEIGHT, width: int = FRAME_WIDTH, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.height, self.width = height, width
        ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
        base = np.stack([ys + 0 * xs, xs + 0 * ys, (ys + xs) / 2], axis=-1)  # [H, W, 3]
        self._base = (0.6 * base + rng.integers(0, 40, (height, width, 3))).astype(np.uint8)
        self._side = max(4, min(height, width) // 4)

    def frames(self, start: int, n: int) -> np.ndarray:
        out = np.repeat(self._base[None], n, axis=0)
        s = self._side
        for i in range(n):
            k = start + i  # the square moves 7 px right and 3 px down per frame, wrapping around
            y, x = (3 * k) % (self.height - s), (7 * k) % (self.width - s)
            out[i, y:y + s, x:x + s] = (255, 255, 255)
        return out


def synchronize(device: torch.device | str) -> None:
    """Wait until queued accelerator work is done (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device | str, fn: Callable[[], T]) -> tuple[T, float]:
    """Run `fn()` and return (its result, seconds it took), synchronised on CUDA."""
    synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - t0


def spread(values: list[float]) -> dict[str, float]:
    """{"median", "min", "max"} of a non-empty list of numbers."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def binned_medians(values: list[float], bins: int) -> list[list[float]]:
    """[[index at the bin's centre, median of the bin]] for up to `bins` equal runs of `values`:
    a curve small enough to print in JSON and draw, robust to single slow samples."""
    n = len(values)
    bins = max(1, min(bins, n))
    edges = [round(i * n / bins) for i in range(bins + 1)]
    return [[(lo + hi - 1) / 2, statistics.median(values[lo:hi])] for lo, hi in zip(edges, edges[1:]) if hi > lo]


def add_common_arguments(p: argparse.ArgumentParser, model_default: str = "tiny") -> None:
    """Options every benchmark takes: the model and where it runs, the stream and policy flags (as the
    CLI's `ask` has them, but 64 tokens per frame by default), threads and the output."""
    options.add_engine_arguments(p, model=model_default)
    options.add_stream_arguments(p, defaults={"tokens_per_frame": BENCH_TOKENS_PER_FRAME}, policy=False)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def policy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `Engine.stream` options the flags set, but policy, fps and tokens_per_frame (which every benchmark
    passes on its own): encode_batch and the policy options given."""
    return {k: v for k, v in options.stream_options(args).items() if k not in ("policy", "fps", "tokens_per_frame")}


def per_policy(policies: list[str], opts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each policy's share of `opts` (several policies measured on one set of flags); ConfigError for an
    option that none of them takes."""
    from ..config import route_check

    shares = {p: options_for(p, opts) for p in policies}
    taken = set().union(*shares.values()) if shares else set()
    unused = {k: v for k, v in opts.items() if k not in taken}
    if unused and policies:
        route_check(policies[0], unused)  # names the policy that owns it, or says nobody does
    return shares


def policy_help() -> str:
    return f"memory policy ({', '.join(policy_names())}, or any policy registered before the run)"


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def machine() -> dict[str, Any]:
    """The hardware a figure was measured on, for the record."""
    import os
    import platform

    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def emit(result: dict[str, Any], as_json: bool) -> int:
    """Print a result: one JSON object on the last line with `--json`, else `key: value` lines."""
    if as_json:
        print(json.dumps(result, default=_jsonable))
        return 0
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, list | dict):
            value = json.dumps(value, default=_jsonable)
        print(f"{key}: {value}")
    return 0


def _jsonable(x: object) -> object:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, torch.device):
        return str(x)
    return str(x)
