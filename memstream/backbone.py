"""The Qwen2.5-VL adapter: everything model-specific lives here.

The memory never touches transformers directly. It asks the backbone to
  * turn frames into visual tokens (`encode_blocks`), text into embeddings (`embed`),
  * run the decoder over a cache object of ours (`decode`): each attention layer calls
    `cache.update(keys, values, layer_idx)` with the new tokens' post-RoPE keys and gets back the
    keys/values to attend to,
  * report the position-free (pre-RoPE) queries and keys of every layer as they are computed
    (forward hooks on `q_proj`/`k_proj`, which run before that layer's `update()`), and
  * re-rotate stored keys to new positions (`rotate_keys`).

Loading goes through `from_pretrained` for hub ids, local directories and the offline presets alike.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from . import attention
from .errors import ModelLoadError
from .tiny import PRESETS, build_checkpoint

# CLIP normalisation used by Qwen2.5-VL's image processor.
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_CUDA_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_CPU_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


class KVCache(Protocol):
    """What the decoder layers call: store the new tokens, return everything to attend to."""

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """keys/values [1, Hkv, S_new, d] (keys post-RoPE) -> [1, Hkv, S_ctx + S_new, d] each."""
        ...


# Called as capture(kind, layer_idx, tensor) with kind "q" ([S, Hq, d]) or "k" ([S, Hkv, d]).
Capture = Callable[[str, int, torch.Tensor], None]


@dataclass(frozen=True)
class BackboneSpec:
    """Shapes of the loaded model that the memory needs."""

    n_layers: int  # decoder layers
    n_heads: int  # query heads per layer
    n_kv_heads: int  # key/value heads per layer (GQA)
    head_dim: int  # channels per head
    hidden: int  # LLM width
    vocab: int  # logits size
    patch: int  # vision patch side in pixels (14)
    merge: int  # spatial merge factor (2): one LLM token per merge x merge patches
    temporal_patch: int  # frames per block (2)
    tokens_per_second: float  # M-RoPE temporal steps per second of video (2)

    @property
    def pixels_per_token(self) -> int:
        return self.patch * self.merge  # 28


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"Unknown device {device!r}; use 'cpu', 'cuda' or 'auto'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was requested but no GPU is available; use --device cpu.")
    return dev


class Backbone:
    """A loaded Qwen2.5-VL with the hooks and helpers the memory needs."""

    def __init__(self, model, tokenizer, device: torch.device, name: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.name = name
        self.dtype = next(model.parameters()).dtype
        cfg, vcfg = model.config.text_config, model.config.vision_config
        self.spec = BackboneSpec(
            n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
            n_kv_heads=cfg.num_key_value_heads, head_dim=cfg.hidden_size // cfg.num_attention_heads,
            hidden=cfg.hidden_size, vocab=cfg.vocab_size, patch=vcfg.patch_size,
            merge=vcfg.spatial_merge_size, temporal_patch=vcfg.temporal_patch_size,
            tokens_per_second=float(vcfg.tokens_per_second),
        )
        self.lm = model.model.language_model
        # Only the text decoder uses our attention; the vision tower keeps sdpa.
        model.set_attn_implementation({"text_config": attention.ATTENTION_NAME, "vision_config": "sdpa"})
        self._local = threading.local()  # per-thread capture target: streams may run in parallel
        for i, layer in enumerate(self.lm.layers):
            layer.self_attn.q_proj.register_forward_hook(self._hook("q", i, self.spec.n_heads))
            layer.self_attn.k_proj.register_forward_hook(self._hook("k", i, self.spec.n_kv_heads))
        self.eos_ids = {i for i in (tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                    tokenizer.convert_tokens_to_ids("<|endoftext|>")) if i is not None}
        self.video_token_id = model.config.video_token_id

    @property
    def capture(self) -> Capture | None:
        """Where this thread's forward reports position-free queries/keys (None = nowhere).

        Thread-local because several streams (browser sessions, compare mode) share one backbone
        and the hooks run in the thread that runs the forward."""
        return getattr(self._local, "capture", None)

    @capture.setter
    def capture(self, target: Capture | None) -> None:
        self._local.capture = target

    def _hook(self, kind: str, layer_idx: int, heads: int):
        def hook(_module, _inputs, output):  # output [1, S, heads * d]
            if self.capture is not None:
                self.capture(kind, layer_idx, output[0].view(output.shape[1], heads, -1))
        return hook

    # ---- vision -------------------------------------------------------------------------------
    def patchify(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames uint8 [T, H, W, 3] (T even, H and W multiples of 28) -> the vision tower's input.

        Returns (pixel_values [T/2 * H/14 * W/14, 3 * 2 * 14 * 14], grid_thw [1, 3]) in the
        layout of Qwen2-VL's processor: patches ordered (block, row-of-2x2, col-of-2x2, 2, 2),
        each flattened as (channel, frame, y, x).
        """
        s = self.spec
        t, h, w, _ = frames.shape
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)  # [T, H, W, 3]
        mean = torch.tensor(PIXEL_MEAN).view(1, 1, 1, 3)
        std = torch.tensor(PIXEL_STD).view(1, 1, 1, 3)
        x = ((x - mean) / std).permute(0, 3, 1, 2)  # [T, 3, H, W]
        gt, gh, gw, m, p = t // s.temporal_patch, h // s.patch, w // s.patch, s.merge, s.patch
        x = x.reshape(gt, s.temporal_patch, 3, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # [gt, gh/m, gw/m, m, m, 3, tp, p, p]
        pixels = x.reshape(gt * gh * gw, 3 * s.temporal_patch * p * p)
        return pixels, torch.tensor([[gt, gh, gw]])

    @torch.inference_mode()
    def encode_blocks(self, frames: np.ndarray) -> torch.Tensor:
        """Frames uint8 [2k, H, W, 3] -> visual tokens [k, (H/28)*(W/28), hidden].

        The vision tower attends only within a temporal patch, so k blocks in one call give the
        same tokens as k separate calls; batching just amortises the per-call overhead.
        """
        pixels, grid = self.patchify(frames)
        out = self.model.model.get_video_features(pixels.to(self.device, self.dtype), grid.to(self.device))
        tokens = torch.cat(out.pooler_output, dim=0)  # [k * gh' * gw', hidden]
        return tokens.view(int(grid[0, 0]), -1, tokens.shape[-1])

    # ---- text ---------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @torch.inference_mode()
    def embed(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Token ids [S] -> embeddings [S, hidden]."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.lm.embed_tokens(ids)

    # ---- decoder ------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache,
               logits: bool = True) -> torch.Tensor | None:
        """Run the decoder over `cache` for new tokens.

        embeds [S, hidden], positions [3, S] -> logits of the last token [vocab] (float32), or
        None with `logits=False` (ingestion only needs the keys/values the cache stores).
        """
        h = embeds.unsqueeze(0).to(self.dtype)  # [1, S, hidden]
        pos = positions.to(self.device).unsqueeze(1)  # [3, 1, S]
        rope = self.lm.rotary_emb(h, pos)
        for layer in self.lm.layers:
            h = layer(h, attention_mask=None, position_embeddings=rope, past_key_values=cache, use_cache=True)
        if not logits:
            return None
        last = self.lm.norm(h[:, -1])
        return self.model.lm_head(last)[0].float()

    def rotate_keys(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Move post-RoPE keys to new positions: keys [..., S, d], delta [3, S] (new - old).

        RoPE rotates each frequency pair by angle position * inv_freq, and M-RoPE only picks which
        of (t, h, w) drives each pair; rotations compose, so rotating by the delta is exact.
        """
        cos, sin = self.lm.rotary_emb(keys, delta.to(keys.device).unsqueeze(1))  # [1, S, d]
        cos, sin = cos[0].to(keys.dtype), sin[0].to(keys.dtype)
        half = keys.shape[-1] // 2
        rotated_half = torch.cat((-keys[..., half:], keys[..., :half]), dim=-1)
        return keys * cos + rotated_half * sin


def load_backbone(name: str | None = None, device: str | None = "auto", cache_dir: str | None = None) -> Backbone:
    """Load Qwen2.5-VL from a hub id, a local directory, or a preset of `tiny.PRESETS` ("tiny",
    "small": random weights, built offline and then loaded through the same `from_pretrained`).

    bf16 on CUDA, fp32 on CPU. `name=None` picks the default real model for the device.
    """
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dev = resolve_device(device)
    if name is None:
        name = DEFAULT_CUDA_MODEL if dev.type == "cuda" else DEFAULT_CPU_MODEL
    path = name
    if name in PRESETS:  # offline random-weight presets ("tiny", "small"): built, then loaded like any checkpoint
        path = str(build_checkpoint(name, cache_dir))
    elif (name.startswith((".", os.path.sep)) or name.count("/") > 1) and not os.path.isdir(name):
        raise ModelLoadError(f"Model directory {name!r} does not exist; use --model tiny for the offline model.")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32

    def from_pretrained(local_only: bool):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=dtype, attn_implementation="sdpa", local_files_only=local_only)
        return tokenizer, model

    try:
        try:  # a cached or local checkpoint needs no network
            tokenizer, model = from_pretrained(local_only=True)
        except OSError:
            if os.path.isdir(path) or not _hub_reachable():
                raise
            tokenizer, model = from_pretrained(local_only=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"Could not load model {name!r} (not a local Qwen2.5-VL checkpoint, not in the cache, and the "
            f"hub is unreachable or refused it); use --model tiny for the offline random-weight model."
        ) from exc
    return Backbone(model.to(dev), tokenizer, dev, name)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick TCP connect to the model hub, so an offline machine fails in seconds, not after
    a minute of download retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False
