"""HERMES per layer: what a layer holds (`LayerMemory`), each layer's role, and which tokens it keeps.

The scoring functions are pure tensor code, no model: `hermes.py` feeds them the attention that
pseudo queries pay to each held token and where each token sits; they return per-layer keep indices.

    attn_l      [n_l]  mean attention (over heads and the prompt's query tokens) to each held token
    recency_l   [n_l]  exp(-kappa * age), age in [0, 1]: 0 for the newest held token, 1 for the oldest
    s_l = (1 - alpha_l) * minmax(attn_l) + alpha_l * minmax(recency_l)
    s_l <- (1 - gamma_l) * s_l + gamma_l * s_{l+1}      from layer L-2 down to 0 (deep -> shallow)
    keep_l = top-budget tokens of s_l, in cache order

Age is measured as the release does by default (a token's distance from the newest one in the layer's
cache order, `recency_by_index`) or per block (`recency`). Layers hold different tokens, so smoothing
has to pair them: the release pairs them by index, stretching the deeper layer's scores by linear
interpolation when the counts differ (`smooth_by_index`); the other rule pairs a token with the same
token (block, grid cell) one layer up and leaves a token the deeper layer no longer holds alone
(`smooth`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..retrieval import minmax

# Token identity = block * CELL_SPAN + cell; a block has at most 2 * 16384 cells (tokens_per_frame <= 16384).
CELL_SPAN = 1 << 20
# The cell a per-round summary token carries: beyond every real cell, so (block, SUMMARY_CELL) names the
# summary made when block `block` completed a chunk, distinct from every visual token.
SUMMARY_CELL = CELL_SPAN - 1
ROLES = ("shallow", "middle", "deep")


@dataclass
class LayerMemory:
    """What one layer holds besides the sinks. Tensors are replaced, never written in place, so an
    ingest can build the next state aside and commit it only when everything succeeded.

    Held tokens are in cache order: blocks in time order, and a per-round summary token (`summary`
    "round") right after the last block of the chunk whose compression made it. A running summary
    (`summary` "running") is not a held token: it lives in sum_k / sum_v / count.
    """

    keys: torch.Tensor  # [1, Hkv, n, d] post-RoPE at `pos`, cache order
    values: torch.Tensor  # [1, Hkv, n, d]
    block: torch.Tensor  # LongTensor [n] (CPU): stream index of each token's block (a summary: the block it follows)
    cell: torch.Tensor  # LongTensor [n] (CPU): grid cell row * gw + col (a summary: SUMMARY_CELL)
    pos: torch.Tensor  # LongTensor [P, n] (CPU): current position of each key (P components, (t, h, w) for Qwen)
    sum_k: torch.Tensor | None = None  # [1, Hkv, 1, d] float64: running summary, evicted keys at the video start
    sum_v: torch.Tensor | None = None  # [1, Hkv, 1, d] float64: running summary, evicted values
    count: int = 0  # tokens folded into the running summary
    is_summary: torch.Tensor | None = None  # BoolTensor [n] (CPU): held per-round summary tokens; None = none

    def __post_init__(self) -> None:
        if self.is_summary is None:
            self.is_summary = torch.zeros(self.block.numel(), dtype=torch.bool)

    @property
    def n(self) -> int:
        return self.block.numel()

    @property
    def n_summaries(self) -> int:
        """Per-round summary tokens held (0 without them)."""
        return int(self.is_summary.sum())

    def summary(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The running summary's (key, value), each [1, Hkv, 1, d], or None before any eviction."""
        if not self.count:
            return None
        return (self.sum_k / self.count).to(self.keys.dtype), (self.sum_v / self.count).to(self.values.dtype)

    def _with(self, keys: torch.Tensor, values: torch.Tensor, block: torch.Tensor, cell: torch.Tensor,
              pos: torch.Tensor, is_summary: torch.Tensor) -> LayerMemory:
        return LayerMemory(keys, values, block, cell, pos, self.sum_k, self.sum_v, self.count, is_summary)

    def append(self, k: torch.Tensor, v: torch.Tensor, block: int, cells: torch.Tensor,
               pos: torch.Tensor) -> LayerMemory:
        """A new state with a block's tokens (k, v [1, Hkv, m, d], cells [m], pos [P, m]) appended."""
        m = cells.numel()
        return self._with(torch.cat([self.keys, k], -2), torch.cat([self.values, v], -2),
                          torch.cat([self.block, torch.full((m,), block, dtype=torch.long)]),
                          torch.cat([self.cell, cells.long().cpu()]), torch.cat([self.pos, pos.cpu()], 1),
                          torch.cat([self.is_summary, torch.zeros(m, dtype=torch.bool)]))

    def append_summary(self, k: torch.Tensor, v: torch.Tensor, block: int, pos: torch.Tensor) -> LayerMemory:
        """A new state with one per-round summary token (k, v [1, Hkv, 1, d], pos [P, 1]) appended."""
        return self._with(torch.cat([self.keys, k], -2), torch.cat([self.values, v], -2),
                          torch.cat([self.block, torch.tensor([block])]),
                          torch.cat([self.cell, torch.tensor([SUMMARY_CELL])]), torch.cat([self.pos, pos.cpu()], 1),
                          torch.cat([self.is_summary, torch.ones(1, dtype=torch.bool)]))

    def subset(self, idx: torch.Tensor) -> LayerMemory:
        """A new state holding tokens `idx` (LongTensor, ascending) and the same running summary."""
        dev = idx.to(self.keys.device)
        return self._with(self.keys[..., dev, :], self.values[..., dev, :], self.block[idx], self.cell[idx],
                          self.pos[:, idx], self.is_summary[idx])

    def moved(self, keys: torch.Tensor, pos: torch.Tensor) -> LayerMemory:
        """A new state with the same tokens at new positions (keys re-rotated to `pos` [P, n])."""
        return self._with(keys, self.values, self.block, self.cell, pos, self.is_summary)

    def fold(self, keys: torch.Tensor, values: torch.Tensor) -> LayerMemory:
        """A new state whose running summary also covers evicted tokens keys/values [1, Hkv, m, d] (keys
        already rotated to the summary position). Sums and the count are kept, so the mean stays exact."""
        add_k = keys.double().sum(-2, keepdim=True)  # [1, Hkv, 1, d]
        add_v = values.double().sum(-2, keepdim=True)
        sum_k = add_k if self.sum_k is None else self.sum_k + add_k
        sum_v = add_v if self.sum_v is None else self.sum_v + add_v
        return LayerMemory(self.keys, self.values, self.block, self.cell, self.pos, sum_k, sum_v,
                           self.count + keys.shape[-2], self.is_summary)


