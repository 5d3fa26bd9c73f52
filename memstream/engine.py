"""The public API: `load()` an engine, open a `Stream`, add video, `ask`.

    engine = memstream.load(model="tiny")
    stream = engine.stream(policy="rekv", fps=1.0, tokens_per_frame=64, topk=16)
    stream.add_video("clip.mp4")            # or stream.add_frames(frames_uint8_THWC, times_s)
    answer = stream.ask("What moved?")      # Answer: text, ttft_s, first_logits, trace

Frames are grouped into blocks of `frames_per_block` (Qwen2.5-VL's temporal patch: 2). An odd frame
waits for its partner; `flush()` (called by `add_video` at the end of a file) pads it by repeating it,
as Qwen's processor does. A question sees the complete blocks ingested before it.

Threads: one thread may feed frames while others ask. Ingestion takes the memory lock one block at
a time and steps aside whenever a question is waiting, so a question is served between two blocks
(with the model work in another process, `load(..., worker_process=True)` or ZeroGPU, one batch of
blocks at a time: see `memstream.runner`).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch

from . import video
from .backbones import Backbone, load_backbone
from .checks import check_question, check_times, is_number
from .config import StreamConfig
from .errors import ConfigError, EmptyMemoryError, InputError
from .feed import VideoFeed
from .policies import policy_spec
from .prompt import question_ids, sink_ids
from .reference import reference_answer
from .runner import InProcessRunner, ModelRunner
from .trace import Answer
from .work import BlockBatch, Models, OpenRequest, QuestionRequest


class Engine:
    """A loaded backbone and, optionally, an external expert (`memstream.experts.Expert`) that
    streams are opened on. Streams share both; each stream has its own memory.

    `runner` runs the streams' model work (`memstream.runner`): None = in this process. A runner factory
    (`runner=lambda engine: ...`) is called when the first stream opens, once the expert is settled."""

    def __init__(self, backbone: Backbone, expert: Any = None,
                 runner: ModelRunner | Callable[[Engine], ModelRunner] | None = None):
        self.backbone = backbone
        self.expert = expert
        self._runner = runner

    @property
    def runner(self) -> ModelRunner:
        """Where the model work of this engine's streams runs (created on first use)."""
        if self._runner is None:
            self._runner = InProcessRunner(Models(self.backbone, self.expert))
        elif not isinstance(self._runner, ModelRunner):
            self._runner = self._runner(self)
        return self._runner

    def close(self) -> None:
        """Stop the runner's worker process, if any (streams of this engine cannot ingest or answer after)."""
        if isinstance(self._runner, ModelRunner):
            self._runner.close()

    @property
    def expert_name(self) -> str | None:
        return None if self.expert is None else self.expert.name

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def stream(self, config: StreamConfig | None = None, **options: Any) -> Stream:
        """Open an empty stream: from a `StreamConfig`, and/or flat options (`policy`, `fps`,
        `tokens_per_frame`, ... and any option of the policy, e.g. `topk=8` or `budget=128`)."""
        return Stream(self, self.stream_config(config, **options))

    def stream_config(self, config: StreamConfig | None = None, **options: Any) -> StreamConfig:
        """The validated `StreamConfig` a stream with these options would get on this engine (checks
        the expert too), without opening it: ConfigError with one sentence otherwise."""
        cfg = (config or StreamConfig()).replace(**options) if options else (config or StreamConfig())
        self.expert_for(cfg)
        return cfg

    def expert_for(self, cfg: StreamConfig) -> Any:
        """The expert a stream with `cfg` uses (None: none), or ConfigError when it cannot have the one it needs."""
        spec = policy_spec(cfg.policy)
        if cfg.expert is None or cfg.expert == "none" or not spec.uses_expert:
            chosen = None  # a policy that does not rank with an expert does not pay for frame embeddings
        elif cfg.expert == "auto":
            chosen = self.expert
        elif self.expert is not None and cfg.expert == self.expert.name:
            chosen = self.expert
        else:
            loaded = "no expert" if self.expert is None else f"expert {self.expert.name!r}"
            raise ConfigError(f"This stream asks for expert {cfg.expert!r} but the engine has {loaded}; "
                              f"load it with memstream.load(..., expert={cfg.expert!r}).")
        if chosen is None and spec.needs_expert:
            raise ConfigError(f"Policy {cfg.policy!r} ranks blocks with an external expert and this stream has none; "
                              f"load the engine with expert='clip-b32' (or 'tiny' offline), or pick a policy "
                              f"without one such as 'memstream-internal'.")
        return chosen

    def reference_answer(self, frames: np.ndarray, times: list[float] | np.ndarray | None, question: str, *,
                         fps: float = 1.0, tokens_per_frame: int = 256, max_new_tokens: int = 1,
                         answer_prefix: str = "") -> Answer:
        """The oracle: one standard forward of the stock model over all frames and the question
        (see `reference.py`). Under policy `full`, a stream's `first_logits` equal these."""
        return reference_answer(self.backbone, frames, times, question, fps=fps, tokens_per_frame=tokens_per_frame,
                                max_new_tokens=max_new_tokens, answer_prefix=answer_prefix)


