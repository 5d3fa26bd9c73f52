"""The memory interface every policy implements, and the pieces all of them share.

A policy is a class of `Memory` (what the stream's KV cache holds and how a question reads it) and a
frozen `PolicyConfig` subclass (its own settings). `Stream` talks to a memory only through these verbs:

    ingest_sinks(ids)                     prefill the system prompt; its keys/values are the sinks
    ingest_block(tokens, times, grid, ..) append one block of visual tokens, all-or-nothing
    question_start()                      the text position a question starts at
    question_cache(query_slice, text)     a cache for one question's forward (capture, update, trace)
    after_answer(question, answer)        the exchange is over (a policy may learn from it)
    retune(config)                        question-time settings changed (Stream.set_retrieval)
    drop_expert(sentence)                 the external expert failed: rank internal-only from now on
    stats()                               sizes and counts (Stream.stats)

and reads `blocks` (one BlockInfo per block ingested) and `n_sink`. A forward over the memory runs
`backbone.decode(embeds, positions, cache)`: each decoder layer calls `cache.update(k, v, layer)` with
the new tokens' post-RoPE keys/values [1, Hkv, S, d] and attends to what it returns, and the
position-free queries/keys of each layer reach `cache.capture(kind, layer, x)` before that call.

Worked example of the block bookkeeping (Qwen2.5-VL, fps 1, a 2 x 3 grid, 20 sink tokens):

    block  frames  seconds    BlockInfo.times  token range  t_offset  temporal position t
    0      0, 1    0.0 - 2.0  (0.0, 1.0)       20..25       0         20
    1      2, 3    2.0 - 4.0  (2.0, 3.0)       26..31       4         24
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from ..backbones import Backbone
from ..errors import ConfigError
from ..trace import RetrievalTrace


@dataclass(frozen=True)
class PolicyConfig:
    """Base of every policy's settings: a frozen dataclass, validated when built.

    Subclasses add fields, each with a trailing comment: the comment is the option's help text in the
    CLI, the benchmarks and the demo (see `memstream.options`). Every field is accepted flat by
    `Engine.stream(policy=..., field=value)`.
    """

    # Fields a question reads rather than what ingestion built: `Stream.set_retrieval` changes these on a
    # stream that already holds video, without re-ingesting.
    QUESTION_TIME: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError (one sentence) for a bad value; may normalise values with `object.__setattr__`."""

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def need(ok: bool, sentence: str) -> None:
    """Raise ConfigError(sentence) unless `ok`: the one-line form of every config check."""
    if not ok:
        raise ConfigError(sentence)


@dataclass
class BlockInfo:
    """One block in the stream: `frames_per_block` sampled frames merged into gh x gw LLM tokens."""

    index: int  # position in the stream, 0-based
    times: tuple[float, ...]  # seconds of the frames it covers (a padded last block lists one)
    n_tokens: int  # LLM tokens stored for it
    t_offset: int  # temporal position offset from the video start
    grid: tuple[int, int]  # (gh, gw)
    token_index: torch.Tensor | None = None  # LongTensor [n]: grid cells of the visual tokens stored; None = all
    # (before, after): rows of the block's own text around its visual tokens (`Backbone.block_text`;
    # Qwen3-VL's timestamp and vision markers), part of n_tokens and never dropped; (0, 0) for Qwen2.5-VL
    text_rows: tuple[int, int] = (0, 0)

    @property
    def visual(self) -> slice:
        """The rows of the block's visual tokens among its n_tokens stored rows."""
        return slice(self.text_rows[0], self.n_tokens - self.text_rows[1])

    @property
    def start_s(self) -> float:
        return self.times[0]


@dataclass
class PreparedBlock:
    """One block laid out for its ingest forward: the text that frames it (`Backbone.block_text`)
    around its visual tokens, with positions reserved from the tracker."""

    embeds: torch.Tensor  # [S, width]: before-text rows, visual tokens, after-text rows (`Backbone.block_embeds`)
    positions: torch.Tensor  # LongTensor [P, S]
    cells: torch.Tensor  # LongTensor [S] (CPU): grid cell of each visual row; text rows get cells gh*gw + j
    t_offset: int  # the tracker's temporal offset of the block
    text_rows: tuple[int, int]  # (before, after) text rows

    def info(self, index: int, times: tuple[float, ...], grid: tuple[int, int],
             token_index: torch.Tensor | None) -> BlockInfo:
        return BlockInfo(index, tuple(times), self.embeds.shape[0], self.t_offset, grid, token_index, self.text_rows)


