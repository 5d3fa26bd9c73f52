"""Which tokens of a block MemStream keeps: pure functions on tensors, shared by AKS and compression.

Both remedies compare a block's tokens with a reference at the same spatial grid cell and favour the
tokens that changed:

* **Dynamic patch-level compression** compares the vision tower's output tokens (the LLM input
  embeddings, [n, hidden]) with the embedding last stored at each cell, and does not store the
  tokens above a cosine threshold, keeping at least a floor of the least similar ones.
* **Adaptive key selection (AKS)** compares each stored token's position-free key ([n, Hkv, d]) with
  the key last seen at its cell, and keeps the k least similar tokens of the block for the sparse
  window and the representative key: per layer (heads concatenated, one choice) or per KV head.

Counts are given as an int (tokens) or a float fraction in (0, 1] of the tokens available.
"""

from __future__ import annotations

import math

import torch


def resolve_count(spec: int | float, n: int) -> int:
    """A count (int >= 1) or a fraction (float in (0, 1]) of `n` -> tokens, clipped to [1, n] (0 if n = 0).

    Fractions round up, so a fraction is a true lower bound (0.05 of 108 tokens -> 6); the product is
    rounded to 6 decimals first so that float noise (0.1 * 30 = 3.0000000000000004) does not add one.
    """
    if n <= 0:
        return 0
    count = spec if isinstance(spec, int) and not isinstance(spec, bool) else math.ceil(round(spec * n, 6))
    return max(1, min(n, int(count)))


def token_cosine(x: torch.Tensor, ref: torch.Tensor, per_head: bool = False) -> torch.Tensor:
    """Cosine between each token and its reference, computed in float32.

    x, ref [n, ...] (e.g. embeddings [n, hidden] or keys [n, H, d]) -> [n] with every channel of a
    token in one vector (heads concatenated); with `per_head`, x and ref are [n, H, d] and each head
    is compared on its own -> [n, H]. A zero vector has cosine 0 with everything.
    """
    x, ref = x.float(), ref.float()
    if not per_head:
        x, ref = x.flatten(1), ref.flatten(1)  # [n, C]
    dots = (x * ref).sum(dim=-1)
    return dots / (x.norm(dim=-1) * ref.norm(dim=-1)).clamp_min(1e-12)


def least_similar(sim: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` tokens with the lowest similarity, as sorted token indices.

    sim [n] -> LongTensor [count]; sim [n, H] (one column per head) -> LongTensor [H, count], each
    head's own choice. Ties go to the earlier token, so the choice is deterministic.
    """
    order = torch.sort(sim, dim=0, stable=True).indices[:count]  # [count] or [count, H], ascending sim
    return torch.sort(order.T if sim.ndim == 2 else order, dim=-1).values


def compress_keep(sim: torch.Tensor, threshold: float, floor: int) -> torch.Tensor:
    """Cells worth storing: similarity to the reference at most `threshold`, and never fewer than
    `floor` (then the `floor` least similar cells). sim [n] -> sorted LongTensor [kept].

    NaN similarities (a broken reference) count as changed: storing too much is the safe side.
    """
    changed = ~(sim > threshold)  # NaN > t is False -> kept
    if int(changed.sum()) >= floor:
        return changed.nonzero().flatten()
    return least_similar(torch.nan_to_num(sim, nan=-2.0), floor)
