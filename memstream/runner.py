"""Where a stream's model work runs: the seam between the memory's state and the model.

A `Stream` never calls the model itself; it asks its engine's runner to

    open(request)                   -> Memory         build a memory and prefill its sinks
    ingest(memory, batch, turn)     -> IngestReport   encode and append a batch of blocks
    answer(memory, request)         -> AnswerStep...  answer a question

`InProcessRunner` calls the functions of `memstream.work` directly on the memory (the default). A
`RemoteRunner` sends each call to another process that holds the loaded models and no session state,
as pickled bytes (`memstream.transport`): the memory's state stays in this process and crosses with the
call; the block store stays in files that the other side maps (a question reads only the blocks its
layers retrieve). The other process runs `execute(models, payload)`. Two remote runners exist: a local
worker process (`memstream.worker`, `load(..., worker_process=True)`) and ZeroGPU's `@spaces.GPU`
functions (`memstream.zerogpu`). Results are identical to the in-process runner's: the same functions
run on the same tensors.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .policies import Memory
from .transport import Side, dumps, loads
from .work import (
    AnswerStep,
    BlockBatch,
    IngestReport,
    Models,
    OpenRequest,
    QuestionRequest,
    Turn,
    answer_steps,
    ingest_blocks,
    open_memory,
)


class ModelRunner(ABC):
    """Runs a stream's model work (see the module docstring)."""

    # blocks a feeder should hand over per call: 1 keeps questions waiting at most one block in this
    # process; a remote runner prefers several, since every call pays a fixed overhead
    blocks_per_call: int = 1

    @abstractmethod
    def open(self, request: OpenRequest) -> Memory:
        """A new memory with its sinks."""

    @abstractmethod
    def ingest(self, memory: Memory, batch: BlockBatch, turn: Turn,
               sync: Callable[[], None] | None = None) -> IngestReport:
        """Append the batch's blocks to `memory`, each change inside `turn()`."""

    @abstractmethod
    def answer(self, memory: Memory, request: QuestionRequest) -> Iterator[AnswerStep]:
        """The answer's steps; the memory is unchanged."""

    def spill_dir(self) -> str | None:
        """A fresh directory for a new stream's block store files, or None to keep blocks in memory."""
        return None

    def close(self) -> None:  # noqa: B027 - optional, the in-process runner holds nothing
        """Release what the runner holds (a worker process)."""


class InProcessRunner(ModelRunner):
    """The model work in this process, on the memory itself."""

    def __init__(self, models: Models):
        self.models = models

    def open(self, request: OpenRequest) -> Memory:
        return open_memory(self.models, request)

    def ingest(self, memory: Memory, batch: BlockBatch, turn: Turn,
               sync: Callable[[], None] | None = None) -> IngestReport:
        return ingest_blocks(self.models, memory, batch, turn, sync)

    def answer(self, memory: Memory, request: QuestionRequest) -> Iterator[AnswerStep]:
        return answer_steps(self.models, memory, request)


@dataclass
class CallRecord:
    """One remote call, for `bench worker` and the docs' table of bytes."""

    op: str  # "open", "ingest" or "answer"
    bytes_sent: int  # the call's pickled arguments (memory state included)
    bytes_received: int  # the pickled reply
    tensor_bytes_sent: int  # of bytes_sent, raw tensor data
    tensor_bytes_received: int  # of bytes_received, raw tensor data
    file_bytes_sent: int  # large tensors this side wrote to new shared files for the call (named, not sent)
    file_bytes_received: int  # large tensors the other side wrote to new shared files for the reply
    wall_s: float  # seconds from sending to having the reply unpickled
    work_s: float  # of which the other side spent in the work itself
    blocks: int = 0  # blocks ingested by the call