@dataclass(frozen=True)
class LayerRole:
    """How one decoder layer scores its tokens."""

    name: str  # "shallow" (sensory), "middle" or "deep" (long-term)
    alpha: float  # weight of recency in s = (1 - alpha) * attn + alpha * recency
    kappa: float  # recency decay: exp(-kappa * age), age in [0, 1]
    gamma: float  # weight of the next deeper layer's score when smoothing


def layer_roles(cfg, n_layers: int) -> list[LayerRole]:
    """The role of every layer for a `HermesConfig` (any object with its fields).

    role_rounding "int" (the release, `inference/qwenvl_hermes.py`): layer l is shallow when
    l < int(shallow_ratio * L), else deep when l >= int((1 - deep_ratio) * L), else middle; a middle
    layer's relative depth is p = (l - first middle) / (first deep - first middle), so p runs over
    [0, 1) and never reaches 1. 28 layers: 2 / 17 / 9; 36 layers: 3 / 22 / 11; 2 layers (tiny):
    middle, deep; 1 layer: deep.

    role_rounding "ceil": the first ceil(shallow_ratio * L) layers are shallow and the last
    ceil(deep_ratio * L) deep (deep winning where the two overlap on very shallow models); p spreads
    over [0, 1] across the middle band (0.5 for a band of one). 28 layers: 3 / 16 / 9; 2 layers:
    shallow, deep.

    Middle alpha and kappa interpolate linearly in p between the band's (start, end) values.
    """
    if cfg.role_rounding == "int":
        first_middle = int(n_layers * cfg.shallow_ratio)
        first_deep = max(first_middle, int(n_layers * (1 - cfg.deep_ratio)))  # float noise cannot make them cross

        def depth(layer: int) -> float:
            return (layer - first_middle) / (first_deep - first_middle)
    else:
        n_deep = min(n_layers, math.ceil(cfg.deep_ratio * n_layers - 1e-9))
        first_middle = min(n_layers - n_deep, math.ceil(cfg.shallow_ratio * n_layers - 1e-9))
        first_deep = n_layers - n_deep
        n_middle = first_deep - first_middle

        def depth(layer: int) -> float:
            return (layer - first_middle) / (n_middle - 1) if n_middle > 1 else 0.5
    roles = []
    for layer in range(n_layers):
        if layer < first_middle:
            roles.append(LayerRole("shallow", cfg.shallow_alpha, cfg.shallow_kappa, cfg.shallow_gamma))
        elif layer >= first_deep:
            roles.append(LayerRole("deep", cfg.deep_alpha, cfg.deep_kappa, cfg.deep_gamma))
        else:
            p = depth(layer)
            a0, a1 = cfg.middle_alpha
            k0, k1 = cfg.middle_kappa
            roles.append(LayerRole("middle", a0 + (a1 - a0) * p, k0 + (k1 - k0) * p, cfg.middle_gamma))
    return roles