class Stream:
    """One video stream and its memory. Create with `Engine.stream(...)`."""

    def __init__(self, engine: Engine, config: StreamConfig):
        self.engine = engine
        self.config = config
        bb = engine.backbone
        self._bb = bb
        self.expert = engine.expert_for(config)
        self.runner = engine.runner
        spill = self.runner.spill_dir()  # the block store's files (a runner in another process), else None
        if spill is not None:
            weakref.finalize(self, shutil.rmtree, spill, True)
        self.memory = self.runner.open(OpenRequest(policy_spec(config.policy), config.policy_config, config.fps,
                                                   self.expert is not None, sink_ids(bb), spill))
        self.frame_size: tuple[int, int] | None = None  # (H, W) pixels, fixed by the first frame
        # an odd frame waiting for its partner: (frame at the LLM's size, time, frame as added for the expert)
        self._pending: list[tuple[np.ndarray, float, np.ndarray | None]] = []
        self._last_time: float | None = None
        self._lock = threading.Lock()  # the memory and the model
        self._input_lock = threading.Lock()  # one producer at a time
        self._waiting = 0  # questions waiting for the memory lock
        self._waiting_lock = threading.Lock()
        self._ingest_s = 0.0  # seconds spent encoding + ingesting
        self._encode_s = 0.0  # of which in the vision tower (and the expert's image encoder)
        self._closed = threading.Event()
        # Benchmarks set this to a function that waits for the device (torch.cuda.synchronize), so that
        # the time split between the vision tower and the rest is measured, not just queued.
        self.sync: Any = None

    # ---- input --------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int] | None:
        if self.frame_size is None:
            return None
        ppt = self._bb.spec.pixels_per_token
        return self.frame_size[0] // ppt, self.frame_size[1] // ppt

    def add_frames(self, frames: np.ndarray, times: list[float] | np.ndarray | None = None) -> int:
        """Add frames (uint8 [T, H, W, 3] RGB, any size) taken at `times` (seconds, increasing).

        Also accepted (see `video.to_rgb_frames`): one frame [H, W, 3], grey [H, W] or [T, H, W],
        RGBA, torch tensors, lists of equally sized frames.

        Without `times`, frames are spaced 1/fps after the last one. Frames are resized to the
        stream's token budget (the first frame's aspect ratio fixes the size) for the LLM; an external
        expert gets them as they were added, and its own preprocessing resizes them to its input size.
        Returns the number of blocks added; an odd last frame waits for the next call or `flush()`.
        """
        frames = video.to_rgb_frames(frames)
        if self._closed.is_set():
            raise InputError("This stream was closed; open a new stream to add frames.")
        with self._input_lock:
            times_arr = check_times(times, len(frames), self._last_time, self.config.fps)
            size = self.frame_size or self._bb.frame_size(frames.shape[1], frames.shape[2],
                                                          self.config.tokens_per_frame)
            resized = video.resize_frames(frames, size)
            self.frame_size = size  # fixed by the first accepted frames, not by rejected ones
            self._last_time = float(times_arr[-1])
            # the expert's copy: the frames as added, not the LLM's downsized ones (None: no expert)
            originals = list(frames) if self.uses_expert else [None] * len(frames)
            self._pending.extend(zip(resized, times_arr.tolist(), originals))
            per = self._bb.spec.frames_per_block
            whole = len(self._pending) // per * per
            batch, self._pending = self._pending[:whole], self._pending[whole:]
            # a frame left waiting outlives this call: keep the expert's copy, not a view of the caller's array
            self._pending = [(f, t, None if o is None else o.copy()) for f, t, o in self._pending]
            return self._ingest_pairs(batch)

    def flush(self) -> int:
        """Ingest pending frames as one block, the last repeated to fill it (end of a video): 0 or 1 blocks.

        The padded block lists the times of its real frames only (one, for Qwen2.5-VL's 2-frame blocks)."""
        with self._input_lock:
            if not self._pending:
                return 0
            per = self._bb.spec.frames_per_block
            pending, self._pending = self._pending, []
            filled = pending + [pending[-1]] * (per - len(pending))
            return self._ingest_pairs(filled, real=len(pending))

    def add_video(self, path: str, max_seconds: float | None = None, pace: float | None = None) -> int:
        """Sample a video file at the stream's fps and ingest it; returns blocks added.

        Decoding is lazy: frames are read in small batches, never the whole file at once. The last
        odd frame is padded (`flush`). `pace` replays the file at that multiple of real time
        (1.0 = as a live camera would deliver it; None = as fast as possible). `close()` from
        another thread stops it between two blocks. Bad files raise `VideoError` with one sentence.
        """
        if pace is not None and not (is_number(pace) and pace > 0):
            raise ConfigError(f"pace must be a positive multiple of real time or None, got {pace!r}.")
        start = 0.0 if self._last_time is None else self._last_time + 1.0 / self.config.fps
        # paced: each block as soon as it is whole; otherwise several blocks per vision-tower call.
        # The stop is polled (not waited on): a paced replay sleeps between frames and close() takes
        # effect at the next frame, before its block is ingested.
        per = self._bb.spec.frames_per_block
        feed = VideoFeed(path, self.config.fps, [self], batch_frames=per if pace else per * self.config.encode_batch,
                         pace=pace, stop=self._closed.is_set, time_offset_s=start)
        try:
            return feed.run(max_seconds)
        finally:
            feed.close()

    def close(self) -> None:
        """Stop ingestion (a running `add_video` returns after its current block) and refuse new
        frames. Questions still work on what is in memory."""
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _ingest_pairs(self, pairs: list[tuple[np.ndarray, float, np.ndarray | None]], real: int | None = None) -> int:
        """Encode and ingest whole blocks of (frame, time, frame as added) triples; `real`: frames of a padded
        block that are real (its times list only those)."""
        if not pairs:
            return 0
        t0 = time.perf_counter()
        per = self._bb.spec.frames_per_block
        frames = np.stack([f for f, _, _ in pairs])  # [per * k, H, W, 3] at the LLM's token budget
        times = [tuple(t for _, t, _ in pairs[i: i + (real or per)]) for i in range(0, len(pairs), per)]
        # the expert sees the frames as they were added (its preprocessing resizes them to its own input)
        originals = [o for _, _, o in pairs] if self.uses_expert else None
        report = self.runner.ingest(self.memory, BlockBatch(frames, times, self.grid, originals), self._turn,
                                    self.sync)
        self._ingest_s += time.perf_counter() - t0  # as the caller waited: a remote call's overhead included
        self._encode_s += report.encode_s  # counted with the blocks: a failed ingest leaves the stats as they were
        return report.blocks

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """The memory, for one change: a queued question takes the lock first."""
        while self._waiting:
            time.sleep(0.0005)
        with self._lock:
            yield

    @property
    def uses_expert(self) -> bool:
        """Whether new frames go to the external expert too: the stream has one and its memory has not
        dropped it after a failure (`stats()["expert_failure"]` then says why)."""
        return self.expert is not None and self.memory.expert is not None

    @property
    def _frames_in_blocks(self) -> int:
        return sum(len(b.times) for b in self.memory.blocks)

    # ---- questions ----------------------------------------------------------------------------
    def ask(self, question: str, max_new_tokens: int = 64, stream: bool = False, *, query: str | None = None,
            answer_prefix: str = "") -> Answer | Iterator[Answer]:
        """Answer from the memory so far (greedy decoding).

        With `stream=False` returns the final `Answer`. With `stream=True` returns an iterator of
        partial `Answer`s (text growing token by token, `done=False`), the last one final; the
        memory is locked until the iterator is exhausted or closed.

        `query`: the part of the question whose tokens score the blocks (default: all of it; e.g.
        the question without its options, as ReKV scores). `answer_prefix`: text that opens the
        assistant's turn (e.g. "Best option: (" for multiple choice); never part of the query.
        """
        q = check_question(question, max_new_tokens)
        if query is not None and (not isinstance(query, str) or not query.strip() or query.strip() not in q):
            raise InputError("The retrieval query must be a non-empty part of the question's text.")
        if not isinstance(answer_prefix, str):
            raise InputError(f"answer_prefix must be text, got {type(answer_prefix).__name__}.")
        if not self.memory.blocks:
            if self._pending:
                n = len(self._pending)
                arrived = "one frame has" if n == 1 else f"{n} frames have"
                raise EmptyMemoryError(f"Only {arrived} arrived; a question needs a block of "
                                       f"{self._bb.spec.frames_per_block} frames (add frames or call flush()).")
            raise EmptyMemoryError("No video has been ingested yet; add a video or frames before asking.")
        ids, qslice = question_ids(self._bb, q, None if query is None else query.strip(), answer_prefix)
        gen = self._answer(q, ids, qslice, max_new_tokens, q if query is None else query.strip())
        if stream:
            return gen
        *_, final = gen  # drain the partial answers; the last one is final
        return final

    def _answer(self, question: str, ids: list[int], qslice: slice, max_new_tokens: int,
                query_text: str) -> Iterator[Answer]:
        with self._waiting_lock:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        try:
            yield from self._decode(question, ids, qslice, max_new_tokens, query_text)
        finally:
            self._lock.release()

    def _decode(self, question: str, ids: list[int], qslice: slice, max_new_tokens: int,
                query_text: str) -> Iterator[Answer]:
        """ids: the prompt after the video; qslice: its retrieval-query tokens; query_text: their text."""
        mem = self.memory
        # the stamp: what the memory held when asked (the trace, for display, comes with the final step only,
        # so that drawing it never delays the first streamed token)
        base = Answer(question=question, text="", token_ids=[], ttft_s=0.0, first_logits=None, trace=None,
                      asked_at_s=self.seconds(), frames_seen=self._frames_in_blocks, blocks_seen=len(mem.blocks),
                      tokens_seen=mem.stats()["tokens_stored"], policy=self.config.policy, done=False)
        final = None
        for step in self.runner.answer(mem, QuestionRequest(ids, qslice, query_text, max_new_tokens)):
            final = replace(base, text=step.text, token_ids=step.token_ids, ttft_s=step.ttft_s,
                            first_logits=step.first_logits, total_s=step.total_s, done=step.done, trace=step.trace)
            if not step.done:
                yield final
        mem.after_answer(question, final.text)
        yield final

    def set_retrieval(self, **changes: Any) -> StreamConfig:
        """Change question-time settings of a stream that already holds video, without re-ingesting: the
        policy's `QUESTION_TIME` fields (rekv: topk, score, chunk_size, question_window; memstream also
        fusion_c, fusion_weights). The next question retrieves with them. Returns the new config; a bad
        value raises ConfigError and changes nothing. Waits for a question in progress to finish."""
        allowed = self.config.question_time()
        other = sorted(set(changes) - set(allowed))
        if other:
            what = ", ".join(allowed) if allowed else "nothing"
            raise ConfigError(f"set_retrieval changes only {what} under policy {self.config.policy!r}; "
                              f"{', '.join(other)} shapes what was ingested, so open a new stream for it.")
        new = self.config.replace(**changes)
        with self._lock:
            self.config = new
            self.memory.retune(new.policy_config)
        return new

    # ---- reporting ----------------------------------------------------------------------------
    def seconds(self) -> float:
        """Stream time covered by the blocks in memory (end of the last block), in seconds."""
        if not self.memory.blocks:
            return 0.0
        return float(self.memory.blocks[-1].times[-1]) + 1.0 / self.config.fps

    def stats(self) -> dict:
        """Counts and sizes of the memory right now.

        frames: frames received (in blocks or pending); blocks; tokens_stored: visual tokens held;
        bytes_cpu / bytes_gpu: bytes of keys/values (and representative keys) in host memory and
        on the accelerator (on a CPU-only run everything is host memory); ingest_s: seconds spent
        ingesting, encode_s of them in the vision tower and the expert's image encoder.
        """
        mem = self.memory
        on_gpu = self._bb.device.type == "cuda"  # where the model work runs (a worker loads it as this process)
        blocks = len(mem.blocks)
        sizes = mem.stats()
        host, working = sizes.pop("bytes_host"), sizes.pop("bytes_device")
        return {
            "policy": self.config.policy,
            "expert": self.engine.expert_name if self.expert is not None else None,
            "frames": self._frames_in_blocks + len(self._pending),
            "frames_pending": len(self._pending),
            "blocks": blocks,
            "seconds": self.seconds(),
            **sizes,
            "bytes_cpu": host + (0 if on_gpu else working),
            "bytes_gpu": working if on_gpu else 0,
            "frame_size": self.frame_size,
            "fps": self.config.fps,
            "tokens_per_frame": self.config.tokens_per_frame,
            "ingest_s": self._ingest_s,
            "encode_s": self._encode_s,
            "blocks_per_s": blocks / self._ingest_s if self._ingest_s > 0 else None,
            "device": str(self._bb.device),
        }


