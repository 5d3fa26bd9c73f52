"""Reciprocal rank fusion: MemStream's mixture of retrieval experts (DESIGN.md 2.3, remedy 4).

Two experts score the blocks for a question on unrelated scales (dot products of keys, CLIP
cosines); fusing their *ranks* needs no calibration:

    fused(b) = sum_e  w_e / (c + rank_e(b))

with 1-based ranks (the best block has rank 1). A large c flattens the curve, so agreement across
experts counts more than a single expert's top pick; c = 60 and w = 1 are the usual defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_C = 60.0


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dim, highest score = rank 1: [..., N] -> LongTensor [..., N].

    Ties share the best rank of their group ("competition ranking": scores 5, 7, 7, 1 -> 3, 1, 1, 4),
    so tied blocks get the same fused contribution whatever their order in time.
    """
    neg = -scores.float()
    ascending = torch.sort(neg, dim=-1).values
    # rank = 1 + how many scores are strictly higher = 1 + how many negated scores are strictly lower
    return torch.searchsorted(ascending.contiguous(), neg.contiguous(), side="left") + 1


def rank_fuse(score_lists: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
              c: float = DEFAULT_C) -> torch.Tensor:
    """Fuse several experts' scores over the same N blocks: each [N] -> float32 [N], sum_e w_e / (c + rank_e).

    `weights` default to 1 per expert. Higher fused = better, like the inputs.
    """
    if not score_lists:
        raise ValueError("rank_fuse needs at least one list of scores")
    weights = [1.0] * len(score_lists) if weights is None else list(weights)
    if len(weights) != len(score_lists):
        raise ValueError(f"{len(score_lists)} score lists but {len(weights)} weights")
    fused = torch.zeros(score_lists[0].shape[-1], dtype=torch.float32, device=score_lists[0].device)
    for scores, w in zip(score_lists, weights):
        fused += float(w) / (c + ranks(scores).float())
    return fused
