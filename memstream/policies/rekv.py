"""`rekv`: ReKV (ICLR 2025): a sliding window for ingestion, a host block store, and per-layer top-k
block retrieval inside the question's own forward.

Ingest: a block attends to the sinks and the last `n_local` tokens; its keys/values go to the store,
and each layer keeps one representative key per block (the mean position-free key, heads side by side).
Question: in every layer, the question's mean position-free query scores each block's representative
key (`retrieval.block_scores`), the layer takes its own top-k (`retrieval.select_blocks`), and attends
to the sinks + those blocks in time order (+ the window with `question_window`). Positions are the
blocks' original ones (time-faithful) or, with `positions="compact"`, slots 0..k-1 re-rotated exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..backbones import Backbone
from ..checks import is_int
from ..retrieval import select_blocks
from .base import PolicyConfig, need
from .window import WindowMemory, WindowQuestionCache


@dataclass(frozen=True)
class RekvConfig(PolicyConfig):
    n_local: int | None = 15000  # ingest sliding window in tokens; None = unbounded
    topk: int = 16  # blocks each layer retrieves for a question
    positions: str = "original"  # retrieved blocks keep their positions ("original") or move to slots ("compact")
    score: str = "dot"  # block score: "dot" (ReKV's reference) or "cosine"
    chunk_size: int = 1  # retrieve runs of this many consecutive blocks (1 = block by block)
    question_window: bool = False  # a question also attends to the local window (original positions only)

    QUESTION_TIME = ("topk", "score", "chunk_size", "question_window")

    def validate(self) -> None:
        need(self.n_local is None or (is_int(self.n_local) and self.n_local >= 1),
             f"n_local must be a positive number of tokens or None, got {self.n_local!r}.")
        need(is_int(self.topk) and self.topk >= 1, f"topk must be a positive integer, got {self.topk!r}.")
        need(self.positions in ("original", "compact"),
             f"positions must be 'original' or 'compact', got {self.positions!r}.")
        need(self.score in ("dot", "cosine"), f"score must be 'dot' or 'cosine', got {self.score!r}.")
        need(is_int(self.chunk_size) and self.chunk_size >= 1,
             f"chunk_size must be a positive integer, got {self.chunk_size!r}.")
        need(isinstance(self.question_window, bool),
             f"question_window must be True or False, got {self.question_window!r}.")
        need(not (self.question_window and self.positions == "compact"),
             "question_window needs positions='original' (compact slots assume exactly topk blocks).")


class RekvMemory(WindowMemory):
    """The window memory with a block store and per-layer retrieval at question time."""

    def __init__(self, backbone: Backbone, config: RekvConfig, *, fps: float, expert: Any = None):
        super().__init__(backbone, config, fps=fps, expert=expert, store=True)

    def question_start(self) -> int:
        """With compact positions the question follows the last retrieved slot, not the stream's end."""
        if self.cfg.positions == "compact":
            n_sel = min(self.cfg.topk, len(self.blocks))
            return self.positions.compact_question_start(n_sel, *self.blocks[0].grid)
        return self.positions.next_text

    def question_cache(self, query_slice: slice, query_text: str = "") -> RetrievalQuestionCache:
        return RetrievalQuestionCache(self, query_slice)


class RetrievalQuestionCache(WindowQuestionCache):
    """Each layer attends to the sinks + the blocks it retrieves (`select`) from the store."""

    mem: RekvMemory
    SELECTION = "retrieved"  # the trace's `selected`: top-k blocks ranked at question time

    def layer_context(self, layer: int, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mem, cfg = self.mem, self.mem.cfg
        chosen = self.select(layer, scores).cpu()  # LongTensor [k], time order
        if cfg.question_window:  # union with the blocks the window still covers
            chosen = torch.tensor(sorted(set(chosen.tolist()) | set(mem.window_blocks())), dtype=torch.long)
        self.record.selected[layer] = chosen
        ids = chosen.tolist()
        kv = mem.store.gather(ids, layer, mem.device)  # [2, Hkv, n_sel_tokens, d]
        keys, values = kv[0:1], kv[1:2]
        if cfg.positions == "compact":
            keys = self.compact(keys, ids)
        sk, sv = mem.sinks[layer]
        return torch.cat([sk, keys], -2), torch.cat([sv, values], -2)

    def select(self, layer: int, scores: torch.Tensor) -> torch.Tensor:
        """Blocks layer `layer` attends to, from its internal scores [N]: LongTensor [k], time order."""
        cfg = self.mem.cfg
        return select_blocks(scores, cfg.topk, cfg.chunk_size)

    def compact(self, keys: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Move the retrieved blocks' keys [1, Hkv, S, d] to temporal slots 0, 1, ... in time order."""
        mem = self.mem
        deltas = [mem.positions.slot_delta(mem.blocks[b].t_offset, slot, mem.blocks[b].n_tokens)
                  for slot, b in enumerate(ids)]  # [P, n_b] each, the backbone's layout of slots
        return mem.bb.rotate_keys(keys, torch.cat(deltas, dim=1))