def load(model: str | None = "tiny", expert: str | None = None, device: str | None = "auto",
         cache_dir: str | None = None, worker_process: bool = False) -> Engine:
    """Load an engine: `model` is an offline preset ("tiny", "tiny-qwen3-vl", "tiny-smolvlm2", ...:
    `backbones.PRESETS`), a hub id or a local directory of any registered family, read from its `model_type`
    (None = the default real model for the device: Qwen2.5-VL-7B-Instruct on CUDA, SmolVLM2-500M-Video-Instruct
    on CPU). `expert`: an external retrieval expert of `memstream.experts.EXPERTS` ("clip-b32", "pe-core-b16",
    "tiny") or None.

    `worker_process=True`: the model work runs in a separate, spawned process that loads the same models
    and holds no stream state; every call's arguments and results cross as pickled bytes, as on ZeroGPU
    (`memstream.worker`). This process keeps the memories (and loads the models too, for the tokenizer and
    the shapes). On ZeroGPU (`memstream.zerogpu.on_zerogpu()`) the model work goes to `@spaces.GPU`
    functions whatever this flag says."""
    from .zerogpu import import_spaces, on_zerogpu, prepare, zerogpu_runner

    if on_zerogpu():  # spaces patches torch's CUDA before anything touches it; the models go to "cuda" at import
        import_spaces()
        device = "cuda" if device in (None, "auto") else device
    if expert is None or expert == "none":
        backbone, chosen = load_backbone(model, device, cache_dir), None
    else:
        from .experts import load_expert  # open_clip is imported only when an expert is asked for

        backbone = load_backbone(model, device, cache_dir)
        chosen = load_expert(expert, backbone.device)
    runner = None
    if on_zerogpu():
        runner = zerogpu_runner
    elif worker_process:
        from .worker import worker_runner

        runner = partial(worker_runner, device=device, cache_dir=cache_dir)
    engine = Engine(backbone, chosen, runner)
    if on_zerogpu():
        prepare(engine)
    return engine
