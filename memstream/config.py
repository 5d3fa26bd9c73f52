"""Stream settings and the checks on what users pass in (one sentence per problem)."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, InputError
from .memory import POLICIES, MemoryConfig

MAX_QUESTION_CHARS = 4000
MAX_NEW_TOKENS = 4096


# The settings a question reads (retrieval), as opposed to what ingestion built: `Stream.set_retrieval`
# changes these on a stream that already holds video, without re-ingesting.
RETRIEVAL_FIELDS = ("topk", "score", "chunk_size", "question_window", "fusion_c", "fusion_weights")


@dataclass
class StreamConfig:
    """Everything that shapes a stream's memory. Changing any of it means re-ingesting."""

    policy: str = "rekv"  # memory policy, a name of memory.POLICY_REGISTRY ("full", "rekv", "memstream", ...)
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
    # --- external expert and MemStream (memstream, memstream-internal, external) ---
    expert: str | None = "auto"  # "auto": the engine's expert if it has one; None/"none": no expert; or its name
    aks_keep: int | float = 0.25  # AKS tokens kept per past block: count (int >= 1) or fraction (float in (0, 1])
    aks_scope: str = "layer"  # AKS chooses per "layer" or per KV "head"
    compress_threshold: float | None = 0.95  # patches more similar than this to the last stored one are dropped
    compress_floor: int | float = 0.05  # tokens always stored per block: count (int) or fraction (float)
    fusion_c: float = 60.0  # reciprocal rank fusion constant c in sum_e w_e / (c + rank_e)
    fusion_weights: tuple[float, float] = (1.0, 1.0)  # RRF weights (internal, external)
    # --- HERMES ---
    hermes: Any = None  # hermes.HermesConfig, a dict of its fields, or None for its defaults

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
        need(self.expert is None or isinstance(self.expert, str),
             f"expert must be a name, 'auto', 'none' or None, got {self.expert!r}.")
        need(_count_or_fraction(self.aks_keep),
             f"aks_keep must be a token count (integer >= 1) or a fraction in (0, 1], got {self.aks_keep!r}.")
        need(self.aks_scope in ("layer", "head"), f"aks_scope must be 'layer' or 'head', got {self.aks_scope!r}.")
        need(self.compress_threshold is None or (is_number(self.compress_threshold)
                                                 and -1.0 <= self.compress_threshold <= 1.0),
             f"compress_threshold must be a cosine in [-1, 1] or None (off), got {self.compress_threshold!r}.")
        need(_count_or_fraction(self.compress_floor),
             f"compress_floor must be a token count (integer >= 1) or a fraction in (0, 1], "
             f"got {self.compress_floor!r}.")
        need(is_number(self.fusion_c) and math.isfinite(self.fusion_c) and self.fusion_c >= 0,
             f"fusion_c must be a non-negative number, got {self.fusion_c!r}.")
        w = self.fusion_weights
        need(isinstance(w, tuple | list) and len(w) == 2 and all(is_number(x) and math.isfinite(x) and x >= 0
                                                                  for x in w) and sum(w) > 0,
             f"fusion_weights must be two non-negative numbers (internal, external), not both 0, got {w!r}.")
        self.fusion_weights = (float(w[0]), float(w[1]))
        if self.policy == "hermes" or self.hermes is not None:
            self.hermes = _hermes_config(self.hermes)
        return self

    def memory_config(self) -> MemoryConfig:
        full = self.policy == "full"
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(MemoryConfig)
                  if f.name not in ("policy", "n_local") and hasattr(self, f.name)}
        return MemoryConfig(policy=self.policy, n_local=None if full else self.n_local, **shared)


def _count_or_fraction(x: object) -> bool:
    return (is_int(x) and x >= 1) or (isinstance(x, float) and 0.0 < x <= 1.0)


