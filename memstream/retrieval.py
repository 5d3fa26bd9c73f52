"""Scoring blocks against a question and choosing which ones a layer attends to (ReKV).

A block's representative key in a layer is the mean of its tokens' position-free keys, heads side
by side: [Hkv, d]. The question's query is the mean of its tokens' position-free queries, [Hq, d].
With grouped-query attention each key head serves `g = Hq / Hkv` query heads, so the key is
repeated g times to live in the same R^{Hq*d} as the query; the dot product is then the sum over
each group's query heads.
"""

from __future__ import annotations

import torch


def block_scores(query: torch.Tensor, rep_keys: torch.Tensor, score: str = "dot") -> torch.Tensor:
    """Relevance of every block to the question in one layer.

    query [Hq, d], rep_keys [N, Hkv, d] -> scores [N] (float32). `score` is "dot" (ReKV's
    reference) or "cosine" (between the flattened query and the flattened GQA-repeated key).
    """
    n, hkv, d = rep_keys.shape
    q = query.float().view(hkv, -1, d)  # [Hkv, g, d]
    k = rep_keys.float()
    dots = torch.einsum("nkd,kd->n", k, q.sum(dim=1))  # [N]
    if score == "dot":
        return dots
    if score == "cosine":
        groups = q.shape[1]
        k_norm = k.flatten(1).norm(dim=1) * groups**0.5  # |repeat(k, g)| = sqrt(g) |k|
        return dots / (q.norm() * k_norm).clamp_min(1e-12)
    raise ValueError(f"unknown score {score!r}")


def select_blocks(scores: torch.Tensor, topk: int, chunk_size: int = 1) -> torch.Tensor:
    """Indices of the blocks to retrieve, in time order: LongTensor [min(topk, N)].

    With `chunk_size` c > 1, blocks are grouped into runs of c consecutive blocks scored by their
    mean, and blocks are taken by (chunk score, then own score) descending: whole runs while the
    budget lasts, the last run partly, so exactly min(topk, N) blocks come back. c = 1 is plain
    top-k. Ties go to the earlier block, so the choice is deterministic.
    """
    n = scores.shape[0]
    k = min(topk, n)
    scores = scores.float()
    if chunk_size > 1:
        chunk = torch.arange(n, device=scores.device) // chunk_size
        sums = torch.zeros(int(chunk[-1]) + 1, device=scores.device).index_add_(0, chunk, scores)
        counts = torch.bincount(chunk).float()
        key = (sums / counts)[chunk]
    else:
        key = scores
    # stable lexicographic sort: by own score, then (stably) by chunk score
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(key[order], descending=True, stable=True).indices]
    return torch.sort(order[:k]).values


def minmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Scale to [0, 1] along `dim`; a constant row becomes all zeros."""
    lo = x.amin(dim=dim, keepdim=True)
    hi = x.amax(dim=dim, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)
