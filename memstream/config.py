"""Stream settings and the checks on what users pass in (one sentence per problem)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, InputError
from .memory import POLICIES, MemoryConfig

MAX_QUESTION_CHARS = 4000
MAX_NEW_TOKENS = 4096


@dataclass
class StreamConfig:
    """Everything that shapes a stream's memory. Changing any of it means re-ingesting."""

    policy: str = "rekv"  # memory policy: "full" or "rekv"
    fps: float = 1.0  # frames sampled per second of video
    tokens_per_frame: int = 256  # LLM tokens per frame (a block of 2 frames holds twice this)
    topk: int = 16  # blocks retrieved per layer for a question (rekv)
    n_local: int | None = 15000  # ingest sliding window in tokens (rekv); None = unbounded
    positions: str = "original"  # "original" (time-faithful) or "compact" (re-rotated to slots)
    score: str = "dot"  # "dot" or "cosine" retrieval score
    chunk_size: int = 1  # retrieve runs of consecutive blocks of this length
    question_window: bool = False  # a question also sees the local window (original positions)
    encode_batch: int = 4  # blocks per vision-tower call during add_video
    thumbnail_height: int | None = 96  # keep a thumbnail (this many px high) per block; None = none

    def validate(self) -> StreamConfig:
        def need(ok: bool, sentence: str) -> None:
            if not ok:
                raise ConfigError(sentence)

        need(self.policy in POLICIES, f"Unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}.")
        need(is_number(self.fps) and math.isfinite(self.fps) and 0 < self.fps <= 60,
             f"fps must be a number in (0, 60], got {self.fps!r}.")
        need(is_int(self.tokens_per_frame) and 4 <= self.tokens_per_frame <= 16384,
             f"tokens_per_frame must be an integer from 4 to 16384, got {self.tokens_per_frame!r}.")
        need(is_int(self.topk) and self.topk >= 1, f"topk must be a positive integer, got {self.topk!r}.")
        need(self.n_local is None or (is_int(self.n_local) and self.n_local >= 1),
             f"n_local must be a positive number of tokens or None, got {self.n_local!r}.")
        need(self.positions in ("original", "compact"),
             f"positions must be 'original' or 'compact', got {self.positions!r}.")
        need(self.score in ("dot", "cosine"), f"score must be 'dot' or 'cosine', got {self.score!r}.")
        need(is_int(self.chunk_size) and self.chunk_size >= 1,
             f"chunk_size must be a positive integer, got {self.chunk_size!r}.")
        need(not (self.question_window and self.positions == "compact"),
             "question_window needs positions='original' (compact slots assume exactly topk blocks).")
        need(is_int(self.encode_batch) and self.encode_batch >= 1, "encode_batch must be a positive integer.")
        need(self.thumbnail_height is None or (is_int(self.thumbnail_height) and 8 <= self.thumbnail_height <= 1024),
             f"thumbnail_height must be None or an integer from 8 to 1024, got {self.thumbnail_height!r}.")
        return self

    def memory_config(self) -> MemoryConfig:
        full = self.policy == "full"
        return MemoryConfig(policy=self.policy, n_local=None if full else self.n_local, topk=self.topk,
                            positions=self.positions, score=self.score, chunk_size=self.chunk_size,
                            question_window=self.question_window)


def is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def check_question(question: object, max_new_tokens: object) -> str:
    if not isinstance(question, str):
        raise InputError(f"The question must be text, got {type(question).__name__}.")
    q = question.strip()
    if not q:
        raise InputError("The question is empty; type a question about the video.")
    if len(q) > MAX_QUESTION_CHARS:
        raise InputError(f"The question is too long ({len(q)} characters; the limit is {MAX_QUESTION_CHARS}).")
    if not is_int(max_new_tokens) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}, got {max_new_tokens!r}.")
    return q



def check_times(times: object, n: int, last: float | None, fps: float) -> np.ndarray:
    """Validate or synthesise the frames' timestamps (seconds, strictly increasing)."""
    if times is None:
        first = 0.0 if last is None else last + 1.0 / fps
        return first + np.arange(n) / fps
    try:
        arr = np.asarray(times, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError("Frame times must be numbers (seconds).") from exc
    if len(arr) != n:
        raise InputError(f"Got {n} frames but {len(arr)} timestamps.")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise InputError("Frame times must be finite, non-negative seconds.")
    prev = np.concatenate([[-np.inf if last is None else last], arr[:-1]])
    if (arr <= prev).any():
        bad = int(np.argmax(arr <= prev))
        raise InputError(f"Frame times must increase: got {arr[bad]:.3f} s after {prev[bad]:.3f} s.")
    return arr


# The StreamConfig fields every subcommand exposes as flags (--tokens-per-frame for tokens_per_frame...).
STREAM_FLAGS = ("policy", "fps", "tokens_per_frame", "topk", "n_local", "positions", "score")


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --model, --device and the memory flags, with the library's defaults, to a subcommand."""
    d = StreamConfig()  # one source of defaults for the library and the CLI
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (offline random weights, the default), a hub id or a local directory")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--policy", default=d.policy, help=f"memory policy: {' or '.join(POLICIES)}")
    parser.add_argument("--fps", type=float, default=d.fps, help="frames sampled per second of video")
    parser.add_argument("--tokens-per-frame", type=int, default=d.tokens_per_frame,
                        help="LLM tokens per frame (>= 4)")
    parser.add_argument("--topk", type=int, default=d.topk, help="blocks retrieved per layer")
    parser.add_argument("--n-local", type=int, default=d.n_local, help="ingest sliding window, tokens")
    parser.add_argument("--positions", default=d.positions, help="'original' or 'compact'")
    parser.add_argument("--score", default=d.score, help="'dot' or 'cosine'")


def stream_options(args: argparse.Namespace) -> dict:
    """The memory settings parsed by `add_stream_arguments`, as keyword arguments of `Engine.stream`."""
    return {name: getattr(args, name) for name in STREAM_FLAGS}
