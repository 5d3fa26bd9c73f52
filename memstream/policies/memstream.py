"""MemStream's memory (DESIGN.md 2.3): ReKV's layout with three remedies for its temporal bias.

Policies (all built from `MemStreamMemory`, its remedies switched by constructor flags):

    memstream           compression + AKS + rank fusion of internal and external retrieval
                        (needs an external expert: without one it is a ConfigError, use memstream-internal)
    memstream-internal  compression + AKS, internal retrieval over the AKS representative keys
    external            ReKV's dense window and store, every layer retrieves the external top-k

Per block, in order:
1. **Compression** (before the LLM forward, so a dropped patch costs neither compute nor memory):
   each grid cell's vision token is compared with the embedding last *stored* at that cell; cells
   above `compress_threshold` are not stored (never fewer than `compress_floor`). The reference is
   the last stored embedding, not the previous block's: against the previous block a slow drift
   (lighting, a creeping object) is below the threshold at every step and would never be stored,
   while against the last stored one the change accumulates until it crosses the threshold.
2. **AKS** (after the forward, on its position-free keys): per layer each stored token's key is
   compared with the key last seen at its cell (with compression the previous block may not have
   stored that cell: then the last block that did). The `aks_keep` least similar tokens are what the
   sliding window keeps of the block and what its representative key averages; the block store keeps
   every stored token, since retrieval brings back whole blocks. The block attends to all of its own
   tokens during its own forward; only afterwards does it shrink to its kept tokens in the window.
   As on the paper's project page, k is a fixed count by default (`AKS_KEEP` = 128 per 2-frame block,
   64 per frame: docs/fidelity.md says why); a fraction of the block's tokens is an option value.
3. **External expert**: one mean frame embedding per block, compared with the question's embedding.
   The expert embeds the frames as they were added to the stream, at its own input resolution.
4. **Fusion** at question time: per layer, that layer's internal scores and the external scores are
   fused by reciprocal rank (fusion.py) and the fused top-k is retrieved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..checks import is_count_or_fraction, is_number
from ..errors import ConfigError, expert_failure
from ..fusion import rank_fuse
from ..keyselect import compress_keep, least_similar, resolve_count, token_cosine
from ..retrieval import select_blocks
from ..store import RowBuffer
from ..trace import RetrievalTrace
from .base import BlockInfo, IngestCache, need
from .rekv import RekvConfig, RekvMemory, RetrievalQuestionCache

RANKINGS = ("fused", "internal", "external")
# AKS's k: tokens of each past block the sparse window keeps. 64 per frame (128 per 2-frame block): the
# budget at which ReKV's dense window retrieves well, so the window stays that sparse as the budget grows
AKS_KEEP = 128


@dataclass(frozen=True)
class MemStreamConfig(RekvConfig):
    aks_keep: int | float = AKS_KEEP  # AKS k: tokens of each past block the window keeps: a count or a fraction
    aks_scope: str = "layer"  # AKS chooses per "layer" (heads together) or per KV "head"
    compress_threshold: float | None = 0.95  # drop patches whose cosine to the last stored one exceeds this; None = off
    compress_floor: int | float = 0.05  # tokens always stored per block: a count or a fraction
    fusion_c: float = 60.0  # rank fusion constant c in sum_e w_e / (c + rank_e)
    fusion_weights: tuple[float, float] = (1.0, 1.0)  # rank fusion weights (internal, external)

    QUESTION_TIME = RekvConfig.QUESTION_TIME + ("fusion_c", "fusion_weights")

    def validate(self) -> None:
        super().validate()
        need(is_count_or_fraction(self.aks_keep),
             f"aks_keep must be a token count (integer >= 1) or a fraction in (0, 1], got {self.aks_keep!r}.")
        need(self.aks_scope in ("layer", "head"), f"aks_scope must be 'layer' or 'head', got {self.aks_scope!r}.")
        need(self.compress_threshold is None or (is_number(self.compress_threshold)
                                                 and -1.0 <= self.compress_threshold <= 1.0),
             f"compress_threshold must be a cosine in [-1, 1] or None (off), got {self.compress_threshold!r}.")
        need(is_count_or_fraction(self.compress_floor),
             f"compress_floor must be a token count (integer >= 1) or a fraction in (0, 1], "
             f"got {self.compress_floor!r}.")
        need(is_number(self.fusion_c) and math.isfinite(self.fusion_c) and self.fusion_c >= 0,
             f"fusion_c must be a non-negative number, got {self.fusion_c!r}.")
        w = self.fusion_weights
        need(isinstance(w, tuple | list) and len(w) == 2 and all(is_number(x) and math.isfinite(x) and x >= 0
                                                                  for x in w) and sum(w) > 0,
             f"fusion_weights must be two non-negative numbers (internal, external), not both 0, got {w!r}.")
        object.__setattr__(self, "fusion_weights", (float(w[0]), float(w[1])))


class MemStreamMemory(RekvMemory):
    """ReKV's memory with patch compression, adaptive key selection and an external expert (module doc).

    The variants differ only in these flags: `compress` (remedy 3; also off when compress_threshold is
    None), `aks` (remedy 2; off = ReKV's dense window and mean key) and `ranking`: "fused" (rank fusion of
    internal and external scores), "internal" or "external"; "fused" and "external" need an expert.
    """

    def __init__(self, backbone: Backbone, config: MemStreamConfig, *, fps: float, expert: Any = None,
                 compress: bool = True, aks: bool = True, ranking: str = "fused"):
        super().__init__(backbone, config, fps=fps, expert=expert if ranking != "internal" else None)
        if ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
        if ranking == "external" and expert is None:
            raise ConfigError("This policy ranks blocks with an external expert only; load the engine with "
                              "expert='clip-b32' (or 'tiny' offline), or pick another policy.")
        if ranking == "fused" and expert is None:
            raise ConfigError("MemStream fuses the internal ranking with an external expert's; load the engine "
                              "with expert='clip-b32' (or 'tiny' offline), or use policy 'memstream-internal' "
                              "for MemStream without one.")
        self.ranking = ranking
        self.compress = compress and config.compress_threshold is not None  # remedy 3
        self.aks = aks  # remedy 2
        self.cell_ref: torch.Tensor | None = None  # [gh*gw, hidden]: embedding last stored at each cell
        self.key_ref: list[torch.Tensor | None] = [None] * self.spec.n_layers  # per layer [gh*gw, Hkv, d]
        self.frame_mean = RowBuffer()  # [N, D] float32 CPU: mean of each block's unit frame embeddings
        self.kept: list[int] = []  # per block: tokens the sparse window keeps (per layer and head)

    # ---- ingestion ----------------------------------------------------------------------------
    def ingest_block(self, tokens: torch.Tensor, times: tuple[float, ...], grid: tuple[int, int],
                     frame_embeds: torch.Tensor | None = None, token_index: torch.Tensor | None = None) -> BlockInfo:
        """Compress, then ingest as the window memory does (all-or-nothing), then update the references.

        tokens [gh*gw, hidden * (1 + D)]; frame_embeds [F, D] (needed when the memory has an expert).
        `token_index` may be given only with compression off (compression chooses the cells itself).
        """
        cells = grid[0] * grid[1]
        frame_mean = self.block_frame_mean(frame_embeds)  # checked before anything changes
        stored = tokens  # [n, hidden * (1 + D)]: a dropped token drops its DeepStack rows with it
        embeds = self.bb.token_embeddings(tokens)  # [gh*gw, hidden]: what compression compares
        if self.compress:
            if token_index is not None:
                raise ValueError("token_index cannot be combined with compression (it chooses the cells)")
            if self.cell_ref is not None and self.cell_ref.shape[0] == cells:
                sim = token_cosine(embeds, self.cell_ref)  # [gh*gw]
                keep = compress_keep(sim, self.cfg.compress_threshold, resolve_count(self.cfg.compress_floor, cells))
                if keep.numel() < cells:
                    stored = tokens[keep]  # [n, hidden * (1 + D)]
                    token_index = keep.cpu()  # [n] cells; positions and BlockInfo live on the CPU
        info = super().ingest_block(stored, times, grid, frame_embeds, token_index)
        # the forward succeeded and the block is committed: only now may the references move
        if self.compress:
            if self.cell_ref is None or self.cell_ref.shape[0] != cells:
                self.cell_ref = embeds.clone()  # first block: everything stored
            else:
                index = slice(None) if token_index is None else token_index.to(self.device)
                self.cell_ref[index] = embeds[index]
        if frame_mean is not None:
            self.frame_mean.append(frame_mean[None])
        return info

    def drop_expert(self, sentence: str) -> None:
        """The expert failed mid-stream: rank by the internal scores from now on (as memstream-internal)."""
        super().drop_expert(sentence)
        self.ranking = "internal"

    def block_frame_mean(self, frame_embeds: torch.Tensor | None) -> torch.Tensor | None:
        """The block's mean unit frame embedding [D] (None without an expert).

        With a unit text embedding t, mean_f cos(f, t) = mean_f (f/|f|) . t = (mean_f f/|f|) . t: the mean of
        the unit frame embeddings scores a block exactly as averaging its frames' cosines would, with one
        vector per block instead of F.
        """
        if self.expert is None:
            return None
        if frame_embeds is None or frame_embeds.ndim != 2 or frame_embeds.shape[0] < 1:
            shape = None if frame_embeds is None else tuple(frame_embeds.shape)
            raise ValueError(f"this memory has an external expert and needs frame_embeds [F, D] per block, got {shape}")
        return F.normalize(frame_embeds.detach().float().cpu(), dim=-1).mean(dim=0)

    def commit(self, cache: IngestCache, info: BlockInfo) -> None:
        """AKS: the window and the representative key get the block's kept tokens; the store gets all.
        AKS chooses among the visual tokens; the block's own text rows (`BlockInfo.text_rows`) are kept."""
        if not self.aks:
            super().commit(cache, info)
            self.kept.append(info.n_tokens)
            return
        gh, gw = info.grid
        cells = torch.arange(gh * gw) if info.token_index is None else info.token_index
        cells = cells.to(self.device)  # [n] grid cell of each stored visual token
        vis = info.visual  # rows of the visual tokens among the block's n_tokens rows
        n = cells.numel()
        text = torch.cat([torch.arange(vis.start), torch.arange(vis.stop, info.n_tokens)]).to(self.device)
        count = resolve_count(self.cfg.aks_keep, n)
        per_head = self.cfg.aks_scope == "head"
        first = self.key_ref[0] is None or self.key_ref[0].shape[0] != gh * gw
        # compute everything first, then change the memory, so an error here changes nothing
        kept = []
        for layer, (k, v) in enumerate(cache.new):
            free = cache.keys_free[layer]  # [n_tokens, Hkv, d] position-free keys
            if first or count >= n:
                kept.append((k, v, free.mean(dim=0, keepdim=True)))
                continue
            sim = token_cosine(free[vis], self.key_ref[layer][cells], per_head)  # [n] or [n, Hkv]
            keep = least_similar(sim, count) + vis.start  # [count] or [Hkv, count] rows of the block
            keep = torch.cat([text.expand(*keep.shape[:-1], -1), keep], -1).sort(-1).values  # + the text rows
            kept.append(gather_kept(k, v, free, keep))
        for layer, (wk, wv, rep) in enumerate(kept):
            self.append_window(layer, wk, wv)
            self.rep[layer].append(rep)  # [1, Hkv, d]
            free = cache.keys_free[layer][vis]
            if first:
                self.key_ref[layer] = free.new_zeros((gh * gw, *free.shape[1:]))
            self.key_ref[layer][cells] = free  # cells this block did not store keep their last key
        # [L, 2, Hkv, n, d]: every stored token, retrieval brings back whole blocks
        self.store.add(torch.stack([torch.cat([k, v]) for k, v in cache.new]))
        self.blocks.append(info)
        self.kept.append(info.n_tokens if first or count >= n else count + text.numel())

    def window_share(self, block: BlockInfo) -> int:
        """Under AKS the window holds only the block's kept tokens."""
        return self.kept[block.index]

    # ---- questions ----------------------------------------------------------------------------
    def question_cache(self, query_slice: slice, query_text: str = "") -> MemStreamQuestionCache:
        return MemStreamQuestionCache(self, query_slice, query_text)

    def external_scores(self, text_emb: torch.Tensor) -> torch.Tensor:
        """text_emb [D] -> float32 [N]: each block's mean cosine of its frames with the question."""
        t = F.normalize(text_emb.float().cpu(), dim=0)
        return self.frame_mean.view @ t

    # ---- reporting ----------------------------------------------------------------------------
    def host_bytes(self) -> int:
        return super().host_bytes() + self.frame_mean.nbytes

    def device_bytes(self) -> int:
        refs = [r for r in (self.cell_ref, *self.key_ref) if r is not None]
        return super().device_bytes() + sum(r.numel() * r.element_size() for r in refs)

    def stats(self) -> dict:
        """The window memory's sizes plus: aks_keep (the option as set: a count or a fraction), aks_k (the
        tokens AKS keeps of a whole block of this stream: aks_keep resolved against its gh*gw tokens; None
        before the first block or with AKS off), aks_kept_tokens (tokens of each block the sparse window and
        the representative key use, mean over blocks; the first block keeps all), aks_kept_fraction
        (kept / stored), tokens_dropped (by compression), bytes_external (the stored frame embeddings),
        bytes_references (the per-cell compression and AKS references) and which remedies are on."""
        st = super().stats()
        n, stored = len(self.blocks), st["tokens_stored"]
        refs = [r for r in (self.cell_ref, *self.key_ref) if r is not None]
        cells = self.blocks[-1].grid[0] * self.blocks[-1].grid[1] if n else 0
        st.update({
            "aks_keep": self.cfg.aks_keep,
            "aks_k": resolve_count(self.cfg.aks_keep, cells) if self.aks and n else None,
            "aks_kept_tokens": sum(self.kept) / n if n else None,
            "aks_kept_fraction": sum(self.kept) / stored if stored else None,
            "tokens_dropped": st["tokens_raw"] - stored,
            "bytes_external": self.frame_mean.nbytes,
            "bytes_references": sum(r.numel() * r.element_size() for r in refs),
            "compression": self.compress,
            "aks": self.aks,
            "external_expert": self.expert is not None,
        })
        return st


