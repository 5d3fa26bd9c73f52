"""The model work of a stream, as three functions that hold nothing between calls.

    open_memory(models, request)            build a policy's memory and prefill its sinks -> Memory
    ingest_blocks(models, memory, batch)    encode a batch of blocks and append them       -> IngestReport
    answer_steps(models, memory, request)   a question's prefill and greedy decoding       -> AnswerStep...

Each takes the loaded models (`Models`) and the memory it works on; its inputs and outputs pickle, so a
runner (`memstream.runner`) may call it in this process or in another one that holds only the models
(`memstream.worker`, ZeroGPU): the memory's state then lives in the caller's process and crosses with the
call (`memstream.transport`). Nothing here branches on a policy: the memory's own verbs do the work.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .decoding import IncrementalDetokenizer, greedy_tokens
from .errors import expert_failure
from .policies import Memory, PolicyConfig, PolicySpec, build_memory_from
from .store import spill_to
from .trace import RetrievalTrace

# a context manager factory entered around each block's change of the memory (the stream's lock, which
# steps aside for a waiting question); a runner in another process enters it once around the whole call
Turn = Callable[[], contextlib.AbstractContextManager]


@dataclass
class Models:
    """What the process doing the model work holds: the backbone and the engine's expert (or None)."""

    backbone: Any  # memstream.backbones.Backbone
    expert: Any = None  # memstream.experts.Expert or None


@dataclass
class OpenRequest:
    """A new stream's memory."""

    spec: PolicySpec  # the policy's registry row (its builder pickles by reference, plug-ins included)
    config: PolicyConfig  # the policy's settings
    fps: float  # frames per second sampled from the video
    use_expert: bool  # the memory gets the engine's expert (Engine.expert_for chose it)
    sink_ids: list[int]  # the system prompt's token ids, prefilled as the sinks
    spill_dir: str | None = None  # keep the block store as files there (None: in memory)


@dataclass
class BlockBatch:
    """Whole blocks of frames to encode and append."""

    frames: np.ndarray  # uint8 [frames_per_block * k, H, W, 3] at the LLM's token budget
    times: list[tuple[float, ...]]  # per block: the times of its real frames (a padded block lists fewer)
    grid: tuple[int, int]  # (gh, gw) LLM tokens per frame side
    originals: list[np.ndarray] | None  # the frames as added, for the expert (None: no expert embeddings)


@dataclass
class IngestReport:
    """What one batch cost, measured where the model runs."""

    blocks: int  # blocks appended
    encode_s: float  # seconds in the vision tower and the expert's image encoder
    total_s: float  # seconds encoding + appending


@dataclass
class QuestionRequest:
    """One question over the memory."""

    ids: list[int]  # the prompt's token ids after the video
    query_slice: slice  # its tokens whose queries score the blocks
    query_text: str  # their text (for an external expert)
    max_new_tokens: int  # answer length cap


@dataclass
class AnswerStep:
    """The answer so far: one per generated token, the last with `done` and the trace."""

    text: str  # decoded so far
    token_ids: list[int]  # generated so far
    first_logits: torch.Tensor  # float32 [vocab]: the prefill's last-token logits
    ttft_s: float  # seconds to the first logits
    total_s: float  # seconds so far
    done: bool = False
    trace: RetrievalTrace | None = None  # on the last step only


def open_memory(models: Models, request: OpenRequest) -> Memory:
    """Build the policy's memory on the backbone and prefill its sinks."""
    with spill_to(request.spill_dir):
        memory = build_memory_from(request.spec, models.backbone, request.config, fps=request.fps,
                                   expert=models.expert if request.use_expert else None)
    memory.ingest_sinks(request.sink_ids)
    return memory


def ingest_blocks(models: Models, memory: Memory, batch: BlockBatch, turn: Turn = contextlib.nullcontext,
                  sync: Callable[[], None] | None = None) -> IngestReport:
    """Encode the batch's blocks at once (vision tower, expert) and append them one by one, each inside
    `turn()`. A failing block raises; the blocks before it stay appended (each block is all-or-nothing).

    An expert that raises does not stop ingestion: the memory drops it (`Memory.drop_expert`, with the
    sentence its stats then report) and the blocks are appended without frame embeddings."""
    bb, expert = models.backbone, models.expert
    t0 = time.perf_counter()
    per = bb.spec.frames_per_block
    tokens = bb.encode_blocks(batch.frames)  # [k, n, hidden * (1 + D)] (D: DeepStack rows, Qwen3-VL)
    embeds = None
    if batch.originals is not None and expert is not None and memory.expert is not None:  # [k, per, D]
        try:
            embeds = embed_frames(expert, batch.originals).view(tokens.shape[0], per, -1)
        except Exception as exc:  # noqa: BLE001 - any failure of the expert, a model we do not control
            with turn():
                memory.drop_expert(expert_failure(exc, "embedding frames", for_good=True))
    if sync is not None:
        sync()
    encoded = time.perf_counter() - t0
    for i, times in enumerate(batch.times):
        with turn():
            memory.ingest_block(tokens[i], times, batch.grid,
                                frame_embeds=None if embeds is None else embeds[i, : len(times)])
    if sync is not None:
        sync()
    return IngestReport(len(batch.times), encoded, time.perf_counter() - t0)


def embed_frames(expert: Any, frames: list[np.ndarray]) -> torch.Tensor:
    """The expert's embeddings [T, D] of frames as added: one batch per run of equally sized frames
    (a stream's frames may change size between calls; each keeps its own)."""
    out, run = [], [frames[0]]
    for frame in frames[1:]:
        if frame.shape != run[-1].shape:
            out.append(expert.embed_images(np.stack(run)))
            run = []
        run.append(frame)
    out.append(expert.embed_images(np.stack(run)))
    return torch.cat(out)


def answer_steps(models: Models, memory: Memory, request: QuestionRequest) -> Iterator[AnswerStep]:
    """Prefill the question over the memory and decode greedily: one step per token, then the final step
    with the trace. The memory is left as it was (the question's keys/values go with its cache)."""
    bb = models.backbone
    t0 = time.perf_counter()
    start = memory.question_start()
    cache = memory.question_cache(request.query_slice, request.query_text)
    logits = bb.decode(bb.embed(request.ids), memory.positions.text_at(start, len(request.ids)), cache)
    first = logits.cpu()
    ttft = time.perf_counter() - t0

    def step(token: int, position: int) -> torch.Tensor:  # one generated token over the question's cache
        return bb.decode(bb.embed([token]), memory.positions.text_at(position, 1), cache)

    detok = IncrementalDetokenizer(bb.tokenizer)
    for token in greedy_tokens(logits, step, start_position=start + len(request.ids),
                               max_new_tokens=request.max_new_tokens, eos_ids=bb.eos_ids):
        detok.add(token)
        yield AnswerStep(detok.text, list(detok.token_ids), first, ttft, time.perf_counter() - t0)
    text = detok.finish()
    yield AnswerStep(text, list(detok.token_ids), first, ttft, time.perf_counter() - t0, done=True,
                     trace=cache.trace())
