"""The windowed KV memory that `full`, `sink-window`, `rekv` and `memstream` build on.

Layout per decoder layer (on the compute device unless noted):

    sinks    [1, Hkv, n_sink, d]    system-prompt tokens, always attended
    window   [1, Hkv, <=n_local, d] the most recent visual tokens (all of them when n_local is None)
    rep      [N, Hkv, d]            one position-free representative key per block (the mean of its keys)
    store    N x [L, 2, Hkv, n, d]  every block's keys (post-RoPE) and values in host memory (pinned on
                                    CUDA hosts); only for policies that retrieve (`store=True`)

A block attends to the sinks and the window during its own ingest forward. A question's forward builds,
in each layer, its context on that layer's first `update()` (the prefill), from the question's mean
position-free query recorded a moment earlier by the `q` capture: `WindowQuestionCache.layer_context`
decides what the layer attends to. Here that is sinks + window, and the blocks the window covers are
reported as selected; `rekv` retrieves from the store instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..backbones import Backbone
from ..retrieval import block_scores
from ..store import BlockStore, RowBuffer
from ..trace import RetrievalTrace
from .base import BlockInfo, IngestCache, Memory, PolicyConfig, ReadCache


@dataclass
class QuestionRecord:
    """What one question's forward saw in every layer (filled in as the layers run)."""

    query: list[torch.Tensor | None]  # per layer [Hq, d]: mean position-free query of the query tokens
    scores: list[torch.Tensor | None]  # per layer [N]: internal score of every block
    selected: list[torch.Tensor | None]  # per layer LongTensor [k]: blocks attended, time order
    extra: dict = field(default_factory=dict)


