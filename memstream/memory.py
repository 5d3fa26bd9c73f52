"""The video memory: the decoder's KV cache, split into sinks, a local window and a block store.

Layout per decoder layer (on the compute device unless noted):

    sinks    [1, Hkv, n_sink, d]   system-prompt tokens, always attended
    window   [1, Hkv, <=n_local, d] the most recent visual tokens (all of them under `full`)
    rep      [N, Hkv, d]           one position-free representative key per block (ReKV)
    store    N x [L, 2, Hkv, n, d] every block's keys (post-RoPE) and values, in CPU memory
                                   (pinned on CUDA hosts); not kept under `full`

Three verbs change it, each with a short-lived cache object that the decoder layers call:
`ingest_sinks()` / `ingest_block()` run a forward whose new keys/values are committed only after
all layers succeeded (a failure leaves the memory as it was), and `question_cache()` builds
per-layer contexts by retrieval inside the question's own forward; its keys/values are thrown away
with it (`after_answer()` lets a policy learn from the exchange).

Policies: `full` and `rekv` live here; the others subclass or mirror `KVMemory` in their own
modules and are built by `build_memory()` from the `POLICIES` registry. What `Stream` relies on
(the memory protocol): `blocks`, `n_sink`, `ingest_sinks`, `ingest_block`, `question_start`,
`question_cache` (an object with `capture`, `update`, `record` and `trace()`), `after_answer`
and `stats()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .backbone import Backbone
from .positions import PositionTracker, block_t_offset
from .retrieval import block_scores, select_blocks
from .store import BlockStore, RowBuffer
from .trace import RetrievalTrace

if TYPE_CHECKING:
    from .hermes import HermesConfig


@dataclass(frozen=True)
class PolicyInfo:
    """One row of the policy registry."""

    module: str  # module (in this package) holding the memory class
    cls: str  # the memory class's name
    uses_expert: bool  # ranks blocks with an external expert when the engine has one
    needs_expert: bool  # refuses to run without one
    summary: str  # one line for help texts and the demo


# name -> where its memory lives (imported on first use, so a policy's heavy code loads only when used)
POLICY_REGISTRY: dict[str, PolicyInfo] = {
    "full": PolicyInfo("memory", "KVMemory", False, False, "every block attended: the oracle, short clips only"),
    "rekv": PolicyInfo("memory", "KVMemory", False, False, "ReKV: sliding window + per-layer top-k block retrieval"),
    "memstream": PolicyInfo("memstream_memory", "MemStreamMemory", True, False,
                            "MemStream: AKS + patch compression + internal/external rank fusion"),
    "memstream-internal": PolicyInfo("memstream_memory", "MemStreamMemory", False, False,
                                     "MemStream ablation: AKS + compression, internal ranking only"),
    "external": PolicyInfo("memstream_memory", "MemStreamMemory", True, True,
                           "ablation: ReKV's dense window, blocks ranked by the external expert only"),
    "hermes": PolicyInfo("hermes", "HermesMemory", False, False,
                         "HERMES: fixed per-layer token budget, no retrieval at question time"),
}
POLICIES = tuple(POLICY_REGISTRY)
USES_EXPERT = frozenset(name for name, info in POLICY_REGISTRY.items() if info.uses_expert)
NEEDS_EXPERT = frozenset(name for name, info in POLICY_REGISTRY.items() if info.needs_expert)


@dataclass
class MemoryConfig:
    """How the memory ingests and what a question attends to (`StreamConfig.memory_config()`)."""

    policy: str = "rekv"  # a name of POLICY_REGISTRY
    n_local: int | None = 15000  # tokens of the ingest sliding window; None = unbounded (full)
    topk: int = 16  # blocks each layer retrieves for a question
    positions: str = "original"  # "original": keep stored positions; "compact": re-rotate to slots
    score: str = "dot"  # block scoring: "dot" (ReKV reference) or "cosine"
    chunk_size: int = 1  # retrieve runs of this many consecutive blocks (1 = per block)
    question_window: bool = False  # also attend to the local window at question time
    # MemStream (memstream, memstream-internal, external); see memstream_memory.py
    aks_keep: int | float = 0.25  # AKS: tokens kept per past block: a count (int) or a fraction (float in (0, 1])
    aks_scope: str = "layer"  # AKS granularity: "layer" (one choice per layer) or "head" (one per KV head)
    compress_threshold: float | None = 0.95  # cosine above which a patch is not stored again; None = off
    compress_floor: int | float = 0.05  # tokens always stored per block: a count or a fraction of the block
    fusion_c: float = 60.0  # reciprocal rank fusion constant c in w / (c + rank)
    fusion_weights: tuple[float, float] = (1.0, 1.0)  # RRF weights (internal, external)
    # HERMES; see hermes.py (None = its defaults)
    hermes: HermesConfig | None = None


def build_memory(backbone: Backbone, config: MemoryConfig, interval: float, expert: Any = None) -> KVMemory:
    """The memory object for `config.policy` (see POLICY_REGISTRY). `expert`: an external expert
    (memstream.experts.Expert) or None; policies that do not use one ignore it."""
    import importlib

    info = POLICY_REGISTRY.get(config.policy)
    if info is None:
        raise ValueError(f"unknown policy {config.policy!r}")
    cls = getattr(importlib.import_module(f".{info.module}", __package__), info.cls)
    if cls is KVMemory:
        return KVMemory(backbone, config, interval)
    return cls(backbone, config, interval, expert=expert)


@dataclass
class BlockInfo:
    """One stored block: two sampled frames merged into gh x gw LLM tokens."""

    index: int  # position in the stream, 0-based
    times: tuple[float, ...]  # seconds of the frames it covers (a padded last block repeats one)
    n_tokens: int  # LLM tokens stored for it
    t_offset: int  # temporal M-RoPE offset from the video start
    grid: tuple[int, int]  # (gh, gw)
    token_index: torch.Tensor | None = None  # LongTensor [n_tokens]: grid cells stored (row*gw+col); None = all

    @property
    def start_s(self) -> float:
        return self.times[0]


@dataclass
class QuestionRecord:
    """What one question's forward saw in every layer (filled in as the layers run)."""

    query: list[torch.Tensor | None]  # per layer [Hq, d]: mean position-free query
    scores: list[torch.Tensor | None]  # per layer [N]
    selected: list[torch.Tensor | None]  # per layer [k] block indices, time order
    extra: dict = field(default_factory=dict)


