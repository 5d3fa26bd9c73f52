"""HERMES: a hierarchical KV memory with a fixed per-layer token budget (arXiv 2601.14724).

No retrieval at question time. Every layer holds the sinks plus at most `budget` tokens of its own
choosing (layers differ). Per decoder layer:

    sinks    [1, Hkv, n_sink, d]   system prompt, always attended
    running  [1, Hkv, 0 or 1, d]   summary "running" only: mean of every key and value a deep layer evicted
    held     [1, Hkv, n, d]        visual tokens in cache order, each with its (block, cell, position);
                                   summary "round": also the deep layers' per-round summary tokens

Defaults follow the authors' release (read as github azaj01/HERMES: `inference/qwenvl_hermes.py`,
`video_qa/hermes_vqa.py`); every place where we used to differ is an option, listed with the reasons in
docs/fidelity.md. Ingest: a block attends to sinks + held (which includes the not yet compressed blocks
of the current chunk). After every `chunk_frames / 2` blocks, when layer 0 holds more than `budget`
tokens counting the sinks (the release's test), the memory compresses:

1. Pseudo queries score every held token. `pseudo_queries` "roles": shallow layers take the attention of
   the released *local* prompt, deep layers of the *global* prompt, middle layers of the *mixed* one
   (local + "; " + global), each the bare text right after the video, averaged over all its tokens and
   over heads; after a turn both prompts are prefixed by the last question and answer (a bare option
   letter mapped to its option's text). `pseudo_forward` "manual" reproduces the release's own
   computation under sdpa / flash attention: every layer's queries and keys come from the token
   embeddings (the hidden state is never advanced) and the prompt's tokens see each other without a
   causal mask; "model" is a real forward.
2. Scores mix attention with a recency prior per layer role and are smoothed deep -> shallow
   (`hermes_layers.py`); each layer keeps its top tokens: `budget`, or in deep layers with
   summary "round" `budget - 1` plus one new summary token, the mean of that round's evicted tokens
   (keys re-rotated exactly to it), at the newest position (max kept position + 1, all three M-RoPE
   components). Earlier summaries are held tokens like any other: scored, kept or folded again.

A question is a plain prefill over the compact cache, its keys/values dropped afterwards.

Positions: "lazy" keeps every token's position and compacts only when the next block would come within
`compact_margin` of the model's `max_position_embeddings`; "eager" compacts at every compression (before
the round's summaries are placed, as released). `compaction` "ranks" (released) replaces each position
component of the held tokens by its rank among that component's values, from the video start; "slots"
moves held blocks to consecutive temporal slots (a summary moves with the block it follows). Keys are
re-rotated by the exact position delta; the next block takes the first temporal slot after every held
token.

Pseudo-query attention is computed from the captured position-free queries rotated to their positions,
against every key the layer attends to (GQA: each query head on its KV head).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from ..backbones import Backbone
from ..checks import is_int, is_number
from ..errors import ConfigError
from . import hermes_layers as hl
from .base import BlockInfo, IngestCache, Memory, PolicyConfig, need
from .hermes_layers import LayerMemory
from .hermes_queries import ROLE_PROMPT, HermesReadCache, layers_fed_embeddings, role_prompts


@dataclass(frozen=True)
class HermesConfig(PolicyConfig):
    """HERMES settings (every field also a flat `Engine.stream` option and a CLI flag)."""

    budget: int = 6000  # tokens each layer keeps per compression (sinks excluded; round summaries included)
    chunk_frames: int = 16  # frames between two compressions (even: a block is 2 frames)
    role_rounding: str = "int"  # layer roles: 'int' l < int(r*L) as released, or 'ceil' (first/last ceil(r*L))
    shallow_ratio: float = 0.1  # fraction of layers that are "shallow" (sensory memory), from the first
    deep_ratio: float = 0.3  # fraction of layers that are "deep" (long-term memory), from the last
    shallow_alpha: float = 1.0  # recency weight alpha in shallow layers (1 = keep the newest tokens)
    shallow_kappa: float = 20.0  # recency decay kappa in shallow layers
    middle_alpha: tuple[float, float] = (0.75, 0.15)  # alpha at relative middle depth 0 / 1 (0.75 - 0.6p)
    middle_kappa: tuple[float, float] = (20.0, 8.0)  # kappa at relative middle depth 0 / 1 (20 - 12p)
    deep_alpha: float = 0.0  # recency weight in deep layers (0 = attention only)
    deep_kappa: float = 0.0  # recency decay in deep layers (unused while deep_alpha is 0)
    shallow_gamma: float = 0.1  # smoothing weight of the next deeper layer's score, shallow layers
    middle_gamma: float = 0.3  # smoothing weight of the next deeper layer's score, middle layers
    deep_gamma: float = 0.4  # smoothing weight of the next deeper layer's score, deep layers (not the last)
    recency: str = "index"  # age for the recency prior: 'index' (cache order, released) or 'block'
    pseudo_queries: str = "roles"  # 'roles': local/mixed/global prompt by layer role (released); 'averaged'
    pseudo_forward: str = "manual"  # 'manual': queries from token embeddings, as released; 'model': real forward
    summary: str = "round"  # deep layers: 'round' (newest position, released), 'running' (video start), 'off'
    smoothing: str = "index"  # cross-layer smoothing pairs tokens by 'index' (released) or 'identity'
    compaction: str = "ranks"  # re-indexing: 'ranks' per position component (released) or 'slots' (temporal)
    positions: str = "lazy"  # "lazy": compact only near max_position_embeddings; "eager": at every compression
    compact_margin: int | None = None  # lazy: positions kept free below the model's limit; None: min(8192, limit / 4)
    pseudo_questions: tuple[str, ...] = (  # pseudo_queries 'averaged': prompts averaged in every layer
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

        def one_of(name: str, *allowed: str) -> None:
            value = getattr(self, name)
            quoted = [f"'{a}'" for a in allowed]
            listed = f"{', '.join(quoted[:-1])} or {quoted[-1]}"
            need(isinstance(value, str) and value in allowed, f"hermes {name} must be {listed}, got {value!r}.")

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
        one_of("role_rounding", "int", "ceil")
        one_of("recency", "index", "block")
        one_of("pseudo_queries", "roles", "averaged")
        one_of("pseudo_forward", "manual", "model")
        one_of("summary", "round", "running", "off")
        one_of("smoothing", "index", "identity")
        one_of("compaction", "ranks", "slots")
        one_of("positions", "lazy", "eager")
        need(self.compact_margin is None or (is_int(self.compact_margin) and self.compact_margin >= 0),
             f"hermes compact_margin must be a non-negative number of positions, got {self.compact_margin!r}.")
        qs = self.pseudo_questions
        need(isinstance(qs, tuple | list) and len(qs) > 0 and all(isinstance(q, str) and q.strip() for q in qs),
             "hermes pseudo_questions must be a non-empty list of non-empty texts.")
        object.__setattr__(self, "middle_alpha", (float(self.middle_alpha[0]), float(self.middle_alpha[1])))
        object.__setattr__(self, "middle_kappa", (float(self.middle_kappa[0]), float(self.middle_kappa[1])))
        object.__setattr__(self, "pseudo_questions", tuple(qs))


# ---- the memory -----------------------------------------------------------------------------------


class HermesMemory(Memory):
    """Sinks + per-layer budgeted tokens (+ deep summaries); see the module docstring."""

    def __init__(self, backbone: Backbone, config: HermesConfig, *, fps: float, expert=None):
        super().__init__(backbone, config, fps=fps, expert=None)  # no external expert
        spec = self.spec
        self.roles = hl.layer_roles(config, spec.n_layers)
        self.max_positions = spec.max_positions
        # 8192 leaves Qwen's 128k positions almost whole; SmolVLM2's 8192 need a smaller default
        self.compact_margin = min(8192, self.max_positions // 4) if config.compact_margin is None \
            else config.compact_margin
        if self.compact_margin >= self.max_positions:
            raise ConfigError(f"hermes compact_margin ({self.compact_margin}) must be below the model's "
                              f"{self.max_positions} positions.")
        self.decoder = None
        if config.pseudo_forward == "manual":
            self.decoder = backbone.decoder_layers
            if self.decoder is None or len(self.decoder) != spec.n_layers:
                raise ConfigError("hermes pseudo_forward 'manual' needs the model's decoder layers, which this "
                                  "backbone does not expose; use pseudo_forward 'model'.")
        empty = torch.empty(1, spec.n_kv_heads, 0, spec.head_dim, device=self.device, dtype=backbone.dtype)
        none = torch.empty(0, dtype=torch.long)
        no_pos = torch.empty(self.positions.components, 0, dtype=torch.long)  # [P, 0]
        self.layers = [LayerMemory(empty, empty, none, none, no_pos)
                       for _ in range(spec.n_layers)]
        self.chunk_blocks = config.chunk_frames // spec.frames_per_block
        self.since_compress = 0  # blocks ingested since the last compression
        self.compressions = 0
        self.compactions = 0
        self.last_exchange: tuple[str, str] | None = None  # (question, answer) prefixing the pseudo queries
        self._prompts_cache: list[tuple[list[int], slice]] | None = None
        self._role_prompts_cache: dict[str, list[int]] | None = None

    # ---- sizes --------------------------------------------------------------------------------
    def device_bytes(self) -> int:
        total = self.sink_bytes()
        for s in self.layers:
            total += sum(t.numel() * t.element_size() for t in (s.keys, s.values, s.sum_k, s.sum_v) if t is not None)
        return total

    def host_bytes(self) -> int:
        return 0

    def tokens_stored(self) -> int:
        """Every layer keeps its own top-`budget` tokens: the fullest layer's count (per-round summary
        tokens included, a running summary not)."""
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
        role ("shallow", "middle" or "deep"), its summary tokens (per-round ones held, or 1 for a running
        summary), the budget and the counts of compressions and compactions."""
        return {
            **super().stats(),
            "tokens_per_layer": [s.n for s in self.layers],
            "layer_roles": [r.name for r in self.roles],
            "summary_tokens": [s.n_summaries + int(s.count > 0) for s in self.layers],
            "budget": self.cfg.budget,
            "compressions": self.compressions,
            "compactions": self.compactions,
        }

    # ---- ingestion ----------------------------------------------------------------------------
    def context(self, layer: int, state: LayerMemory) -> tuple[torch.Tensor, torch.Tensor]:
        """What `layer` attends to besides new tokens: sinks + running summary + held, [1, Hkv, S, d] each."""
        parts = [self.sinks[layer], state.summary(), (state.keys, state.values)]
        parts = [p for p in parts if p is not None]
        return torch.cat([p[0] for p in parts], -2), torch.cat([p[1] for p in parts], -2)

    def ingest_block(self, tokens: torch.Tensor, times: tuple[float, ...], grid: tuple[int, int],
                     frame_embeds: torch.Tensor | None = None, token_index: torch.Tensor | None = None) -> BlockInfo:
        """Append one block (tokens [n, hidden * (1 + D)]) to every layer; compress when a chunk is complete.

        All-or-nothing: the next state of every layer is built aside (ingest forward, pseudo-query
        forwards, selection, compaction) and replaces the current one only when all of it succeeded.
        `frame_embeds` is ignored (no external expert).
        """
        gh, gw = grid
        tracker = self.positions
        saved = tracker.save()
        try:
            layers = self.layers
            compacted = 0
            if self._near_position_limit(gh, gw):
                layers, compacted = self._compact(layers), 1
                self._resume(layers, grid)
            block = self.prepare_block(tokens, times, grid, token_index)  # rows [S]: text + visual tokens
            cache = IngestCache(self.spec.n_layers, lambda layer: self.context(layer, layers[layer]))
            self.run_forward(cache, block.embeds, block.positions)
            index = len(self.blocks)
            layers = [s.append(k, v, index, block.cells, block.positions) for s, (k, v) in zip(layers, cache.new)]
            chunk_done = self.since_compress + 1 >= self.chunk_blocks
            if chunk_done:
                layers, compressed = self._compress(layers, index, grid)
                compacted += int(compressed and self.cfg.positions == "eager")
        except BaseException:
            tracker.restore(saved)
            raise
        self.layers = layers
        info = block.info(index, times, grid, token_index)
        self.blocks.append(info)
        self.since_compress = 0 if chunk_done else self.since_compress + 1
        self.compressions += int(chunk_done)
        self.compactions += compacted
        return info

    def _compress(self, layers: list[LayerMemory], block: int,
                  grid: tuple[int, int]) -> tuple[list[LayerMemory], bool]:
        """Keep each layer's top tokens, as released; returns (layers, whether anything was compressed).

        Nothing happens unless layer 0 holds more than `budget` tokens counting the sinks (the release's
        test). Deep layers fold what they evict: summary "round" keeps `budget - 1` tokens and adds one
        token, the mean of this round's evicted ones, after the newest kept position (`block`: the block
        that completed the chunk, which the summary follows in cache order); "running" adds them to the
        mean at the video start. With positions "eager" the kept tokens are compacted before the summary
        is placed, as released.
        """
        cfg = self.cfg
        if self.n_sink + layers[0].n <= cfg.budget:
            return layers, False
        attn = self._pseudo_attention(layers)
        scores = [hl.combine(a, s.block, role, by=cfg.recency) for a, s, role in zip(attn, layers, self.roles)]
        gammas = [r.gamma for r in self.roles]
        if cfg.smoothing == "index":
            scores = hl.smooth_by_index(scores, gammas)
        else:
            scores = hl.smooth(scores, [hl.token_ids(s.block, s.cell) for s in layers], gammas)
        kept: list[LayerMemory] = []
        evicted: list[LayerMemory | None] = []
        for state, score, role in zip(layers, scores, self.roles):
            folds = role.name == "deep" and cfg.summary != "off"
            keep = hl.select_top(score, cfg.budget - 1 if folds and cfg.summary == "round" else cfg.budget)
            kept.append(state.subset(keep))
            dropped = torch.ones(state.n, dtype=torch.bool)
            dropped[keep] = False
            evicted.append(state.subset(dropped.nonzero().flatten()) if folds and bool(dropped.any()) else None)
        eager = cfg.positions == "eager"
        if eager:
            kept = self._compact(kept)
        out = [s if gone is None else self._summarise(s, gone, block) for s, gone in zip(kept, evicted)]
        if eager:
            self._resume(out, grid)
        else:  # a question must start after the newest summary
            top = max((int(s.pos.max()) for s in out if s.n), default=-1)
            self.positions.next_text = max(self.positions.next_text, top + 1)
        return out, True

    def _summarise(self, state: LayerMemory, evicted: LayerMemory, block: int) -> LayerMemory:
        """Fold a deep layer's evicted tokens into its summary (keys re-rotated exactly first).

        "round": one new held token at (m, m, m), m = max kept position + 1 (the last sink position + 1
        when nothing is kept), key and value the mean over the evicted tokens. "running": added to the
        running mean at the video start (t = h = w = video start), which never moves."""
        if self.cfg.summary == "running":
            anchor = self.positions.video_start
            keys = self.bb.rotate_keys(evicted.keys, anchor - evicted.pos)  # [1, Hkv, m, d] at (s, s, s)
            return state.fold(keys, evicted.values)
        newest = int(state.pos.max()) if state.n else self.positions.video_start - 1
        where = torch.full((state.pos.shape[0], 1), newest + 1, dtype=torch.long)  # [P, 1]
        keys = self.bb.rotate_keys(evicted.keys, where - evicted.pos)  # [1, Hkv, m, d] all at (m, m, m)
        key = keys.double().mean(-2, keepdim=True).to(keys.dtype)  # [1, Hkv, 1, d]
        value = evicted.values.double().mean(-2, keepdim=True).to(evicted.values.dtype)
        return state.append_summary(key, value, block, where)

    # ---- pseudo queries -----------------------------------------------------------------------
    def _pseudo_attention(self, layers: list[LayerMemory]) -> list[torch.Tensor]:
        """The pseudo-query attention each held token gets, per layer: L x [n_l] (CPU).

        "roles": each layer takes its role's prompt (local / mixed / global; prompts no layer uses are
        not run). "averaged": every pseudo question's attention, averaged, in every layer."""
        if self.cfg.pseudo_queries == "averaged":
            prompts = self._pseudo_prompts()
            total = [torch.zeros(s.n) for s in layers]
            for ids, rows in prompts:
                for layer, mass in enumerate(self._prompt_attention(layers, ids, rows)):
                    total[layer] += mass
            return [t / len(prompts) for t in total]
        out: list[torch.Tensor | None] = [None] * len(layers)
        for name, ids in self._role_prompts().items():
            users = [layer for layer, role in enumerate(self.roles) if ROLE_PROMPT[role.name] == name]
            if users:
                mass = self._prompt_attention(layers, ids, slice(0, len(ids)))  # all the prompt's tokens
                for layer in users:
                    out[layer] = mass[layer]
        return out

    def _prompt_attention(self, layers: list[LayerMemory], ids: list[int], rows: slice) -> list[torch.Tensor]:
        """Mean attention (heads, the prompt tokens `rows`) of one pseudo prompt `ids` placed where a
        question would start, to each held token: L x [n_l] (CPU)."""
        start = self.positions.next_text
        manual = self.cfg.pseudo_forward == "manual"
        cache = HermesReadCache(self, layers, start, rows, causal=not manual)
        with layers_fed_embeddings(self.decoder) if manual else contextlib.nullcontext():
            self.bb.decode(self.bb.embed(ids), self.positions.text_at(start, len(ids)), cache, logits=False)
        return cache.held_mass()

    def _role_prompts(self) -> dict[str, list[int]]:
        """Token ids of the released local / global / mixed prompts: the bare text (no chat markup), as
        the release feeds them right after the video."""
        if self._role_prompts_cache is None:
            self._role_prompts_cache = {name: self.bb.tokenize(text)
                                        for name, text in role_prompts(self.last_exchange).items()}
        return self._role_prompts_cache

    def _pseudo_prompts(self) -> list[tuple[list[int], slice]]:
        """pseudo_queries "averaged": token ids of each pseudo question laid out as a question after the
        video (prefixed by the last exchange when there was one), with the slice of its own tokens."""
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
        return tracker.next_block_max(gh, gw) >= self.max_positions - self.compact_margin

    def _compact(self, layers: list[LayerMemory]) -> list[LayerMemory]:
        """Re-index every layer's held tokens (keys re-rotated by the exact position delta).

        "ranks": each position component -> its rank among the layer's values of it, from the video start.
        "slots": held blocks -> consecutive slots in time order (the backbone's tracker lays them out,
        `PositionTracker.slot_layout`); a summary token moves with the block it follows."""
        start = self.positions.video_start
        out = []
        for state in layers:
            if state.n == 0:
                out.append(state)
                continue
            if self.cfg.compaction == "ranks":
                delta = hl.ranked_positions(state.pos, start) - state.pos
            else:
                delta = self.positions.slot_layout(state.pos, state.block, state.is_summary) - state.pos
            if bool(delta.any()):
                state = state.moved(self.bb.rotate_keys(state.keys, delta), state.pos + delta)
            out.append(state)
        return out

    def _resume(self, layers: list[LayerMemory], grid: tuple[int, int]) -> None:
        """After a compaction: the tracker continues after every held token (`PositionTracker.resume`).
        Raises ConfigError when even the compact layout leaves no room below the position limit."""
        gh, gw = grid
        held = [s.pos for s in layers if s.n]
        self.positions.resume(held, gh, gw, ranked=self.cfg.compaction == "ranks", floor=self.n_sink)
        if self._near_position_limit(gh, gw):
            raise ConfigError(f"The hermes budget ({self.cfg.budget} tokens) spans more positions than the model's "
                              f"{self.max_positions} allow with compact_margin {self.compact_margin}; "
                              f"lower one of them.")

    # ---- questions ----------------------------------------------------------------------------
    def question_start(self) -> int:
        return self.positions.next_text

    def question_cache(self, query_slice: slice, query_text: str = "") -> HermesReadCache:
        """A plain prefill + decoding over sinks + running summary + held tokens; the question's tokens
        (`query_slice`) record their attention per block for the trace."""
        return HermesReadCache(self, self.layers, self.question_start(), query_slice)

    def after_answer(self, question: str, answer: str) -> None:
        """Later pseudo queries are prefixed by this exchange."""
        self.last_exchange = (question, answer)
        self._prompts_cache = None
        self._role_prompts_cache = None