def recency(blocks: torch.Tensor, kappa: float) -> torch.Tensor:
    """exp(-kappa * age) per token, age by block: blocks LongTensor [n] (stream index of each token's
    block) -> [n].

    age = (newest - block) / (newest - oldest) over the blocks present, so 0 = newest, 1 = oldest;
    a single block gives age 0 everywhere.
    """
    b = blocks.double()
    span = float(b.max() - b.min()) if b.numel() else 0.0
    age = (b.max() - b) / span if span > 0 else torch.zeros_like(b)
    return torch.exp(-kappa * age).float()


def recency_by_index(n: int, kappa: float) -> torch.Tensor:
    """exp(-kappa * age) per token, age by cache order as released: age_i = (n - 1 - i) / max(n - 1, 1),
    so the last held token (the newest, or a summary made after it) has age 0 -> [n]."""
    i = torch.arange(n, dtype=torch.float64)
    return torch.exp(-kappa * (n - 1 - i) / max(n - 1, 1)).float()


def combine(attn: torch.Tensor, blocks: torch.Tensor, role: LayerRole, by: str = "block") -> torch.Tensor:
    """s = (1 - alpha) * minmax(attn) + alpha * minmax(recency): [n] in [0, 1] (float32, CPU).

    `by`: "block" measures age per block (`recency`), "index" by cache order (`recency_by_index`)."""
    attn = attn.float().cpu()
    if attn.numel() == 0:
        return attn
    near = recency_by_index(attn.numel(), role.kappa) if by == "index" else recency(blocks.cpu(), role.kappa)
    return (1 - role.alpha) * minmax(attn) + role.alpha * minmax(near)


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


