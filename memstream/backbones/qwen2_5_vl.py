"""Qwen2.5-VL (transformers `qwen2_5_vl`): the backbone adapter and its offline presets.

What is specific to this family:
* A block is one temporal patch: 2 consecutive frames merged by the vision tower into
  (H/28) x (W/28) LLM tokens. Vision attention stays inside a temporal patch, so encoding block by
  block gives the same tokens as encoding the whole video at once.
* Positions are 3-D M-RoPE (t, h, w) with absolute time in t (`positions.py` has the worked example).
* The chat template: `<|im_start|>system ... <|vision_start|>` [video] `<|vision_end|>` question
  `<|im_end|>\\n<|im_start|>assistant\\n`.

Presets (offline random weights, same architecture):
* `tiny`: hidden 64, 2 decoder layers, 4 query / 2 KV heads (head_dim 16); vision depth 2, width 32.
  Builds in about a second; what the tests use. Its sizes, seed and format are frozen: its
  fingerprint (and so its cache directory and weights) must not change.
* `small`: Qwen2.5-VL-3B-Instruct's layer shapes with 4 decoder layers (of 36) and 4 vision blocks
  (of 32): hidden 2048, MLP 11008, 16 query / 2 KV heads of 128; vision width 1280, 16 heads, MLP 3420.
  About 0.43 G parameters (1.7 GB in float32): CPU figures dominated by matrix products.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import attention
from ..positions import PositionTracker, block_interval
from . import presets
from .base import Backbone, BackboneSpec, ChatTemplate, KVCache, rotate_by
from .family import Family

MODEL_TYPE = "qwen2_5_vl"

# CLIP normalisation used by Qwen2.5-VL's image processor.
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)

CHAT = ChatTemplate(
    sink="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>",
    after_video="<|vision_end|>",
    assistant_turn="<|im_end|>\n<|im_start|>assistant\n",
    next_user_turn="<|im_end|>\n<|im_start|>user\n",
)

# Qwen2.5's special tokens, in their real order (ids in the presets start after the 256 byte tokens).
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# head_dim = 64 / 4 = 16, so the M-RoPE sections must sum to 8.
TINY = presets.Preset(
    "tiny", MODEL_TYPE, seed=0, special_tokens=SPECIAL_TOKENS,
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
    vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
                fullatt_block_indexes=[1]),
)
# head_dim = 2048 / 16 = 128, so the M-RoPE sections sum to 64 as in 3B.
SMALL = presets.Preset(
    "small", MODEL_TYPE, seed=0, special_tokens=SPECIAL_TOKENS,
    text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=16,
              num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
    vision=dict(depth=4, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2,
                window_size=112, fullatt_block_indexes=[3]),
)

# Qwen2.5-VL-7B-Instruct's layer shapes with 4 decoder layers (of 28) and 4 vision blocks (of 32): hidden 3584,
# MLP 18944, 28 query / 4 KV heads of 128 (its config.json on the hub); the vision tower is 3B's.
SMALL_7B = presets.Preset(
    "small-7b", MODEL_TYPE, seed=0, special_tokens=SPECIAL_TOKENS,
    text=dict(SMALL.text, hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4),
    vision=dict(SMALL.vision, out_hidden_size=3584),
)


def preset_tokenizer():
    """The presets' byte-level tokenizer with Qwen's special tokens (ids 256..269)."""
    return presets.byte_tokenizer(SPECIAL_TOKENS, eos="<|im_end|>", pad="<|endoftext|>")


def preset_config(preset: presets.Preset, tokenizer):
    """The Qwen2.5-VL config of `preset`, with token ids taken from `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = (len(tokenizer) + 7) // 8 * 8
    text = dict(preset.text, vocab_size=vocab, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=dict(preset.vision),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


# the presets' random-weight models, and (tokenizer, model) of a real Qwen2.5-VL checkpoint
build_model = presets.RandomModel("Qwen2_5_VLForConditionalGeneration", preset_config)
load_model = presets.TransformersLoader("Qwen2_5_VLForConditionalGeneration")


class Qwen2_5_VLBackbone(Backbone):
    """A loaded Qwen2.5-VL with the hooks and helpers the memory needs."""

    def __init__(self, model, tokenizer, device: torch.device, name: str):
        super().__init__(model, tokenizer, device, name, CHAT)
        cfg, vcfg = model.config.text_config, model.config.vision_config
        self.spec = BackboneSpec(
            n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
            n_kv_heads=cfg.num_key_value_heads, head_dim=cfg.hidden_size // cfg.num_attention_heads,
            hidden=cfg.hidden_size, vocab=cfg.vocab_size, patch=vcfg.patch_size,
            merge=vcfg.spatial_merge_size, frames_per_block=vcfg.temporal_patch_size,
            tokens_per_second=float(vcfg.tokens_per_second), max_positions=int(cfg.max_position_embeddings),
        )
        self.lm = model.model.language_model
        # Only the text decoder uses our attention; the vision tower keeps sdpa.
        model.set_attn_implementation({"text_config": attention.ATTENTION_NAME, "vision_config": "sdpa"})
        self.decoder_layers = self.lm.layers
        self.install_capture_hooks(self.lm.layers)
        self.eos_ids = {i for i in (tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                    tokenizer.convert_tokens_to_ids("<|endoftext|>")) if i is not None}
        self.video_token_id = model.config.video_token_id

    # ---- vision -------------------------------------------------------------------------------
    def patchify(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames uint8 [T, H, W, 3] (T even, H and W multiples of 28) -> the vision tower's input.

        Returns (pixel_values [T/2 * H/14 * W/14, 3 * 2 * 14 * 14], grid_thw [1, 3]) in the
        layout of Qwen2-VL's processor: patches ordered (block, row-of-2x2, col-of-2x2, 2, 2),
        each flattened as (channel, frame, y, x).
        """
        s = self.spec
        tp = s.frames_per_block
        t, h, w, _ = frames.shape
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)  # [T, H, W, 3]
        mean = torch.tensor(PIXEL_MEAN).view(1, 1, 1, 3)
        std = torch.tensor(PIXEL_STD).view(1, 1, 1, 3)
        x = ((x - mean) / std).permute(0, 3, 1, 2)  # [T, 3, H, W]
        gt, gh, gw, m, p = t // tp, h // s.patch, w // s.patch, s.merge, s.patch
        x = x.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # [gt, gh/m, gw/m, m, m, 3, tp, p, p]
        pixels = x.reshape(gt * gh * gw, 3 * tp * p * p)
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

    def position_tracker(self, fps: float) -> PositionTracker:
        return PositionTracker(block_interval(fps, self.spec.tokens_per_second, self.spec.frames_per_block))

    # ---- text and decoder ---------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.lm.embed_tokens(ids)

    @torch.inference_mode()
    def run_decoder(self, embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                    logits: bool = True) -> torch.Tensor | None:
        """embeds [S, hidden], positions [3, S] -> logits of the last token [vocab] (float32) or None."""
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
        """Move post-RoPE keys to new positions: keys [..., S, d], delta [3, S] (new - old); exact."""
        return rotate_by(self.lm.rotary_emb, keys, delta)

    # ---- the oracle ---------------------------------------------------------------------------
    @torch.inference_mode()
    def stock_forward(self, before: list[int], frames: np.ndarray, times: list[tuple[float, ...]],
                      after: list[int], positions: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """`Qwen2_5_VLForConditionalGeneration.forward` over before + <|video_pad|> x n + after (its blocks
        carry no text, so `times` only reach it through the positions)."""
        pixels, grid = self.patchify(frames)
        n_video = int(grid[0, 0] * grid[0, 1] * grid[0, 2]) // (self.spec.merge ** 2)
        ids = before + [self.video_token_id] * n_video + after
        out = self.model(input_ids=torch.tensor([ids], device=self.device),
                         pixel_values_videos=pixels.to(self.device, self.dtype), video_grid_thw=grid.to(self.device),
                         position_ids=positions.unsqueeze(1).to(self.device), use_cache=True)
        return out.logits[0, -1].float(), out.past_key_values

    @torch.inference_mode()
    def stock_step(self, cache: Any, token: int, position: int) -> tuple[torch.Tensor, Any]:
        out = self.model(input_ids=torch.tensor([[token]], device=self.device), past_key_values=cache,
                         position_ids=torch.full((3, 1, 1), position, device=self.device), use_cache=True)
        return out.logits[0, -1].float(), out.past_key_values


FAMILY = Family(
    model_type=MODEL_TYPE,
    backbone=Qwen2_5_VLBackbone,
    load_model=load_model,
    presets={p.name: p for p in (TINY, SMALL, SMALL_7B)},
    make_tokenizer=preset_tokenizer,
    build_model=build_model,
)