class KVMemory:
    """Sinks + window + block store for every layer, and the caches that fill and read them."""

    def __init__(self, backbone: Backbone, config: MemoryConfig, interval: float):
        if config.policy not in POLICY_REGISTRY:
            raise ValueError(f"unknown policy {config.policy!r}")
        self.bb = backbone
        self.cfg = config
        self.spec = backbone.spec
        self.device = backbone.device
        self.positions = PositionTracker(interval)
        L = self.spec.n_layers
        self.sinks: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * L
        self.window: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * L
        self.rep = [RowBuffer() for _ in range(L)]  # per layer [N, Hkv, d]
        self.blocks: list[BlockInfo] = []
        self.offload = config.policy != "full"
        self.store = BlockStore(pin=self.device.type == "cuda")

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def n_sink(self) -> int:
        s = self.sinks[0]
        return 0 if s is None else s[0].shape[-2]

    def window_tokens(self) -> int:
        w = self.window[0]
        return 0 if w is None else w[0].shape[-2]

    def device_bytes(self) -> int:
        total = 0
        for group in (self.sinks, self.window):
            for kv in group:
                if kv is not None:
                    total += sum(t.numel() * t.element_size() for t in kv)
        total += sum(r.nbytes for r in self.rep)
        return total

    def host_bytes(self) -> int:
        """Bytes of the block store (host memory, whatever the compute device)."""
        return self.store.nbytes

    def kv_bytes_per_token(self) -> int:
        """Bytes one token's keys and values take over all layers: 2 * L * Hkv * d * element size."""
        spec = self.spec
        return 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * self.bb.dtype.itemsize

    def stats(self) -> dict:
        """Sizes for `Stream.stats()`. Subclasses add their own keys.

        tokens_stored: visual tokens held; tokens_raw: tokens the blocks had before any compression
        (gh*gw each); compression_ratio: tokens_raw / tokens_stored (1.0 = nothing dropped);
        tokens_per_block / bytes_per_block: mean per stored block (bytes of keys and values, all
        layers); sink_tokens, window_tokens; bytes_host / bytes_device: the block store / the
        sinks, window and representative keys.
        """
        n = len(self.blocks)
        stored = sum(b.n_tokens for b in self.blocks)
        raw = sum(b.grid[0] * b.grid[1] for b in self.blocks)
        return {
            "tokens_stored": stored,
            "tokens_raw": raw,
            "compression_ratio": raw / stored if stored else None,
            "tokens_per_block": stored / n if n else None,
            "bytes_per_block": stored * self.kv_bytes_per_token() / n if n else None,
            "sink_tokens": self.n_sink,
            "window_tokens": self.window_tokens(),
            "bytes_host": self.host_bytes(),
            "bytes_device": self.device_bytes(),
        }

    # ---- ingestion ----------------------------------------------------------------------------
    def ingest_sinks(self, ids: list[int]) -> None:
        """Prefill the system prompt: its keys/values become the sinks."""
        cache = _IngestCache(self, with_context=False)
        self._run_ingest(cache, self.bb.embed(ids), self.positions.text(len(ids)))
        for layer, (k, v) in enumerate(cache.new):
            self.sinks[layer] = (k, v)

    def ingest_block(self, tokens: torch.Tensor, times: tuple[float, ...], grid: tuple[int, int],
                     frame_embeds: torch.Tensor | None = None, token_index: torch.Tensor | None = None) -> BlockInfo:
        """Append one block: visual tokens [n, hidden] -> keys/values in every layer.

        `frame_embeds` [F, D]: the external expert's embeddings of the block's frames (policies
        without an expert ignore them). `token_index` LongTensor [n]: which grid cells (row*gw+col)
        `tokens` are, when a policy stores only some of them (None = all gh*gw, in order).

        All-or-nothing: positions, window, store and representative keys change only after the
        forward succeeded in every layer.
        """
        gh, gw = grid
        tracker = self.positions
        saved = (tracker.video_start, tracker.next_text, tracker.blocks)
        pos, t_off = tracker.block(gh, gw)  # [3, gh*gw]
        if token_index is not None:
            pos = pos[:, token_index]  # [3, n]
        cache = _IngestCache(self, with_context=True)
        try:
            self._run_ingest(cache, tokens, pos)
        except BaseException:
            tracker.video_start, tracker.next_text, tracker.blocks = saved
            raise
        info = BlockInfo(len(self.blocks), tuple(times), tokens.shape[0], t_off, grid, token_index)
        self._commit(cache, info)
        return info

    def _run_ingest(self, cache: _IngestCache, embeds: torch.Tensor, pos: torch.Tensor) -> None:
        self.bb.capture = cache.capture
        try:
            self.bb.decode(embeds, pos, cache, logits=False)
        finally:
            self.bb.capture = None
        if any(kv is None for kv in cache.new) or any(k is None for k in cache.keys_free):
            raise RuntimeError("a decoder layer did not report its keys/values")

    def _commit(self, cache: _IngestCache, info: BlockInfo) -> None:
        for layer, (k, v) in enumerate(cache.new):
            self._append_window(layer, k, v, cache.joined[layer])
            rep = cache.keys_free[layer].mean(dim=0, keepdim=True)  # [1, Hkv, d]
            self.rep[layer].append(rep)
        if self.offload:
            # [L, 2, Hkv, n, d]
            self.store.add(torch.stack([torch.cat([k, v]) for k, v in cache.new]))
        self.blocks.append(info)

    def _append_window(self, layer: int, k: torch.Tensor, v: torch.Tensor,
                       joined: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Append keys/values [1, Hkv, n, d] to `layer`'s window and trim it to the last n_local tokens.

        `joined`: the ingest forward's sinks + window + (k, v), already concatenated for attention;
        the new window is then a view of it (no second copy of the window per layer and block)."""
        n_local = self.cfg.n_local
        old = self.window[layer]
        if joined is not None:
            n_sink = self.n_sink
            wk, wv = joined[0][..., n_sink:, :], joined[1][..., n_sink:, :]
        elif old is None:
            wk, wv = k, v
        else:
            wk, wv = torch.cat([old[0], k], -2), torch.cat([old[1], v], -2)
        if n_local is not None and wk.shape[-2] > n_local:
            wk, wv = wk[..., -n_local:, :], wv[..., -n_local:, :]
        self.window[layer] = (wk, wv)

    def window_share(self, block: BlockInfo) -> int:
        """Tokens of `block` the sliding window holds while it covers the block (all of them here)."""
        return block.n_tokens

    def rep_keys(self, layer: int) -> torch.Tensor:
        """Representative keys of every block in `layer`: [N, Hkv, d] (a view; writable)."""
        return self.rep[layer].view

    # ---- questions ----------------------------------------------------------------------------
    def question_start(self) -> int:
        """Text position where the question starts (depends on `positions`)."""
        if self.cfg.positions == "compact" and self.cfg.policy != "full":
            n_sel = min(self.cfg.topk, len(self.blocks))
            return self.positions.compact_question_start(n_sel, *self.blocks[0].grid)
        return self.positions.next_text

    def question_cache(self, query_slice: slice, query_text: str = "") -> QuestionCache:
        """A cache for one question's prefill and decoding; `query_slice` marks the raw question
        tokens whose mean query scores the blocks; `query_text` is that text (for an external expert)."""
        return QuestionCache(self, query_slice)

    def after_answer(self, question: str, answer: str) -> None:
        """Called once an answer is complete. The memory is unchanged by questions here; a policy
        that conditions its compression on the conversation (hermes) overrides it."""


class _IngestCache:
    """Cache for an ingest forward: attend to sinks + window, remember the new keys/values."""

    def __init__(self, mem: KVMemory, with_context: bool):
        L = mem.spec.n_layers
        self.mem = mem
        self.with_context = with_context
        self.new: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * L
        self.keys_free: list[torch.Tensor | None] = [None] * L  # [S, Hkv, d] pre-RoPE
        self.joined: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * L  # sinks + window + new

    def capture(self, kind: str, layer: int, x: torch.Tensor) -> None:
        if kind == "k":
            self.keys_free[layer] = x

    def update(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.new[layer] = (k, v)
        if not self.with_context:
            return k, v
        parts = [p for p in (self.mem.sinks[layer], self.mem.window[layer]) if p is not None]
        ks = torch.cat([p[0] for p in parts] + [k], dim=-2)  # [1, Hkv, n_sink + window + S, d]
        vs = torch.cat([p[1] for p in parts] + [v], dim=-2)
        self.joined[layer] = (ks, vs)  # the next window is a view of it: committing copies nothing
        return ks, vs


class QuestionCache:
    """Cache for a question: per-layer retrieval on the first call, then a growing private tail.

    Subclasses change how a layer chooses its blocks (`select`) and what the trace shows (`trace`).
    """

    def __init__(self, mem: KVMemory, query_slice: slice):
        L = mem.spec.n_layers
        self.mem = mem
        self.query_slice = query_slice
        self.record = QuestionRecord([None] * L, [None] * L, [None] * L)
        self.context: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * L
        self.tail: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * L

    def capture(self, kind: str, layer: int, x: torch.Tensor) -> None:
        if kind == "q" and self.context[layer] is None:  # prefill only
            self.record.query[layer] = x[self.query_slice].mean(dim=0)  # [Hq, d]

    def update(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.context[layer] is None:
            self.context[layer] = self._build_context(layer)
            self.tail[layer] = (k, v)
        else:
            tk, tv = self.tail[layer]
            self.tail[layer] = (torch.cat([tk, k], -2), torch.cat([tv, v], -2))
        ck, cv = self.context[layer]
        tk, tv = self.tail[layer]
        return torch.cat([ck, tk], -2), torch.cat([cv, tv], -2)

    def _build_context(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        mem, cfg = self.mem, self.mem.cfg
        query = self.record.query[layer]
        scores = block_scores(query, mem.rep_keys(layer), cfg.score)
        self.record.scores[layer] = scores
        n = len(mem.blocks)
        if cfg.policy == "full":
            self.record.selected[layer] = torch.arange(n)
            sk, sv = mem.sinks[layer]
            wk, wv = mem.window[layer]
            return torch.cat([sk, wk], -2), torch.cat([sv, wv], -2)
        chosen = self.select(layer, scores).cpu()
        if cfg.question_window:  # union with the blocks the window still covers
            covered, tokens = set(), 0
            for b in reversed(mem.blocks):
                if tokens >= mem.window_tokens():
                    break
                covered.add(b.index)
                tokens += mem.window_share(b)
            chosen = torch.tensor(sorted(set(chosen.tolist()) | covered), dtype=torch.long)
        self.record.selected[layer] = chosen
        ids = chosen.tolist()
        kv = mem.store.gather(ids, layer, mem.device)  # [2, Hkv, n_sel_tokens, d]
        keys, values = kv[0:1], kv[1:2]
        if cfg.positions == "compact":
            keys = self._compact(keys, ids)
        sk, sv = mem.sinks[layer]
        return torch.cat([sk, keys], -2), torch.cat([sv, values], -2)

    def select(self, layer: int, scores: torch.Tensor) -> torch.Tensor:
        """Blocks layer `layer` attends to, from its internal scores [N]: LongTensor [k], time order."""
        cfg = self.mem.cfg
        return select_blocks(scores, cfg.topk, cfg.chunk_size)

    def trace(self, policy: str) -> RetrievalTrace:
        """What this question's retrieval saw, for the answer and the demo's heatmap."""
        times = torch.tensor([b.start_s for b in self.mem.blocks])
        return RetrievalTrace.build(times, torch.stack(self.record.scores), self.record.selected, policy=policy)

    def _compact(self, keys: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Move the retrieved blocks to temporal slots 0, 1, ... in time order."""
        mem = self.mem
        deltas = []
        for slot, b in enumerate(ids):
            info = mem.blocks[b]
            dt = block_t_offset(slot, mem.positions.interval) - info.t_offset
            d = torch.zeros(3, info.n_tokens, dtype=torch.long)
            d[0] = dt
            deltas.append(d)
        return mem.bb.rotate_keys(keys, torch.cat(deltas, dim=1))