def _hermes_config(value: object) -> Any:
    """A validated HermesConfig from one, a dict of its fields, or None (defaults)."""
    from .hermes import HermesConfig

    if value is None:
        value = HermesConfig()
    elif isinstance(value, dict):
        try:
            value = HermesConfig(**value)
        except TypeError as exc:
            raise ConfigError(f"Unknown hermes option: {exc}.") from exc
    elif not isinstance(value, HermesConfig):
        raise ConfigError(f"hermes must be a HermesConfig, a dict of its fields or None, got {type(value).__name__}.")
    return value.validate()


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
POLICY_FLAGS = ("aks_keep", "aks_scope", "compress_threshold", "compress_floor", "fusion_c", "fusion_weights")
# HermesConfig fields exposed as flags (--budget, --chunk-frames, --hermes-positions)
HERMES_FLAGS = {"budget": "budget", "chunk_frames": "chunk_frames", "hermes_positions": "positions"}


def _count_or_fraction_arg(text: str) -> int | float:
    """'64' -> 64 tokens, '0.25' -> a quarter of the block."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None


def _threshold_arg(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a cosine in [-1, 1] or 'off', got {text!r}") from None


def _weights_arg(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like '1,1', got {text!r}") from None


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --model, --expert, --device and the memory flags, with the library's defaults, to a subcommand."""
    d = StreamConfig()  # one source of defaults for the library and the CLI
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (offline random weights, the default), a hub id or a local directory")
    parser.add_argument("--expert", default="none",
                        help="external retrieval expert: clip-b32, pe-core-b16, tiny (offline random) or none")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--policy", default=d.policy, help=f"memory policy: {', '.join(POLICIES)}")
    parser.add_argument("--fps", type=float, default=d.fps, help="frames sampled per second of video")
    parser.add_argument("--tokens-per-frame", type=int, default=d.tokens_per_frame,
                        help="LLM tokens per frame (>= 4)")
    parser.add_argument("--topk", type=int, default=d.topk, help="blocks retrieved per layer")
    parser.add_argument("--n-local", type=int, default=d.n_local, help="ingest sliding window, tokens")
    parser.add_argument("--positions", default=d.positions, help="'original' or 'compact'")
    parser.add_argument("--score", default=d.score, help="'dot' or 'cosine'")
    add_policy_arguments(parser)


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The memstream and hermes flags (also used by the benchmarks, which set the rest themselves)."""
    d = StreamConfig()
    ms = parser.add_argument_group("memstream policies")
    ms.add_argument("--aks-keep", type=_count_or_fraction_arg, default=d.aks_keep,
                    help="AKS: tokens of each past block the window keeps: a count (64) or a fraction (0.25)")
    ms.add_argument("--aks-scope", default=d.aks_scope, help="AKS per 'layer' or per 'head'")
    ms.add_argument("--compress-threshold", type=_threshold_arg, default=d.compress_threshold,
                    help="drop patches whose cosine to the last stored one exceeds this; 'off' to store all")
    ms.add_argument("--compress-floor", type=_count_or_fraction_arg, default=d.compress_floor,
                    help="tokens always stored per block: a count or a fraction")
    ms.add_argument("--fusion-c", type=float, default=d.fusion_c, help="rank fusion constant c")
    ms.add_argument("--fusion-weights", type=_weights_arg, default=d.fusion_weights,
                    help="rank fusion weights 'internal,external'")
    hm = parser.add_argument_group("hermes policy")
    hm.add_argument("--budget", type=int, default=None, help="visual tokens kept per layer (default 6000)")
    hm.add_argument("--chunk-frames", type=int, default=None, help="frames between two compressions (default 16)")
    hm.add_argument("--hermes-positions", default=None, help="'lazy' (default) or 'eager' position compaction")


def stream_options(args: argparse.Namespace) -> dict:
    """The memory settings parsed by `add_stream_arguments`, as keyword arguments of `Engine.stream`."""
    return {**{name: getattr(args, name) for name in STREAM_FLAGS}, **policy_options(args)}


def policy_options(args: argparse.Namespace) -> dict:
    """The settings parsed by `add_policy_arguments`, as keyword arguments of `Engine.stream`."""
    opts = {name: getattr(args, name) for name in POLICY_FLAGS}
    hermes = {field: getattr(args, flag) for flag, field in HERMES_FLAGS.items() if getattr(args, flag) is not None}
    if hermes:
        opts["hermes"] = hermes
    return opts