def smooth_by_index(scores: list[torch.Tensor], gammas: list[float]) -> list[torch.Tensor]:
    """Deep-to-shallow smoothing as released: s_l <- (1 - g_l) s_l + g_l s_{l+1}, pairing tokens by index.

    When layer l+1 holds a different number of tokens (deep layers hold summary tokens), its scores are
    first stretched to layer l's length by linear interpolation (align_corners=False), as the release
    does. Runs from the second-to-last layer down, each layer blending the already smoothed one above.
    """
    out = [s.clone() for s in scores]
    for layer in range(len(out) - 2, -1, -1):
        g, upper = gammas[layer], out[layer + 1]
        n = out[layer].numel()
        if g == 0 or upper.numel() == 0 or n == 0:
            continue
        if upper.numel() != n:
            upper = F.interpolate(upper.float().view(1, 1, -1), size=n, mode="linear", align_corners=False).view(-1)
        out[layer] = (1 - g) * out[layer] + g * upper
    return out


def ranked_positions(pos: torch.Tensor, start: int) -> torch.Tensor:
    """Compaction as released: each position component of the held tokens replaced by its rank among
    that component's distinct values, counted from `start`: pos LongTensor [P, n] -> [P, n].

    E.g. t values (20, 20, 28, 36) -> (s, s, s+1, s+2); h and w are ranked the same way on their own.
    """
    out = torch.empty_like(pos)
    for d in range(pos.shape[0]):
        _, rank = torch.unique(pos[d], sorted=True, return_inverse=True)
        out[d] = start + rank
    return out


def select_top(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices of the `budget` best tokens, ascending (= cache order): LongTensor [min(budget, n)].

    Ties go to the later token, so a pure recency score keeps exactly the newest tokens.
    """
    n = scores.numel()
    if n <= budget:
        return torch.arange(n)
    newest_first = torch.arange(n - 1, -1, -1)
    order = torch.sort(scores[newest_first], descending=True, stable=True).indices
    return torch.sort(newest_first[order[:budget]]).values


def attention_mass(queries: torch.Tensor, cached: torch.Tensor, new: torch.Tensor, rows: torch.Tensor,
                   scale: float, causal: bool = True) -> torch.Tensor:
    """Softmax attention of some new tokens to every key, averaged over heads and those tokens.

    queries [Hq, Sq, d]: post-RoPE queries of the new tokens `rows` (LongTensor [Sq], their index
    among the forward's new tokens); cached [Hkv, K, d]: the keys in the cache; new [Hkv, S, d]: the
    forward's own keys. Query head h uses key head h // (Hq / Hkv) (grouped-query attention). New
    token i sees every cached key and new keys 0 .. i (the bottom-right causal mask of attention.py);
    `causal=False` lets every new token see all new keys (the release's manual pseudo attention).
    Returns [K + S] float32: the mean attention probability each key receives.
    """
    hq, sq, d = queries.shape
    hkv, n_new = cached.shape[0], new.shape[1]
    g = hq // hkv
    q = queries.float().reshape(hkv, g * sq, d)  # heads h*g .. h*g+g-1 share kv head h
    # cached keys are visible to every query: only the few new keys need the causal mask
    old_logits = torch.matmul(q, cached.float().transpose(-1, -2)) * scale  # [Hkv, g*Sq, K]
    new_logits = torch.matmul(q, new.float().transpose(-1, -2)) * scale  # [Hkv, g*Sq, S]
    if causal:
        limit = rows.to(new.device).repeat(g)  # [g*Sq]: query i sees new keys 0 .. rows[i]
        visible = torch.arange(n_new, device=new.device)[None, :] <= limit[:, None]  # [g*Sq, S]
        new_logits = new_logits.masked_fill(~visible, float("-inf"))
    top = torch.maximum(old_logits.amax(-1, keepdim=True), new_logits.amax(-1, keepdim=True))  # [Hkv, g*Sq, 1]
    old_p, new_p = (old_logits - top).exp_(), (new_logits - top).exp_()
    norm = old_p.sum(-1, keepdim=True) + new_p.sum(-1, keepdim=True)
    return torch.cat([(old_p / norm).mean(dim=(0, 1)), (new_p / norm).mean(dim=(0, 1))])
