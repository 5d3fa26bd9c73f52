"""Floating-point operations of ingestion, counted from a Qwen2.5-VL or Qwen3-VL config (no profiler needed).

Convention (the usual one for MFU): only matrix products count, 2 FLOPs per multiply-add, i.e.
`2 * m * n * k` for [m, k] @ [k, n]. Norms, activations, RoPE, softmax and bias adds are left out
(they are a few percent of the total and run at memory speed, not matmul speed). Attention counts
the two products it performs, QK^T and PV, over every key a query is given, masked or not: our
attention builds an explicit mask and the kernel computes the full [S_new, S_keys] score matrix.

Ingesting one block = the vision tower over its two frames + the decoder over its tokens, which
attend to the sinks, the window and themselves (`context_tokens` + `new_tokens` keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def linear_flops(m: int, k: int, n: int) -> int:
    """[m, k] @ [k, n]: m*n outputs, each k multiply-adds."""
    return 2 * m * k * n


def attention_flops(queries: int, keys: int, heads: int, head_dim: int) -> int:
    """QK^T ([q, d] @ [d, keys]) and PV ([q, keys] @ [keys, d]) for every query head."""
    return 2 * linear_flops(queries, head_dim, keys) * heads


@dataclass(frozen=True)
class Flops:
    """FLOPs split into dense layers (weights) and attention (tokens x keys)."""

    dense: int = 0
    attention: int = 0

    @property
    def total(self) -> int:
        return self.dense + self.attention

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.dense + other.dense, self.attention + other.attention)


def decoder_flops(text_config, new_tokens: int, context_tokens: int) -> Flops:
    """All decoder layers on `new_tokens` tokens that attend to `context_tokens` cached keys plus
    themselves. No LM head: ingestion does not compute logits."""
    c = text_config
    h, inter, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    hq, hkv = c.num_attention_heads, c.num_key_value_heads
    d = getattr(c, "head_dim", None) or h // hq
    s = new_tokens
    per_layer = (linear_flops(s, h, hq * d)  # q_proj
                 + 2 * linear_flops(s, h, hkv * d)  # k_proj, v_proj
                 + linear_flops(s, hq * d, h)  # o_proj
                 + 2 * linear_flops(s, h, inter)  # gate_proj, up_proj
                 + linear_flops(s, inter, h))  # down_proj
    attn = attention_flops(s, context_tokens + s, hq, d)
    return Flops(layers * per_layer, layers * attn)


def window_lengths(gh: int, gw: int, window_tokens: int) -> list[int]:
    """Patches in each attention window of one temporal slice whose merged-token grid is gh x gw.

    Qwen2.5-VL tiles the merged grid into `window_tokens` x `window_tokens` squares from the top
    left (window_size // patch // merge; 112 // 14 // 2 = 4); edge windows are cut short. Each
    merged token is merge^2 = 4 patches.
    """
    rows = [min(window_tokens, gh - r) for r in range(0, gh, window_tokens)]
    cols = [min(window_tokens, gw - c) for c in range(0, gw, window_tokens)]
    return [r * c for r in rows for c in cols]


def vision_flops(vision_config, gh: int, gw: int, blocks: int = 1) -> Flops:
    """The vision tower on `blocks` temporal slices (2 frames each) of gh x gw merged tokens.

    Patch embedding (a Conv3d that is one [P, 3*2*p*p] @ [.., hidden] product), every block's qkv / proj
    / MLP, attention, and the patch merger's two-layer MLP. Qwen2.5-VL (a config with `window_size`):
    gated MLP (3 products), attention within windows except in the full-attention blocks. Qwen3-VL: a
    plain two-layer MLP, full attention over the slice in every block, and one more merger per
    DeepStack layer (`deepstack_visual_indexes`).
    """
    v = vision_config
    windowed = getattr(v, "window_size", None) is not None
    m2 = v.spatial_merge_size ** 2
    hv, inter, out = v.hidden_size, v.intermediate_size, v.out_hidden_size
    patches = gh * gw * m2  # per slice
    p = patches * blocks
    patch_in = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    dense = linear_flops(p, patch_in, hv)
    mlp = (2 * linear_flops(p, hv, inter) if windowed else linear_flops(p, hv, inter)) + linear_flops(p, inter, hv)
    dense += v.depth * (linear_flops(p, hv, 3 * hv) + linear_flops(p, hv, hv) + mlp)
    merged = p // m2
    mergers = 1 + len(getattr(v, "deepstack_visual_indexes", None) or ())
    dense += mergers * (linear_flops(merged, hv * m2, hv * m2) + linear_flops(merged, hv * m2, out))
    per_slice_full = attention_flops(patches, patches, v.num_heads, hv // v.num_heads)
    if not windowed:
        return Flops(dense, blocks * v.depth * per_slice_full)
    window_tokens = v.window_size // v.spatial_merge_size // v.patch_size
    windows = [w * m2 for w in window_lengths(gh, gw, window_tokens)]
    full_blocks = len(set(v.fullatt_block_indexes))
    per_slice_window = sum(attention_flops(w, w, v.num_heads, hv // v.num_heads) for w in windows)
    attn = blocks * ((v.depth - full_blocks) * per_slice_window + full_blocks * per_slice_full)
    return Flops(dense, attn)


def ingest_block_flops(config, grid: tuple[int, int], context_tokens: int) -> Flops:
    """One block: the vision tower on its two frames, then the decoder on its gh*gw tokens over
    `context_tokens` cached keys (sinks + window). `config` is a Qwen2_5_VLConfig or Qwen3VLConfig (whose
    blocks also carry a few text rows, left out here)."""
    gh, gw = grid
    return vision_flops(config.vision_config, gh, gw) + decoder_flops(config.text_config, gh * gw, context_tokens)


def matmul_flops(n: int) -> int:
    """One square [n, n] @ [n, n] product."""
    return linear_flops(n, n, n)


def tflops(flops: float, seconds: float) -> float:
    """FLOPs over seconds, in units of 10^12 FLOP/s (nan for a zero duration)."""
    return flops / seconds / 1e12 if seconds > 0 else math.nan
