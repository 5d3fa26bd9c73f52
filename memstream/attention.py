"""The attention function the decoder uses over our memory.

Our caches give different layers different numbers of keys (per-layer retrieval, compression),
so the single mask transformers builds from layer 0 does not fit. Registered under its own name,
this function receives `attention_mask=None` from the model and builds each layer's mask from the
key length it actually gets: every cached key is visible, and the new tokens are causal among
themselves, aligned to the bottom-right corner (query i of Sq sees keys 0 .. Sk - Sq + i).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTENTION_NAME = "memstream"


def memory_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, Hq, Sq, d]
    key: torch.Tensor,  # [B, Hkv, Sk, d]
    value: torch.Tensor,  # [B, Hkv, Sk, d]
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Scaled dot-product attention with a per-call, bottom-right-aligned causal mask.

    Returns the output as [B, Sq, Hq, d] (the layout transformers' attention functions return).
    """
    sq, sk = query.shape[-2], key.shape[-2]
    mask = attention_mask
    if mask is None and is_causal is not False and sq > 1:
        # keys j <= (sk - sq) + i are visible to query i
        qi = torch.arange(sq, device=query.device)[:, None]
        kj = torch.arange(sk, device=query.device)[None, :]
        mask = kj <= qi + (sk - sq)  # [Sq, Sk] bool
    b, hq, _, d = query.shape
    hkv = key.shape[1]
    groups = hq // hkv
    if groups > 1 and (mask is None or mask.dim() == 2):
        # GQA without copying keys: query heads h*g .. h*g+g-1 share kv head h, so fold each
        # group's queries into one longer query axis of that kv head ([B, Hkv, g*Sq, d]).
        q = query.reshape(b, hkv, groups * sq, d)
        m = None if mask is None else mask.repeat(groups, 1)  # [g*Sq, Sk]
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=m, scale=scaling)
        out = out.reshape(b, hq, sq, d)
    else:
        if groups > 1:  # an unusual mask shape: expand the kv heads instead
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, memory_attention)