class WindowMemory(Memory):
    """Sinks + sliding window + representative keys (+ block store); see the module docstring."""

    def __init__(self, backbone: Backbone, config: PolicyConfig, *, fps: float, expert: Any = None,
                 store: bool = False):
        super().__init__(backbone, config, fps=fps, expert=expert)
        L = self.spec.n_layers
        self.window: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * L
        self.rep = [RowBuffer() for _ in range(L)]  # per layer [N, Hkv, d]
        self.store = BlockStore(pin=self.device.type == "cuda") if store else None

    @property
    def n_local(self) -> int | None:
        """Tokens the window keeps; None = unbounded."""
        return getattr(self.cfg, "n_local", None)

    # ---- ingestion ----------------------------------------------------------------------------
    def ingest_block(self, tokens: torch.Tensor, times: tuple[float, ...], grid: tuple[int, int],
                     frame_embeds: torch.Tensor | None = None, token_index: torch.Tensor | None = None) -> BlockInfo:
        """Append one block (tokens [n, hidden * (1 + D)]); positions, window, store and representative keys change
        only after the forward succeeded in every layer."""
        saved = self.positions.save()
        block = self.prepare_block(tokens, times, grid, token_index)  # rows [S]: text + visual tokens
        cache = IngestCache(self.spec.n_layers, self.window_parts)
        try:
            self.run_forward(cache, block.embeds, block.positions)
        except BaseException:
            self.positions.restore(saved)
            raise
        info = block.info(len(self.blocks), times, grid, token_index)
        self.commit(cache, info)
        return info

    def window_parts(self, layer: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Sinks and window of `layer` as separate parts (keys, values): the ingest cache joins them with the
        new block in one copy, and the next window is a view of that (one copy of the window per block)."""
        parts = [p for p in (self.sinks[layer], self.window[layer]) if p is not None]
        return [p[0] for p in parts], [p[1] for p in parts]

    def window_context(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sinks + window of `layer`: what a new block attends to, [1, Hkv, n_sink + window, d] each."""
        ks, vs = self.window_parts(layer)
        return torch.cat(ks, -2), torch.cat(vs, -2)

    def commit(self, cache: IngestCache, info: BlockInfo) -> None:
        """Keep a block whose forward succeeded: window, representative key, store, block list."""
        for layer, (k, v) in enumerate(cache.new):
            self.append_window(layer, k, v, cache.joined[layer])
            self.rep[layer].append(cache.keys_free[layer].mean(dim=0, keepdim=True))  # [1, Hkv, d]
        if self.store is not None:
            self.store.add(torch.stack([torch.cat([k, v]) for k, v in cache.new]))  # [L, 2, Hkv, n, d]
        self.blocks.append(info)

    def append_window(self, layer: int, k: torch.Tensor, v: torch.Tensor,
                      joined: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Append keys/values [1, Hkv, n, d] to `layer`'s window and trim it to the last n_local tokens.

        `joined`: the ingest forward's sinks + window + (k, v), already concatenated for attention; the
        new window is then a view of it (no second copy of the window per layer and block)."""
        old = self.window[layer]
        if joined is not None:
            wk, wv = joined[0][..., self.n_sink:, :], joined[1][..., self.n_sink:, :]
        elif old is None:
            wk, wv = k, v
        else:
            wk, wv = torch.cat([old[0], k], -2), torch.cat([old[1], v], -2)
        n_local = self.n_local
        if n_local is not None and wk.shape[-2] > n_local:
            wk, wv = wk[..., -n_local:, :], wv[..., -n_local:, :]
        self.window[layer] = (wk, wv)

    def window_share(self, block: BlockInfo) -> int:
        """Tokens of `block` the window holds while it covers the block (all of them here)."""
        return block.n_tokens

    def window_blocks(self) -> list[int]:
        """Indices of the blocks the window still covers (some of their tokens), ascending."""
        covered, tokens, held = [], 0, self.window_tokens()
        for b in reversed(self.blocks):
            if tokens >= held:
                break
            covered.append(b.index)
            tokens += self.window_share(b)
        return covered[::-1]

    def score_kind(self) -> str:
        """How a question scores blocks: the config's `score` ("dot" or "cosine"), "dot" without one."""
        return getattr(self.cfg, "score", "dot")

    def rep_keys(self, layer: int) -> torch.Tensor:
        """Representative keys of every block in `layer`: [N, Hkv, d] (a view)."""
        return self.rep[layer].view

    # ---- questions ----------------------------------------------------------------------------
    def question_start(self) -> int:
        return self.positions.next_text

    def question_cache(self, query_slice: slice, query_text: str = "") -> WindowQuestionCache:
        return WindowQuestionCache(self, query_slice)

    # ---- sizes --------------------------------------------------------------------------------
    def window_tokens(self) -> int:
        w = self.window[0]
        return 0 if w is None else w[0].shape[-2]

    def device_bytes(self) -> int:
        window = sum(t.numel() * t.element_size() for kv in self.window if kv is not None for t in kv)
        return self.sink_bytes() + window + sum(r.nbytes for r in self.rep)

    def host_bytes(self) -> int:
        return 0 if self.store is None else self.store.nbytes


class WindowQuestionCache(ReadCache):
    """A question's cache over a window memory: each layer's context comes from `layer_context`.

    Subclasses change what a layer attends to (`layer_context`) and what the trace shows (`trace`).
    """

    SELECTION = "attended"  # what the trace's `selected` lists: a fixed window, nothing ranked

    def __init__(self, mem: WindowMemory, query_slice: slice):
        super().__init__(mem.spec.n_layers)
        L = mem.spec.n_layers
        self.mem = mem
        self.query_slice = query_slice
        self.record = QuestionRecord([None] * L, [None] * L, [None] * L)

    def capture(self, kind: str, layer: int, x: torch.Tensor) -> None:
        if kind == "q" and not self.prefilled(layer):  # prefill only
            self.record.query[layer] = x[self.query_slice].mean(dim=0)  # [Hq, d]

    def build_context(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = block_scores(self.record.query[layer], self.mem.rep_keys(layer), self.mem.score_kind())
        self.record.scores[layer] = scores  # [N]
        return self.layer_context(layer, scores)

    def layer_context(self, layer: int, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What `layer` attends to besides the question: sinks + window here; records the selection."""
        self.record.selected[layer] = torch.tensor(self.mem.window_blocks(), dtype=torch.long)
        return self.mem.window_context(layer)

    def trace(self) -> RetrievalTrace:
        """Internal scores [L, N] of every block, and the blocks each layer attended."""
        return RetrievalTrace.build(self.mem.block_times(), torch.stack(self.record.scores), self.record.selected,
                                    policy=self.mem.policy, selection=self.SELECTION)
