"""HERMES per layer: what a layer holds (`LayerMemory`) and which tokens it keeps when over budget.

The scoring functions are pure tensor code, no model: `hermes.py` feeds them the attention that
pseudo questions pay to each cached token and the block every token came from; they return
per-layer keep indices.

    attn_l      [n_l]  mean attention (over heads, query tokens and pseudo questions) to each token
    recency_l   [n_l]  exp(-kappa * age), age in [0, 1]: 0 for the newest held block, 1 for the oldest
    s_l = (1 - alpha_l) * minmax(attn_l) + alpha_l * minmax(recency_l)
    s_l <- (1 - gamma_l) * s_l + gamma_l * s_{l+1}      from layer L-2 down to 0 (deep -> shallow)
    keep_l = top-budget tokens of s_l, in time order

Layers hold different token sets, so smoothing matches tokens by identity (block, grid cell): a
token of layer l that layer l+1 also holds blends in that layer's (already smoothed) score; a token
layer l+1 no longer holds keeps its own score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..retrieval import minmax

# Token identity = block * CELL_SPAN + cell; a block has at most 2 * 16384 cells (tokens_per_frame <= 16384).
CELL_SPAN = 1 << 20


@dataclass
class LayerMemory:
    """What one layer holds besides the sinks. Tensors are replaced, never written in place, so an
    ingest can build the next state aside and commit it only when everything succeeded."""

    keys: torch.Tensor  # [1, Hkv, n, d] post-RoPE at `pos`, time order
    values: torch.Tensor  # [1, Hkv, n, d]
    block: torch.Tensor  # LongTensor [n] (CPU): stream index of each token's block
    cell: torch.Tensor  # LongTensor [n] (CPU): grid cell row * gw + col
    pos: torch.Tensor  # LongTensor [3, n] (CPU): current (t, h, w) position of each key
    sum_k: torch.Tensor | None = None  # [1, Hkv, 1, d] float64: evicted keys rotated to the summary position
    sum_v: torch.Tensor | None = None  # [1, Hkv, 1, d] float64: evicted values
    count: int = 0  # tokens folded into the summary

    @property
    def n(self) -> int:
        return self.block.numel()

    def summary(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The summary token's (key, value), each [1, Hkv, 1, d], or None before any eviction."""
        if not self.count:
            return None
        return (self.sum_k / self.count).to(self.keys.dtype), (self.sum_v / self.count).to(self.values.dtype)

    def append(self, k: torch.Tensor, v: torch.Tensor, block: int, cells: torch.Tensor,
               pos: torch.Tensor) -> LayerMemory:
        """A new state with a block's tokens (k, v [1, Hkv, m, d], cells [m], pos [3, m]) appended."""
        return LayerMemory(torch.cat([self.keys, k], -2), torch.cat([self.values, v], -2),
                           torch.cat([self.block, torch.full((cells.numel(),), block, dtype=torch.long)]),
                           torch.cat([self.cell, cells.long().cpu()]), torch.cat([self.pos, pos.cpu()], 1),
                           self.sum_k, self.sum_v, self.count)

    def subset(self, idx: torch.Tensor) -> LayerMemory:
        """A new state holding tokens `idx` (LongTensor, ascending) and the same summary."""
        dev = idx.to(self.keys.device)
        return LayerMemory(self.keys[..., dev, :], self.values[..., dev, :], self.block[idx], self.cell[idx],
                           self.pos[:, idx], self.sum_k, self.sum_v, self.count)

    def moved(self, keys: torch.Tensor, pos: torch.Tensor) -> LayerMemory:
        """A new state with the same tokens at new positions (keys re-rotated to `pos` [3, n])."""
        return LayerMemory(keys, self.values, self.block, self.cell, pos, self.sum_k, self.sum_v, self.count)

    def fold(self, keys: torch.Tensor, values: torch.Tensor) -> LayerMemory:
        """A new state whose summary also covers evicted tokens keys/values [1, Hkv, m, d] (keys already
        rotated to the summary position). Sums and the count are kept, so the mean stays exact."""
        add_k = keys.double().sum(-2, keepdim=True)  # [1, Hkv, 1, d]
        add_v = values.double().sum(-2, keepdim=True)
        sum_k = add_k if self.sum_k is None else self.sum_k + add_k
        sum_v = add_v if self.sum_v is None else self.sum_v + add_v
        return LayerMemory(self.keys, self.values, self.block, self.cell, self.pos, sum_k, sum_v,
                           self.count + keys.shape[-2])


@dataclass(frozen=True)
class LayerRole:
    """How one decoder layer scores its tokens."""

    name: str  # "shallow" (sensory), "middle" or "deep" (long-term)
    alpha: float  # weight of recency in s = (1 - alpha) * attn + alpha * recency
    kappa: float  # recency decay: exp(-kappa * age), age in [0, 1]
    gamma: float  # weight of the next deeper layer's score when smoothing