class QuestionCache(Protocol):
    """The cache of one question's forward over the memory (see the module docstring)."""

    def capture(self, kind: str, layer: int, x: torch.Tensor) -> None: ...

    def update(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def trace(self) -> RetrievalTrace:
        """What this question's forward saw, built once the answer is complete."""
        ...


class ReadCache:
    """The cache of a forward that reads the memory without changing it (a question, a pseudo question).

    Each layer's context is built on its first `update()` (the prefill) by `build_context`, which may
    use what `capture` recorded a moment earlier in the same layer; the forward's own keys/values, and
    those of later decoding steps, grow a private tail that is dropped with the cache.
    """

    def __init__(self, n_layers: int):
        self.context: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers  # [1, Hkv, S_ctx, d]
        self.tail: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers  # [1, Hkv, S_own, d]

    def prefilled(self, layer: int) -> bool:
        """Whether `layer` has built its context (captures after that belong to decoding steps)."""
        return self.context[layer] is not None

    def build_context(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What `layer` attends to besides the forward's own tokens; k/v: the prefill's [1, Hkv, S, d]."""
        raise NotImplementedError

    def update(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.context[layer] is None:  # the prefill
            self.context[layer] = self.build_context(layer, k, v)
            self.tail[layer] = (k, v)
        else:
            tk, tv = self.tail[layer]
            self.tail[layer] = (torch.cat([tk, k], -2), torch.cat([tv, v], -2))
        (ck, cv), (tk, tv) = self.context[layer], self.tail[layer]
        return torch.cat([ck, tk], -2), torch.cat([cv, tv], -2)


# layer -> (keys, values) [1, Hkv, S_ctx, d] a new token of an ingest forward attends to besides the
# forward's own tokens, or None for nothing. Keys and values may each be a list of parts ([1, Hkv, S_i, d],
# concatenated in order): the cache then joins the parts and the new tokens in one copy.
Context = Callable[[int], "tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | list[torch.Tensor]] | None"]


class IngestCache:
    """The cache of an ingest forward: attend to `context(layer)` + the new tokens, remember the new
    keys/values and position-free keys of every layer so the memory can commit them afterwards."""

    def __init__(self, n_layers: int, context: Context):
        self.context = context
        self.new: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers  # [1, Hkv, S, d] each
        self.keys_free: list[torch.Tensor | None] = [None] * n_layers  # [S, Hkv, d] pre-RoPE
        self.joined: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers  # context + new

    def capture(self, kind: str, layer: int, x: torch.Tensor) -> None:
        if kind == "k":
            self.keys_free[layer] = x

    def update(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.new[layer] = (k, v)
        ctx = self.context(layer)
        if ctx is None:
            return k, v
        ck, cv = ([c] if isinstance(c, torch.Tensor) else list(c) for c in ctx)
        joined = (torch.cat([*ck, k], dim=-2), torch.cat([*cv, v], dim=-2))  # [1, Hkv, S_ctx + S, d]
        self.joined[layer] = joined  # a memory may keep a view of it: committing then copies nothing
        return joined

    def check_complete(self) -> None:
        if any(kv is None for kv in self.new) or any(k is None for k in self.keys_free):
            raise RuntimeError("a decoder layer did not report its keys/values")


class Memory(ABC):
    """A stream's video memory under one policy. Subclasses implement the abstract verbs.

    Attributes every memory has: `bb` (the backbone), `cfg` (the policy's config), `positions` (the
    backbone's position tracker for this stream), `expert` (an external expert or None), `sinks` (per
    layer (k, v) [1, Hkv, n_sink, d]), `blocks` (BlockInfo per block) and `policy` (the registry name).
    """

    policy: str = ""  # set by the registry when it builds the memory

    def __init__(self, backbone: Backbone, config: PolicyConfig, *, fps: float, expert: Any = None):
        self.bb = backbone
        self.cfg = config
        self.spec = backbone.spec
        self.device = backbone.device
        self.positions = backbone.position_tracker(fps)
        self.expert = expert
        self.sinks: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.spec.n_layers
        self.blocks: list[BlockInfo] = []
        # why the external expert was dropped mid-stream (one sentence), or None: it never failed
        self.expert_failure: str | None = None

    # ---- the verbs ----------------------------------------------------------------------------
    def ingest_sinks(self, ids: list[int]) -> None:
        """Prefill the system prompt (token ids): its keys/values become the sinks of every layer."""
        cache = IngestCache(self.spec.n_layers, lambda layer: None)
        self.run_forward(cache, self.bb.embed(ids), self.positions.text(len(ids)))
        self.sinks = list(cache.new)

    @abstractmethod
    def ingest_block(self, tokens: torch.Tensor, times: tuple[float, ...], grid: tuple[int, int],
                     frame_embeds: torch.Tensor | None = None, token_index: torch.Tensor | None = None) -> BlockInfo:
        """Append one block: visual tokens [n, hidden * (1 + D)] at grid `grid` (gh, gw), frames at `times` (s).

        `frame_embeds` [F, D]: the external expert's embeddings of the block's frames (None without an
        expert). `token_index` LongTensor [n]: the grid cells (row*gw+col) `tokens` are, when only some
        are given (None = all gh*gw, in order). All-or-nothing: on any error the memory is unchanged.
        """

    @abstractmethod
    def question_start(self) -> int:
        """The position where a question's text starts."""

    @abstractmethod
    def question_cache(self, query_slice: slice, query_text: str = "") -> QuestionCache:
        """A cache for one question's prefill and decoding. `query_slice`: the prompt tokens whose
        queries form the retrieval query; `query_text`: their text (for an external expert). Its
        keys/values are dropped with it: asking leaves the memory as it was."""

    def after_answer(self, question: str, answer: str) -> None:  # noqa: B027 - optional, most policies ignore it
        """Called once an answer is complete (hermes conditions later compressions on it)."""

    def retune(self, config: PolicyConfig) -> None:
        """Adopt `config`, which differs from the current one only in `QUESTION_TIME` fields."""
        self.cfg = config

    def drop_expert(self, sentence: str) -> None:
        """The external expert failed while embedding frames (`sentence` says so): go on without it. A
        policy that ranks with the expert overrides this to switch to its internal ranking; the blocks
        already ingested keep their embeddings, unused from now on."""
        self.expert = None
        self.expert_failure = sentence

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def n_sink(self) -> int:
        s = self.sinks[0]
        return 0 if s is None else s[0].shape[-2]

    def kv_bytes_per_token(self) -> int:
        """Bytes one token's keys and values take over all layers: 2 * L * Hkv * d * element size."""
        spec = self.spec
        return 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * self.bb.dtype.itemsize

    def sink_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.sinks if kv is not None for t in kv)

    def stats(self) -> dict:
        """Sizes for `Stream.stats()`; policies add their own keys.

        tokens_stored: visual tokens held (with a block's own text rows, `BlockInfo.text_rows`);
        tokens_raw: tokens the blocks had before any compression (gh*gw each, plus their text rows);
        compression_ratio: tokens_raw / tokens held (1.0 = nothing dropped); tokens_per_block /
        bytes_per_block: mean per block (keys and values, all layers); sink_tokens; window_tokens;
        bytes_host / bytes_device: what the memory holds in host memory / on the device;
        expert_failure: the sentence saying the external expert failed and was dropped (None: it did not).
        """
        n = len(self.blocks)
        stored = self.tokens_stored()
        held = self.mean_tokens_held()
        raw = sum(b.grid[0] * b.grid[1] + sum(b.text_rows) for b in self.blocks)
        return {
            "tokens_stored": stored,
            "tokens_raw": raw,
            "compression_ratio": raw / held if held else None,
            "tokens_per_block": stored / n if n else None,
            "bytes_per_block": stored * self.kv_bytes_per_token() / n if n else None,
            "sink_tokens": self.n_sink,
            "window_tokens": self.window_tokens(),
            "bytes_host": self.host_bytes(),
            "bytes_device": self.device_bytes(),
            "expert_failure": self.expert_failure,
        }

    def tokens_stored(self) -> int:
        """Visual tokens the memory holds (per layer when layers differ: the fullest)."""
        return sum(b.n_tokens for b in self.blocks)

    def mean_tokens_held(self) -> float:
        """Visual tokens held, averaged over layers (the compression ratio's denominator)."""
        return self.tokens_stored()

    def window_tokens(self) -> int:
        """Tokens of recent video held in full until the policy decides about them."""
        return 0

    @abstractmethod
    def host_bytes(self) -> int:
        """Bytes the memory keeps in host memory (whatever the compute device)."""

    @abstractmethod
    def device_bytes(self) -> int:
        """Bytes the memory keeps on the compute device."""

    # ---- helpers for policies -----------------------------------------------------------------
    def run_forward(self, cache: IngestCache, embeds: torch.Tensor, positions: torch.Tensor) -> None:
        """An ingest forward (embeds [S, hidden], positions [P, S]) that every layer must complete."""
        self.bb.decode(embeds, positions, cache, logits=False)
        cache.check_complete()

    def prepare_block(self, tokens: torch.Tensor, times: tuple[float, ...], grid: tuple[int, int],
                      token_index: torch.Tensor | None = None) -> PreparedBlock:
        """Reserve the next block's positions and lay out its rows: the backbone's text for the block
        (none for Qwen2.5-VL), the visual tokens [n, width] at cells `token_index` (None = all), the text
        after them. Restore the tracker (`positions.save()` before) if the forward then fails."""
        gh, gw = grid
        before, after = self.bb.block_text(tuple(times))
        nb, na, cells = len(before), len(after), gh * gw
        pos, t_off = self.positions.block(gh, gw, nb, na)  # [P, nb + gh*gw + na]
        visual = torch.arange(cells) if token_index is None else token_index.long().cpu()
        rows = torch.cat([torch.arange(nb), nb + visual, torch.arange(nb + cells, nb + cells + na)])
        text_cells = torch.arange(cells, cells + nb + na)
        return PreparedBlock(embeds=self.bb.block_embeds(before, tokens, after), positions=pos[:, rows],
                             cells=torch.cat([text_cells[:nb], visual, text_cells[nb:]]), t_offset=t_off,
                             text_rows=(nb, na))

    def block_times(self) -> torch.Tensor:
        """Start of every block in seconds: float [N]."""
        return torch.tensor([b.start_s for b in self.blocks], dtype=torch.float32)
