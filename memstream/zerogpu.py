"""Hugging Face ZeroGPU: the model work inside `@spaces.GPU` functions, the memory in the app's process.

On a ZeroGPU Space (`SPACES_ZERO_GPU` is set) a GPU exists only inside functions decorated with
`spaces.GPU`; they run in a worker process forked from the app's, their arguments and results are pickled,
and a worker is reused only sometimes. `memstream.load` then gives the engine a `ZeroGPURunner`: every
call of a stream (open a memory, ingest a batch of blocks, answer a question) becomes one call of
`run_on_gpu(payload, op, work)`, the `memstream.runner.execute` of the pickled call, with a time limit
sized to the work (`GpuDurations`). The GPU function is registered when the models load (`prepare`),
before the app launches. The `spaces` package is imported only there; elsewhere nothing here
runs.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .errors import WorkerError
from .runner import RemoteRunner, execute
from .work import Models

# what the GPU worker uses: set in the app's process by `prepare` (when the models load, before the app
# launches) and inherited by the fork. The engine, not a snapshot of it: the demo adds its expert after loading
_ENGINE: Any = None
_GPU_CALL: Any = None  # run_on_gpu wrapped by spaces.GPU, created once at load time (before the app launches)


def on_zerogpu() -> bool:
    """Whether this process runs on a ZeroGPU Space (the platform sets SPACES_ZERO_GPU)."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true", "yes", "on")


def import_spaces() -> ModuleType:
    """The `spaces` package (on ZeroGPU only; it patches torch, so import it before the models load)."""
    return importlib.import_module("spaces")


@dataclass(frozen=True)
class GpuDurations:
    """The time limit asked of ZeroGPU per call, in seconds: a visitor's quota is charged what a call
    asks for up front, so ask for what the work needs and not the 60 s default."""

    base_s: float = 5.0  # every call: moving the memory to the GPU and back, the first CUDA work
    open_s: float = 5.0  # a new memory: the sinks' prefill
    per_block_s: float = 1.0  # one block: vision tower + decoder forward (7B, 256 tokens per frame)
    per_token_s: float = 0.15  # one generated token (the prefill is in base_s)
    max_s: float = 120.0  # never ask for more


def duration_s(op: str, work: float, limits: GpuDurations = GpuDurations()) -> int:
    """The duration to ask for: `work` blocks (ingest) or tokens at most (answer)."""
    extra = {"open": limits.open_s, "ingest": limits.per_block_s * work, "answer": limits.per_token_s * work}
    return int(min(limits.max_s, limits.base_s + extra.get(op, 0.0)) + 0.999)


def run_on_gpu(payload: bytes, op: str, work: float) -> bytes:
    """One stream call, in ZeroGPU's worker (wrapped by `spaces.GPU` in `prepare`)."""
    return execute(Models(_ENGINE.backbone, _ENGINE.expert), payload)


def gpu_duration(payload: bytes, op: str, work: float) -> int:
    """ZeroGPU calls this with the call's arguments before it lends a GPU."""
    return duration_s(op, work, LIMITS)


LIMITS = GpuDurations()  # the durations asked for (a Space may replace it before the first call)


def prepare(engine: Any, spaces: ModuleType | None = None) -> None:
    """Register the GPU function with ZeroGPU (at load time: the platform expects its GPU functions to
    exist before the app launches) and remember the engine whose models the GPU worker uses."""
    global _ENGINE, _GPU_CALL
    _ENGINE = engine
    if _GPU_CALL is None:
        _GPU_CALL = (spaces or import_spaces()).GPU(duration=gpu_duration)(run_on_gpu)


class ZeroGPURunner(RemoteRunner):
    """Model work in `@spaces.GPU` calls (`prepare` first); ingestion is batched (`blocks_per_call` blocks
    per call)."""

    blocks_per_call = 8

    def exchange(self, payload: bytes, op: str, work: float) -> bytes:
        try:
            return _GPU_CALL(payload, op, work)
        except Exception as exc:  # no GPU lent (quota, queue) or the GPU worker died: one sentence
            reason = str(exc).strip().rstrip(".") or type(exc).__name__
            raise WorkerError(f"The GPU call failed ({reason}); the memory keeps everything ingested before.") from exc


def zerogpu_runner(engine: Any) -> ZeroGPURunner:
    """The runner of an engine loaded on a ZeroGPU Space (`prepare(engine)` was called when it loaded)."""
    if _GPU_CALL is None:
        prepare(engine)
    return ZeroGPURunner(Models(engine.backbone, engine.expert))
