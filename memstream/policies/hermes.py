"""HERMES: a hierarchical KV memory with a fixed per-layer token budget (arXiv 2601.14724).

No retrieval at question time. Every layer holds the sinks plus at most `budget` visual tokens of
its own choosing (layers differ), and deep layers one running summary token of everything they
evicted. Per decoder layer:

    sinks    [1, Hkv, n_sink, d]   system prompt, always attended
    summary  [1, Hkv, 0 or 1, d]   deep layers: mean of every evicted key (re-rotated) and value
    held     [1, Hkv, n, d]        visual tokens in time order, each with its (block, cell, position)

Ingest: a block attends to sinks + summary + held (which includes the not yet compressed blocks of
the current chunk). After every `chunk_frames / 2` blocks the memory compresses: pseudo questions
("describe the current scene", "summarise the narrative", prefixed by the last question and answer
once there was one) run as forwards over the cache; their attention to each held token, mixed with
a recency prior per layer role and smoothed deep -> shallow (`hermes_layers.py`), decides the
top-`budget` tokens each layer keeps. A question is a plain prefill over the compact cache, its
keys/values dropped afterwards.

Positions: "lazy" keeps every token's original M-RoPE position and compacts only when the next
block would come within `compact_margin` of the model's `max_position_embeddings`; "eager" compacts
after every compression. Compacting puts each layer's held blocks in consecutive temporal slots
(slot j at t = video start + floor(j * interval)) by re-rotating their keys, exactly; the next block
takes the slot after the fullest layer's last one. The summary token sits at the video start
(t = h = w = video start) and never moves.

Pseudo-question attention: the mean over heads and over the pseudo question's own tokens (not the
conversation prefix) of their softmax attention, computed from the captured position-free queries
rotated to their positions, against every key the layer attends to (GQA: each query head on its KV
head). Every layer keeps the same number of tokens (min(budget, held)); which ones differ per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..backbones import Backbone
from ..checks import is_int, is_number
from ..errors import ConfigError
from ..positions import block_max_position, block_t_offset
from ..trace import RetrievalTrace
from . import hermes_layers as hl
from .base import BlockInfo, IngestCache, Memory, PolicyConfig, need
from .hermes_layers import LayerMemory


@dataclass(frozen=True)
class HermesConfig(PolicyConfig):
    """HERMES settings (every field also a flat `Engine.stream` option and a CLI flag)."""

    budget: int = 6000  # visual tokens each layer keeps after a compression (sinks and summary not counted)
    chunk_frames: int = 16  # frames between two compressions (even: a block is 2 frames)
    shallow_ratio: float = 0.1  # first ceil(ratio * L) layers are "shallow" (sensory memory)
    deep_ratio: float = 0.3  # last ceil(ratio * L) layers are "deep" (long-term memory)
    shallow_alpha: float = 1.0  # recency weight alpha in shallow layers (1 = keep the newest tokens)
    shallow_kappa: float = 20.0  # recency decay kappa in shallow layers
    middle_alpha: tuple[float, float] = (0.75, 0.15)  # alpha at the middle band's first / last layer (0.75 - 0.6p)
    middle_kappa: tuple[float, float] = (20.0, 8.0)  # kappa at the middle band's first / last layer (20 - 12p)
    deep_alpha: float = 0.0  # recency weight in deep layers (0 = attention only)
    deep_kappa: float = 8.0  # recency decay in deep layers (unused while deep_alpha is 0)
    shallow_gamma: float = 0.1  # smoothing weight of the next deeper layer's score, shallow layers
    middle_gamma: float = 0.3  # smoothing weight of the next deeper layer's score, middle layers
    deep_gamma: float = 0.4  # smoothing weight of the next deeper layer's score, deep layers (not the last)
    summary: bool = True  # deep layers fold evicted tokens into one mean summary token
    positions: str = "lazy"  # "lazy": compact only near max_position_embeddings; "eager": after every compression
    compact_margin: int = 8192  # lazy: positions kept free below max_position_embeddings for question and answer
    pseudo_questions: tuple[str, ...] = (  # query-agnostic prompts whose attention scores the tokens
        "Describe the current scene in detail.",
        "Summarize the narrative of the video so far.",
    )

    def validate(self) -> None:
        def unit(x: object) -> bool:
            return is_number(x) and 0.0 <= x <= 1.0

        def rate(x: object) -> bool:
            return is_number(x) and math.isfinite(x) and x >= 0

        def pair(x: object, ok) -> bool:
            return isinstance(x, tuple | list) and len(x) == 2 and all(ok(v) for v in x)

        need(is_int(self.budget) and self.budget >= 1,
             f"hermes budget must be a positive number of tokens per layer, got {self.budget!r}.")
        need(is_int(self.chunk_frames) and self.chunk_frames >= 2 and self.chunk_frames % 2 == 0,
             f"hermes chunk_frames must be an even integer >= 2 (a block is 2 frames), got {self.chunk_frames!r}.")
        need(unit(self.shallow_ratio), f"hermes shallow_ratio must be in [0, 1], got {self.shallow_ratio!r}.")
        need(unit(self.deep_ratio), f"hermes deep_ratio must be in [0, 1], got {self.deep_ratio!r}.")
        need(self.shallow_ratio + self.deep_ratio <= 1.0,
             f"hermes shallow_ratio + deep_ratio must be at most 1, got {self.shallow_ratio + self.deep_ratio!r}.")
        for name in ("shallow_alpha", "deep_alpha", "shallow_gamma", "middle_gamma", "deep_gamma"):
            value = getattr(self, name)
            need(unit(value), f"hermes {name} must be a number in [0, 1], got {value!r}.")
        for name in ("shallow_kappa", "deep_kappa"):
            value = getattr(self, name)
            need(rate(value), f"hermes {name} must be a non-negative number, got {value!r}.")
        need(pair(self.middle_alpha, unit),
             f"hermes middle_alpha must be two numbers in [0, 1] (first, last middle layer), "
             f"got {self.middle_alpha!r}.")
        need(pair(self.middle_kappa, rate),
             f"hermes middle_kappa must be two non-negative numbers (first, last middle layer), "
             f"got {self.middle_kappa!r}.")
        need(isinstance(self.summary, bool), f"hermes summary must be True or False, got {self.summary!r}.")
        need(self.positions in ("lazy", "eager"),
             f"hermes positions must be 'lazy' or 'eager', got {self.positions!r}.")
        need(is_int(self.compact_margin) and self.compact_margin >= 0,
             f"hermes compact_margin must be a non-negative number of positions, got {self.compact_margin!r}.")
        qs = self.pseudo_questions
        need(isinstance(qs, tuple | list) and len(qs) > 0 and all(isinstance(q, str) and q.strip() for q in qs),
             "hermes pseudo_questions must be a non-empty list of non-empty texts.")
        object.__setattr__(self, "middle_alpha", (float(self.middle_alpha[0]), float(self.middle_alpha[1])))
        object.__setattr__(self, "middle_kappa", (float(self.middle_kappa[0]), float(self.middle_kappa[1])))
        object.__setattr__(self, "pseudo_questions", tuple(qs))


class HermesMemory(Memory):
    """Sinks + per-layer budgeted tokens (+ deep summaries); see the module docstring."""

    def __init__(self, backbone: Backbone, config: HermesConfig, *, fps: float, expert=None):
        super().__init__(backbone, config, fps=fps, expert=None)  # no external expert
        spec = self.spec
        self.roles = hl.layer_roles(config, spec.n_layers)
        self.max_positions = spec.max_positions
        if config.compact_margin >= self.max_positions:
            raise ConfigError(f"hermes compact_margin ({config.compact_margin}) must be below the model's "
                              f"{self.max_positions} positions.")
        empty = torch.empty(1, spec.n_kv_heads, 0, spec.head_dim, device=self.device, dtype=backbone.dtype)
        none = torch.empty(0, dtype=torch.long)
        self.layers = [LayerMemory(empty, empty, none, none, torch.empty(3, 0, dtype=torch.long))
                       for _ in range(spec.n_layers)]
        self.chunk_blocks = config.chunk_frames // spec.frames_per_block
        self.since_compress = 0  # blocks ingested since the last compression
        self.compressions = 0
        self.compactions = 0
        self.last_exchange: tuple[str, str] | None = None  # (question, answer) prefixing the pseudo questions
        self._prompts_cache: list[tuple[list[int], slice]] | None = None

    # ---- sizes --------------------------------------------------------------------------------
    def device_bytes(self) -> int:
        total = self.sink_bytes()
        for s in self.layers:
            total += sum(t.numel() * t.element_size() for t in (s.keys, s.values, s.sum_k, s.sum_v) if t is not None)
        return total

    def host_bytes(self) -> int:
        return 0

    def tokens_stored(self) -> int:
        """Every layer keeps its own top-`budget` tokens: the fullest layer's count (summary excluded)."""
        return max(s.n for s in self.layers)

    def mean_tokens_held(self) -> float:
        return sum(s.n for s in self.layers) / len(self.layers)

    def window_tokens(self) -> int:
        """Tokens of the blocks waiting for the next compression (part of the held counts)."""
        n = len(self.blocks)
        return sum(b.n_tokens for b in self.blocks[n - self.since_compress:]) if self.since_compress else 0

    def stats(self) -> dict:
        """The base sizes (tokens_stored = the fullest layer; compression_ratio = tokens_raw / mean held per
        layer; window_tokens = tokens waiting for the next compression) plus tokens_per_layer, each layer's
        summary token (0 or 1), the budget and the counts of compressions and compactions."""
        return {
            **super().stats(),
            "tokens_per_layer": [s.n for s in self.layers],
            "summary_tokens": [int(s.count > 0) for s in self.layers],
            "budget": self.cfg.budget,
            "compressions": self.compressions,
            "compactions": self.compactions,
        }

    # ---- ingestion ----------------------------------------------------------------------------
    def context(self, layer: int, state: LayerMemory) -> tuple[torch.Tensor, torch.Tensor]:
        """What `layer` attends to besides new tokens: sinks + summary + held, [1, Hkv, S, d] each."""
        parts = [self.sinks[layer], state.summary(), (state.keys, state.values)]
        parts = [p for p in parts if p is not None]
        return torch.cat([p[0] for p in parts], -2), torch.cat([p[1] for p in parts], -2)

    def ingest_block(self, tokens: torch.Tensor, times: tuple[float, ...], grid: tuple[int, int],
                     frame_embeds: torch.Tensor | None = None, token_index: torch.Tensor | None = None) -> BlockInfo:
        """Append one block (tokens [n, hidden]) to every layer; compress when a chunk is complete.

        All-or-nothing: the next state of every layer is built aside (ingest forward, pseudo-question
        forwards, selection, compaction) and replaces the current one only when all of it succeeded.
        `frame_embeds` is ignored (no external expert).
        """
        gh, gw = grid
        tracker = self.positions
        saved = (tracker.video_start, tracker.next_text, tracker.blocks)
        try:
            layers = self.layers
            compacted = 0
            if self._near_position_limit(gh, gw):
                layers, compacted = self._compact(layers, grid), 1
            pos, t_off = tracker.block(gh, gw)  # [3, gh*gw]; tracker.blocks is the next temporal slot
            cells = torch.arange(gh * gw) if token_index is None else token_index.long().cpu()
            pos = pos[:, cells]
            cache = IngestCache(self.spec.n_layers, lambda layer: self.context(layer, layers[layer]))
            self.run_forward(cache, tokens, pos)
            index = len(self.blocks)
            layers = [s.append(k, v, index, cells, pos) for s, (k, v) in zip(layers, cache.new)]
            chunk_done = self.since_compress + 1 >= self.chunk_blocks
            if chunk_done:
                layers = self._compress(layers)
                if self.cfg.positions == "eager":
                    layers, compacted = self._compact(layers, grid), compacted + 1
        except BaseException:
            tracker.video_start, tracker.next_text, tracker.blocks = saved
            raise
        self.layers = layers
        info = BlockInfo(index, tuple(times), tokens.shape[0], t_off, grid, token_index)
        self.blocks.append(info)
        self.since_compress = 0 if chunk_done else self.since_compress + 1
        self.compressions += int(chunk_done)
        self.compactions += compacted
        return info

    def _compress(self, layers: list[LayerMemory]) -> list[LayerMemory]:
        """Keep each layer's top-`budget` tokens; deep layers fold the rest into their summary."""
        budget = self.cfg.budget
        if all(s.n <= budget for s in layers):
            return layers
        attn = self._pseudo_attention(layers)
        scores = [hl.combine(a, s.block, role) for a, s, role in zip(attn, layers, self.roles)]
        ids = [hl.token_ids(s.block, s.cell) for s in layers]
        scores = hl.smooth(scores, ids, [r.gamma for r in self.roles])
        out = []
        for state, score, role in zip(layers, scores, self.roles):
            keep = hl.select_top(score, budget)
            nxt = state.subset(keep)
            if role.name == "deep" and self.cfg.summary:
                dropped = torch.ones(state.n, dtype=torch.bool)
                dropped[keep] = False
                nxt = self._fold(nxt, state.subset(dropped.nonzero().flatten()))
            out.append(nxt)
        return out

    def _fold(self, state: LayerMemory, evicted: LayerMemory) -> LayerMemory:
        """Add evicted tokens to the running summary: keys re-rotated to the video start first, so
        every folded key has the same position and their mean is the key of one token there."""
        if evicted.n == 0:
            return state
        anchor = self.positions.video_start
        keys = self.bb.rotate_keys(evicted.keys, anchor - evicted.pos)  # [1, Hkv, m, d] at (s, s, s)
        return state.fold(keys, evicted.values)

    def _pseudo_attention(self, layers: list[LayerMemory]) -> list[torch.Tensor]:
        """Mean attention (heads, query tokens, pseudo questions) each held token gets: L x [n_l] (CPU)."""
        start = self.positions.next_text
        total = [torch.zeros(s.n) for s in layers]
        prompts = self._pseudo_prompts()
        for ids, rows in prompts:
            cache = HermesReadCache(self, layers, start, rows)
            self.bb.decode(self.bb.embed(ids), self.positions.text_at(start, len(ids)), cache, logits=False)
            for layer, mass in enumerate(cache.held_mass()):
                total[layer] += mass
        return [t / len(prompts) for t in total]

    def _pseudo_prompts(self) -> list[tuple[list[int], slice]]:
        """Token ids of each pseudo question laid out as a question after the video (prefixed by the
        last exchange when there was one), with the slice of the pseudo question's own tokens."""
        if self._prompts_cache is None:
            tok, chat = self.bb.tokenize, self.bb.chat
            head = chat.after_video
            if self.last_exchange is not None:
                q, a = self.last_exchange
                head += f"{q}{chat.assistant_turn}{a}{chat.next_user_turn}"
            head_ids, tail_ids = tok(head), tok(chat.assistant_turn)
            self._prompts_cache = []
            for text in self.cfg.pseudo_questions:
                body = tok(text)
                self._prompts_cache.append((head_ids + body + tail_ids,
                                            slice(len(head_ids), len(head_ids) + len(body))))
        return self._prompts_cache

    # ---- positions ----------------------------------------------------------------------------
    def _near_position_limit(self, gh: int, gw: int) -> bool:
        """Lazy rule: would the next block's largest position come within compact_margin of the model's limit?"""
        tracker = self.positions
        if tracker.video_start is None:
            return False
        t_off = block_t_offset(tracker.blocks, tracker.interval)
        return block_max_position(tracker.video_start, t_off, gh, gw) >= self.max_positions - self.cfg.compact_margin

    def _compact(self, layers: list[LayerMemory], grid: tuple[int, int]) -> list[LayerMemory]:
        """Put each layer's held blocks in temporal slots 0, 1, ... (time order), re-rotating their
        keys by the exact position delta; the next block and the next text follow the fullest layer.
        Updates the position tracker (callers restore it on failure)."""
        tracker = self.positions
        start, interval = tracker.video_start, tracker.interval
        out, slots = [], 0
        for state in layers:
            blocks, slot = torch.unique(state.block, return_inverse=True)  # slot: [n], 0-based, time order
            slots = max(slots, blocks.numel())
            new_t = torch.tensor([start + block_t_offset(j, interval) for j in range(blocks.numel())],
                                 dtype=torch.long)[slot] if state.n else state.pos[0]
            delta = torch.zeros_like(state.pos)
            delta[0] = new_t - state.pos[0]
            if bool(delta.any()):
                state = state.moved(self.bb.rotate_keys(state.keys, delta), state.pos + delta)
            out.append(state)
        gh, gw = grid
        tracker.blocks = slots
        tracker.next_text = max(self.n_sink, block_max_position(start, block_t_offset(slots - 1, interval), gh, gw) + 1)
        if self._near_position_limit(gh, gw):
            raise ConfigError(f"The hermes budget ({self.cfg.budget} tokens) spans more positions than the model's "
                              f"{self.max_positions} allow with compact_margin {self.cfg.compact_margin}; "
                              f"lower one of them.")
        return out

    # ---- questions ----------------------------------------------------------------------------
    def question_start(self) -> int:
        return self.positions.next_text

    def question_cache(self, query_slice: slice, query_text: str = "") -> HermesReadCache:
        """A plain prefill + decoding over sinks + summary + held tokens; the question's tokens
        (`query_slice`) record their attention per block for the trace."""
        return HermesReadCache(self, self.layers, self.question_start(), query_slice)

    def after_answer(self, question: str, answer: str) -> None:
        """Later pseudo questions are prefixed by this exchange."""
        self.last_exchange = (question, answer)
        self._prompts_cache = None