def gather_kept(k: torch.Tensor, v: torch.Tensor, free: torch.Tensor,
                 keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kept tokens of one layer: window keys/values [1, Hkv, count, d] and the representative key
    [1, Hkv, d]. keep: LongTensor [count] (one choice for all heads) or [Hkv, count] (one per head)."""
    if keep.ndim == 1:
        return k[:, :, keep], v[:, :, keep], free[keep].mean(dim=0, keepdim=True)
    hkv, count = keep.shape
    d = k.shape[-1]
    idx = keep[None, :, :, None].expand(1, hkv, count, d)  # per head its own tokens, one tensor
    rep = free.gather(0, keep.T[:, :, None].expand(count, hkv, d)).mean(dim=0, keepdim=True)
    return k.gather(2, idx), v.gather(2, idx), rep


class MemStreamQuestionCache(RetrievalQuestionCache):
    """Per-layer retrieval by fused rank ("fused"), external rank ("external") or internal score."""

    mem: MemStreamMemory

    def __init__(self, mem: MemStreamMemory, query_slice: slice, query_text: str = ""):
        super().__init__(mem, query_slice)
        # the question is embedded once; every layer reuses these scores [N]. An expert that raises costs this
        # answer its external ranking, not the answer: it is ranked internally and the trace says why
        self.external, self.notice = None, mem.expert_failure or ""
        if mem.expert is not None:
            try:
                self.external = mem.external_scores(mem.expert.embed_text(query_text))
            except Exception as exc:  # noqa: BLE001 - any failure of the expert, a model we do not control
                self.notice = expert_failure(exc, "embedding the question", for_good=False)
        self.record.extra["fused"] = [None] * mem.spec.n_layers  # per layer [N]: the score that selected

    def select(self, layer: int, scores: torch.Tensor) -> torch.Tensor:
        cfg = self.mem.cfg
        if self.external is None:  # ranking "internal"
            key = scores
        elif self.mem.ranking == "external":
            key = self.external.to(scores.device)
        else:
            key = rank_fuse([scores, self.external.to(scores.device)], cfg.fusion_weights, cfg.fusion_c)
        self.record.extra["fused"][layer] = key
        # one implementation of top-k, chunks and tie-breaking for every policy
        return select_blocks(key, cfg.topk, cfg.chunk_size)

    def trace(self) -> RetrievalTrace:
        """internal [L, N] raw; external [N] or None; fused [N]: rank fusion of internal_agg and external
        ("fused"), the external scores ("external"), or internal_agg (no expert)."""
        cfg, policy = self.mem.cfg, self.mem.policy
        times = self.mem.block_times()
        internal = torch.stack([s.float().cpu() for s in self.record.scores])
        trace = RetrievalTrace.build(times, internal, self.record.selected, external=self.external, policy=policy,
                                     ranking="internal")
        if self.external is None:
            return replace(trace, notice=self.notice)
        fused = self.external if self.mem.ranking == "external" else \
            rank_fuse([trace.internal_agg, self.external], cfg.fusion_weights, cfg.fusion_c)
        return RetrievalTrace.build(times, internal, self.record.selected, external=self.external, fused=fused,
                                    policy=policy, ranking=self.mem.ranking)