def layer_roles(cfg, n_layers: int) -> list[LayerRole]:
    """The role of every layer for a `HermesConfig` (first ceil(shallow_ratio * L) layers shallow,
    last ceil(deep_ratio * L) deep, deep winning where the two overlap on very shallow models).

    Middle layer at relative depth p in [0, 1] across the middle band (p = 0.5 when the band is
    one layer): alpha and kappa interpolate linearly between the band's (start, end) values.
    """
    n_deep = min(n_layers, math.ceil(cfg.deep_ratio * n_layers - 1e-9))
    n_shallow = min(n_layers - n_deep, math.ceil(cfg.shallow_ratio * n_layers - 1e-9))
    first_deep = n_layers - n_deep
    n_middle = first_deep - n_shallow
    roles = []
    for layer in range(n_layers):
        if layer < n_shallow:
            roles.append(LayerRole("shallow", cfg.shallow_alpha, cfg.shallow_kappa, cfg.shallow_gamma))
        elif layer >= first_deep:
            roles.append(LayerRole("deep", cfg.deep_alpha, cfg.deep_kappa, cfg.deep_gamma))
        else:
            p = (layer - n_shallow) / (n_middle - 1) if n_middle > 1 else 0.5
            a0, a1 = cfg.middle_alpha
            k0, k1 = cfg.middle_kappa
            roles.append(LayerRole("middle", a0 + (a1 - a0) * p, k0 + (k1 - k0) * p, cfg.middle_gamma))
    return roles


def recency(blocks: torch.Tensor, kappa: float) -> torch.Tensor:
    """exp(-kappa * age) per token: blocks LongTensor [n] (stream index of each token's block) -> [n].

    age = (newest - block) / (newest - oldest) over the blocks present, so 0 = newest, 1 = oldest;
    a single block gives age 0 everywhere.
    """
    b = blocks.double()
    span = float(b.max() - b.min()) if b.numel() else 0.0
    age = (b.max() - b) / span if span > 0 else torch.zeros_like(b)
    return torch.exp(-kappa * age).float()


def combine(attn: torch.Tensor, blocks: torch.Tensor, role: LayerRole) -> torch.Tensor:
    """s = (1 - alpha) * minmax(attn) + alpha * minmax(recency): [n] in [0, 1] (float32, CPU)."""
    attn = attn.float().cpu()
    if attn.numel() == 0:
        return attn
    return (1 - role.alpha) * minmax(attn) + role.alpha * minmax(recency(blocks.cpu(), role.kappa))


def token_ids(blocks: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Identity of each token across layers: block * CELL_SPAN + cell, LongTensor [n]."""
    return blocks.long() * CELL_SPAN + cells.long()


def smooth(scores: list[torch.Tensor], ids: list[torch.Tensor], gammas: list[float]) -> list[torch.Tensor]:
    """Deep-to-shallow smoothing: s_l <- (1 - g_l) s_l + g_l s_{l+1} on the tokens both layers hold.

    scores / ids: per layer [n_l] (ids from `token_ids`); returns new per-layer scores. Runs from
    the second-to-last layer down, so each layer blends the already smoothed layer above it.
    """
    out = [s.clone() for s in scores]
    for layer in range(len(out) - 2, -1, -1):
        g = gammas[layer]
        upper_ids, upper = ids[layer + 1], out[layer + 1]
        if g == 0 or upper_ids.numel() == 0 or ids[layer].numel() == 0:
            continue
        order = torch.argsort(upper_ids)
        sorted_ids = upper_ids[order]
        at = torch.searchsorted(sorted_ids, ids[layer]).clamp_max(len(sorted_ids) - 1)
        found = sorted_ids[at] == ids[layer]  # [n_l] bool: token also held one layer up
        blended = (1 - g) * out[layer] + g * upper[order[at]]
        out[layer] = torch.where(found, blended, out[layer])
    return out


def select_top(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices of the `budget` best tokens, ascending (= time order): LongTensor [min(budget, n)].

    Ties go to the later token, so a pure recency score keeps exactly the newest tokens.
    """
    n = scores.numel()
    if n <= budget:
        return torch.arange(n)
    newest_first = torch.arange(n - 1, -1, -1)
    order = torch.sort(scores[newest_first], descending=True, stable=True).indices
    return torch.sort(newest_first[order[:budget]]).values


def attention_mass(queries: torch.Tensor, cached: torch.Tensor, new: torch.Tensor, rows: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """Softmax attention of some new tokens to every key, averaged over heads and those tokens.

    queries [Hq, Sq, d]: post-RoPE queries of the new tokens `rows` (LongTensor [Sq], their index
    among the forward's new tokens); cached [Hkv, K, d]: the keys in the cache; new [Hkv, S, d]: the
    forward's own keys. Query head h uses key head h // (Hq / Hkv) (grouped-query attention). New
    token i sees every cached key and new keys 0 .. i (the bottom-right causal mask of attention.py).
    Returns [K + S] float32: the mean attention probability each key receives.
    """
    hq, sq, d = queries.shape
    hkv, n_new = cached.shape[0], new.shape[1]
    g = hq // hkv
    q = queries.float().reshape(hkv, g * sq, d)  # heads h*g .. h*g+g-1 share kv head h
    # cached keys are visible to every query: only the few new keys need the causal mask
    old_logits = torch.matmul(q, cached.float().transpose(-1, -2)) * scale  # [Hkv, g*Sq, K]
    new_logits = torch.matmul(q, new.float().transpose(-1, -2)) * scale  # [Hkv, g*Sq, S]
    limit = rows.to(new.device).repeat(g)  # [g*Sq]: query i sees new keys 0 .. rows[i]
    visible = torch.arange(n_new, device=new.device)[None, :] <= limit[:, None]  # [g*Sq, S]
    new_logits = new_logits.masked_fill(~visible, float("-inf"))
    top = torch.maximum(old_logits.amax(-1, keepdim=True), new_logits.amax(-1, keepdim=True))  # [Hkv, g*Sq, 1]
    old_p, new_p = (old_logits - top).exp_(), (new_logits - top).exp_()
    norm = old_p.sum(-1, keepdim=True) + new_p.sum(-1, keepdim=True)
    return torch.cat([(old_p / norm).mean(dim=(0, 1)), (new_p / norm).mean(dim=(0, 1))])