def execute(models: Models, payload: bytes) -> bytes:
    """The other side of a remote call: run it on `models` and pickle the reply. Holds nothing afterwards.

    The payload is (op, memory, request, (directory for large tensors, their minimum size)); the reply is
    ("ok", result, memory state or None, seconds of work) or ("error", exception)."""
    side = Side(models.backbone, models.expert, models.backbone.device)
    try:
        op, memory, request, (side.spill_dir, side.spill_min_bytes) = loads(payload, side)  # large results: files
        t0 = time.perf_counter()
        if op == "open":
            result, memory = None, open_memory(models, request)
        elif op == "ingest":
            sync = None if side.device.type == "cpu" else torch.cuda.synchronize  # timings of finished work
            result = ingest_blocks(models, memory, request, sync=sync)
        else:  # "answer": the memory is unchanged and does not go back
            result, memory = list(answer_steps(models, memory, request)), None
        reply = ("ok", result, memory, time.perf_counter() - t0)
        return dumps(reply, side, reply=True)
    except Exception as exc:  # the caller re-raises it as it was: a bad input stays a one-sentence error
        traceback.print_exc()
        try:
            return dumps(("error", exc), side, reply=True)
        except Exception:  # an exception that does not pickle goes back as its sentence
            return dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")), side, reply=True)


class RemoteRunner(ModelRunner):
    """Model work in another process that holds the models (see the module docstring). Subclasses say how
    the bytes get there and back (`exchange`)."""

    blocks_per_call = 8

    def __init__(self, models: Models, scratch: str | None = None, spill_min_bytes: int = 1 << 20):
        self.models = models  # this process's copy: tokenizer, shapes; the other side runs them
        self.scratch = tempfile.mkdtemp(prefix="memstream-", dir=scratch)  # shared with the other side
        self.tensors = tempfile.mkdtemp(prefix="tensors-", dir=self.scratch)  # large tensors of the memories
        self.spill_min_bytes = spill_min_bytes  # tensors at least this large cross as files
        self.calls: deque[CallRecord] = deque(maxlen=1000)  # the latest calls, newest last
        self._lock = threading.Lock()  # one call at a time per runner (one worker, one GPU)

    @abstractmethod
    def exchange(self, payload: bytes, op: str, work: float) -> bytes:
        """Send `payload` to the other side (it runs `execute`) and return its reply. `work`: blocks to
        ingest or tokens to generate, for a time limit. Raise WorkerError with one sentence on failure."""

    def spill_dir(self) -> str:
        return tempfile.mkdtemp(prefix="stream-", dir=self.scratch)

    def call(self, op: str, memory: Memory | None, request: Any, work: float) -> Any:
        """Run `op` remotely; the memory adopts the state that comes back. On any failure the memory is
        exactly as before the call (nothing ingested is lost) and the error is raised."""
        side = Side(self.models.backbone, self.models.expert, self.models.backbone.device, keep_on_cpu=True,
                    spill_dir=self.tensors, spill_min_bytes=self.spill_min_bytes)
        payload = dumps((op, memory, request, (self.tensors, self.spill_min_bytes)), side)
        tensor_bytes, file_bytes = side.bytes_tensors, side.bytes_files
        t0 = time.perf_counter()
        with self._lock:
            reply = self.exchange(payload, op, work)
        status, *rest = loads(reply, side, reply=True)
        if status != "ok":
            raise rest[0]
        result, state, work_s = rest
        if state is not None:
            if memory is None:
                memory = state
            else:  # adopt the new state in place: whoever holds the memory sees it. One dict update, so that
                # a thread reading the memory meanwhile (the demo's status timer) sees the old or the new state
                old = vars(memory)
                old.update(vars(state))
                for name in set(old) - set(vars(state)):
                    del old[name]
        self.calls.append(CallRecord(op, len(payload), len(reply), tensor_bytes, side.bytes_tensors_read, file_bytes,
                                     side.bytes_files_read, time.perf_counter() - t0, work_s,
                                     getattr(result, "blocks", 0)))
        return memory if op == "open" else result

    def open(self, request: OpenRequest) -> Memory:
        return self.call("open", None, request, 1)

    def ingest(self, memory: Memory, batch: BlockBatch, turn: Turn,
               sync: Callable[[], None] | None = None) -> IngestReport:
        with turn():  # the memory is the call's for all its blocks
            return self.call("ingest", memory, batch, len(batch.times))

    def answer(self, memory: Memory, request: QuestionRequest) -> Iterator[AnswerStep]:
        # the whole answer is computed in one call; its steps are then handed out as they were made
        yield from self.call("answer", memory, request, request.max_new_tokens)

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