class HermesReadCache:
    """A forward that reads the memory without changing it (pseudo questions and real questions).

    The prefill attends to sinks + summary + held; later decoding steps grow a private tail that
    is dropped with the cache. The prefill also keeps what it takes to know how much the tokens
    `rows` (a slice of the prompt) attend to each cached key: their position-free queries (capture
    hook "q", later rotated to their positions `start + i`) and the prefill's keys. The softmax is
    computed only when asked (`held_mass`, `trace`), so a question's first token does not wait for it.
    """

    def __init__(self, mem: HermesMemory, layers: list[LayerMemory], start: int, rows: slice):
        L = mem.spec.n_layers
        self.mem = mem
        self.layers = layers
        self.start = start
        self.rows = rows
        self.query: list[torch.Tensor | None] = [None] * L  # per layer [Sq, Hq, d] position-free
        self.prefill_keys: list[torch.Tensor | None] = [None] * L  # per layer [1, Hkv, S_prompt, d] post-RoPE
        self.context: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * L
        self.tail: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * L

    def capture(self, kind: str, layer: int, x: torch.Tensor) -> None:
        if kind == "q" and self.context[layer] is None:  # prefill only
            self.query[layer] = x[self.rows]  # [Sq, Hq, d]

    def update(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.context[layer] is None:  # prefill
            self.context[layer] = self.mem.context(layer, self.layers[layer])
            self.prefill_keys[layer] = k
            self.tail[layer] = (k, v)
        else:
            tk, tv = self.tail[layer]
            self.tail[layer] = (torch.cat([tk, k], -2), torch.cat([tv, v], -2))
        (ck, cv), (tk, tv) = self.context[layer], self.tail[layer]
        return torch.cat([ck, tk], -2), torch.cat([cv, tv], -2)

    def context_mass(self, layer: int) -> torch.Tensor | None:
        """Mean attention of the recorded tokens to each context key of `layer`: [K_ctx] (CPU), or None."""
        q, new = self.query[layer], self.prefill_keys[layer]
        if q is None or new is None or q.shape[0] == 0:
            return None
        n_new = new.shape[-2]
        ctx = self.context[layer][0]
        rows = torch.arange(n_new)[self.rows]  # [Sq] index among the prompt's tokens
        where = self.mem.positions.text_at(self.start, n_new)[:, rows]  # [P, Sq]
        q_rot = self.mem.bb.rotate_keys(q.transpose(0, 1), where)  # [Hq, Sq, d]
        mass = hl.attention_mass(q_rot, ctx[0], new[0], rows, self.mem.spec.head_dim ** -0.5)  # [K_ctx + S]
        return mass[: ctx.shape[-2]].cpu()

    def held_mass(self) -> list[torch.Tensor]:
        """Per layer [n]: the recorded attention on each held visual token (zeros if none recorded)."""
        out = []
        for layer, state in enumerate(self.layers):
            mass = self.context_mass(layer)
            out.append(torch.zeros(state.n) if mass is None else mass[mass.numel() - state.n:])
        return out

    def trace(self) -> RetrievalTrace:
        """internal[l, b]: the question's attention mass on block b's tokens held in layer l (0 when
        it holds none); selected[l]: blocks layer l holds a token of; kept[l, b]: how many."""
        n = len(self.mem.blocks)
        times = torch.tensor([b.start_s for b in self.mem.blocks])
        internal, kept, selected = [], [], []
        for state, mass in zip(self.layers, self.held_mass()):
            internal.append(torch.zeros(n).index_add_(0, state.block, mass.float()))
            count = torch.bincount(state.block, minlength=n)
            kept.append(count)
            selected.append(count.nonzero().flatten())
        return RetrievalTrace.build(times, torch.stack(internal), selected, policy=self.mem.policy,
                                    kept=torch.stack(kept))
