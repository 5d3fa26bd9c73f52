"""Qwen3-VL (transformers `qwen3_vl`): the backbone adapter, its positions and its offline presets.

What differs from Qwen2.5-VL (checked against transformers 5.23's `processing_qwen3_vl.py`,
`Qwen3VLModel.get_rope_index` and `Qwen3VLTextModel.forward`):
* Each block (a temporal patch of 2 frames, (H/32) x (W/32) tokens: 16-px patches merged 2 x 2) comes
  with its own text: `<t seconds>` (t = the mean time of its frames, one decimal) and its own
  `<|vision_start|>` ... `<|vision_end|>` markers (`block_text`). t comes from the frames' real times
  (a webcam's arrival times, a file's timestamps), never from the nominal fps.
* Positions are one running counter (`RunningPositions`): text advances it by one per token; a block's
  visual tokens take (s, s + row, s + col) with s the counter, which then advances by max(gh, gw). Time
  lives only in the timestamp text, not in the temporal component.
* M-RoPE is interleaved: frequency pair i follows h when i % 3 == 1, w when i % 3 == 2 (within the
  `mrope_section` [24, 20, 20] of the real checkpoints), t otherwise. The model's rotary embedding does
  the interleaving, so `rotate_keys` by a delta is exact as for Qwen2.5-VL.
* DeepStack: the merged outputs of some intermediate ViT layers (`deepstack_visual_indexes`) are added
  to the hidden states at the visual positions after the first D decoder layers. `encode_blocks` packs
  them behind each token's embedding ([hidden * (1 + D)] per token), so a dropped token drops them.
* Attention projections are followed by per-head RMS norms (q_norm, k_norm): the position-free
  queries/keys the memory scores with are captured after them.
* The chat template has no default system prompt; the release's processor replaces the template's
  `<|vision_start|><|video_pad|><|vision_end|>` by the per-block text (5.23's generic replacement keeps
  an extra outer pair of markers; we follow the release).

Presets (offline random weights, same architecture):
* `tiny-qwen3-vl`: hidden 64, 3 decoder layers, 4 query / 2 KV heads of 16; vision depth 3, width 32,
  DeepStack from vision layers 0 and 1 (added after decoder layers 0 and 1). What the tests use.
* `small-qwen3-vl`: Qwen3-VL-2B-Instruct's layer shapes with 4 decoder layers (of 28) and 4 vision
  blocks (of 24), 3 DeepStack mergers: about 0.36 G parameters (1.4 GB in float32). `REAL_SHAPES`
  lists the full depths of 2B and 8B so a benchmark can scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import attention
from ..positions import PositionTracker, text_positions
from . import presets, qwen2_5_vl
from .base import Backbone, BackboneSpec, ChatTemplate, KVCache, rotate_by
from .family import Family

MODEL_TYPE = "qwen3_vl"

# The video processor's normalisation (transformers' Qwen3VLVideoProcessor: IMAGENET_STANDARD_MEAN / STD).
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)

CHAT = ChatTemplate(
    sink="<|im_start|>user\n",
    after_video="",
    assistant_turn="<|im_end|>\n<|im_start|>assistant\n",
    next_user_turn="<|im_end|>\n<|im_start|>user\n",
)

# Qwen3's special tokens are Qwen2.5's, in the same order (ids in the presets start after the 256 byte tokens).
SPECIAL_TOKENS = qwen2_5_vl.SPECIAL_TOKENS

# Full depths of the real checkpoints (their hub config.json; the same values appear in transformers'
# Qwen3VLVisionConfig defaults for 8B's vision tower): what `small-qwen3-vl` trims, for benchmarks
# that scale per-layer figures. 2B: text 2048 wide, MLP 6144, 16 query / 8 KV heads of 128, rope_theta
# 5e6, 262144 positions, mrope_section [24, 20, 20] interleaved; vision 1024 wide, MLP 4096, 16 heads,
# DeepStack from ViT layers 5, 11, 17. 8B: text 4096, MLP 12288, 32 / 8 heads; vision 1152, MLP 4304,
# DeepStack 8, 16, 24.
REAL_SHAPES = {
    "Qwen/Qwen3-VL-2B-Instruct": {"decoder_layers": 28, "vision_layers": 24, "hidden": 2048},
    "Qwen/Qwen3-VL-8B-Instruct": {"decoder_layers": 36, "vision_layers": 27, "hidden": 4096},
}

# head_dim 16, so the M-RoPE sections sum to 8 frequency pairs.
TINY = presets.Preset(
    "tiny-qwen3-vl", MODEL_TYPE, seed=0, special_tokens=SPECIAL_TOKENS,
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=32768, rms_norm_eps=1e-6,
              rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [2, 3, 3],
                               "mrope_interleaved": True}),
    vision=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                deepstack_visual_indexes=[0, 1]),
)
# Qwen3-VL-2B-Instruct's layer shapes (REAL_SHAPES) with 4 decoder layers and 4 vision blocks; DeepStack
# from vision blocks 1, 2, 3 (the real model takes 3 of its 24).
SMALL = presets.Preset(
    "small-qwen3-vl", MODEL_TYPE, seed=0, special_tokens=SPECIAL_TOKENS,
    text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=4, num_attention_heads=16,
              num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-6,
              rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                               "mrope_interleaved": True}),
    vision=dict(depth=4, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                deepstack_visual_indexes=[1, 2, 3]),
)


# the presets' tokenizer: byte-level, with Qwen's special tokens (ids 256..269), as Qwen2.5-VL's
preset_tokenizer = qwen2_5_vl.preset_tokenizer


def preset_config(preset: presets.Preset, tokenizer):
    """The Qwen3-VL config of `preset`, with token ids taken from `tokenizer`."""
    from transformers import Qwen3VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = (len(tokenizer) + 7) // 8 * 8
    text = dict(preset.text, vocab_size=vocab, pad_token_id=ids["<|endoftext|>"])
    return Qwen3VLConfig(
        text_config=text, vision_config=dict(preset.vision),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


# the presets' random-weight models, and (tokenizer, model) of a real Qwen3-VL checkpoint
build_model = presets.RandomModel("Qwen3VLForConditionalGeneration", preset_config)
load_model = presets.TransformersLoader("Qwen3VLForConditionalGeneration")


def timestamp_text(times: tuple[float, ...]) -> str:
    """The text before a block: `<t seconds>`, t the mean of its first and last frame's time, as the
    processor writes it (a padded last block lists one frame: t is that frame's time)."""
    return f"<{(times[0] + times[-1]) / 2:.1f} seconds>"


class RunningPositions(PositionTracker):
    """Qwen3-VL's positions: one running counter over text and blocks (module docstring).

    Worked example (a 2 x 3 grid, 3 sink tokens at 0..2, blocks framed by `<0.5 seconds><|vision_start|>`
    = 13 + 1 rows before and `<|vision_end|>` after):

        block 0: text 3..16, visual t = 17, h = 17..18, w = 17..19, end marker 20
        block 1: text 21..34, visual t = 35, h = 35..36, w = 35..37, end marker 38
        question text from 39 on.

    A block's temporal offset (`BlockInfo.t_offset`) is where its first row sits after the video start.
    Compact layouts give every slot the width of the widest block so far (`span`), so that moving a
    block is one shift of all three components of all of its rows.
    """

    def __init__(self) -> None:
        super().__init__(interval=1.0)  # no time in the positions: the interval is unused
        self.span = 0  # positions the widest block took (its rows' first to the next free position)

    def block(self, gh: int, gw: int, n_before: int = 0, n_after: int = 0) -> tuple[torch.Tensor, int]:
        if self.video_start is None:
            self.video_start = self.next_text
        first = self.next_text
        s = first + n_before  # where the visual tokens start
        rows = torch.arange(gh, dtype=torch.long).repeat_interleave(gw)  # [gh*gw]
        cols = torch.arange(gw, dtype=torch.long).repeat(gh)  # [gh*gw]
        visual = torch.stack([torch.zeros_like(rows), rows, cols]) + s  # [3, gh*gw]
        end = s + max(gh, gw)  # the counter after the visual tokens
        pos = torch.cat([text_positions(first, n_before), visual, text_positions(end, n_after)], dim=1)
        self.next_text = end + n_after
        self.span = max(self.span, self.next_text - first)
        self.blocks += 1
        return pos, first - self.video_start

    def save(self) -> tuple:
        return (*super().save(), self.span)

    def restore(self, state: tuple) -> None:
        *base, self.span = state
        super().restore(tuple(base))

    def compact_question_start(self, n_blocks: int, gh: int, gw: int) -> int:
        assert self.video_start is not None
        return self.video_start + n_blocks * self.span

    def slot_delta(self, t_offset: int, slot: int, n: int) -> torch.Tensor:
        return torch.full((3, n), slot * self.span - t_offset, dtype=torch.long)

    def next_block_max(self, gh: int, gw: int) -> int:
        return self.next_text + max(self.span, max(gh, gw) + 1) - 1

    def slot_layout(self, pos: torch.Tensor, block: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        blocks, slot = torch.unique(block, return_inverse=True)  # slot [n], time order
        first = torch.full((blocks.numel(),), torch.iinfo(torch.long).max).scatter_reduce(
            0, slot, pos[0], reduce="amin")  # [n_blocks]: each held block's first position
        return pos + (self.video_start + slot * self.span - first[slot])  # every component moves

    def resume(self, held: list[torch.Tensor], gh: int, gw: int, ranked: bool, floor: int) -> None:
        self.next_text = max(floor, self.video_start, max((int(p.max()) + 1 for p in held), default=0))


class Qwen3VLBackbone(Backbone):
    """A loaded Qwen3-VL with the hooks and helpers the memory needs."""

    def __init__(self, model, tokenizer, device: torch.device, name: str):
        super().__init__(model, tokenizer, device, name, CHAT)
        cfg, vcfg = model.config.text_config, model.config.vision_config
        self.spec = BackboneSpec(
            n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
            n_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
            hidden=cfg.hidden_size, vocab=cfg.vocab_size, patch=vcfg.patch_size,
            merge=vcfg.spatial_merge_size, frames_per_block=vcfg.temporal_patch_size,
            tokens_per_second=0.0,  # time is in the timestamp text, not in the positions
            max_positions=int(cfg.max_position_embeddings),
        )
        self.deepstack = len(vcfg.deepstack_visual_indexes)  # D: extra rows per visual token
        self.lm = model.model.language_model
        self.decoder_layers = self.lm.layers
        model.set_attn_implementation({"text_config": attention.ATTENTION_NAME, "vision_config": "sdpa"})
        # position-free queries/keys are what RoPE rotates: after the per-head norms
        self.install_capture_hooks(self.lm.layers, q_name="q_norm", k_name="k_norm")
        self.eos_ids = {i for i in (tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                    tokenizer.convert_tokens_to_ids("<|endoftext|>")) if i is not None}
        self.video_token_id = model.config.video_token_id

    # ---- vision -------------------------------------------------------------------------------
    def patchify(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames uint8 [T, H, W, 3] (T even, H and W multiples of 32) -> (pixel_values
        [T/2 * H/16 * W/16, 3 * 2 * 16 * 16], grid_thw [1, 3]), in the processor's layout: patches ordered
        (block, row of 2x2, col of 2x2, 2, 2), each flattened as (channel, frame, y, x)."""
        s = self.spec
        tp = s.frames_per_block
        t, h, w, _ = frames.shape
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)  # [T, H, W, 3]
        x = ((x - torch.tensor(PIXEL_MEAN)) / torch.tensor(PIXEL_STD)).permute(0, 3, 1, 2)  # [T, 3, H, W]
        gt, gh, gw, m, p = t // tp, h // s.patch, w // s.patch, s.merge, s.patch
        x = x.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # [gt, gh/m, gw/m, m, m, 3, tp, p, p]
        return x.reshape(gt * gh * gw, 3 * tp * p * p), torch.tensor([[gt, gh, gw]])

    @torch.inference_mode()
    def encode_blocks(self, frames: np.ndarray) -> torch.Tensor:
        """Frames uint8 [2k, H, W, 3] -> visual tokens [k, (H/32)*(W/32), hidden * (1 + D)]: each token's
        embedding, then its D DeepStack rows. The vision tower attends within a temporal patch only, so
        k blocks in one call give the same tokens as k calls."""
        pixels, grid = self.patchify(frames)
        out = self.model.model.get_video_features(pixels.to(self.device, self.dtype), grid.to(self.device))
        rows = [torch.cat(out.pooler_output)] + [torch.cat(f) for f in out.deepstack_features]  # [k*n, hidden] each
        tokens = torch.cat(rows, dim=-1)  # [k * n, hidden * (1 + D)]
        return tokens.view(int(grid[0, 0]), -1, tokens.shape[-1])

    def block_text(self, times: tuple[float, ...]) -> tuple[list[int], list[int]]:
        """`<t seconds><|vision_start|>` before the block's visual tokens, `<|vision_end|>` after."""
        return self.tokenize(timestamp_text(times) + "<|vision_start|>"), self.tokenize("<|vision_end|>")

    def position_tracker(self, fps: float) -> PositionTracker:
        return RunningPositions()

    # ---- text and decoder ---------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.lm.embed_tokens(ids)

    @torch.inference_mode()
    def run_decoder(self, embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                    logits: bool = True) -> torch.Tensor | None:
        """embeds [S, hidden] or [S, hidden * (1 + D)] (a block: DeepStack rows, zero at its text rows),
        positions [3, S] -> logits of the last token [vocab] (float32) or None."""
        hidden = self.spec.hidden
        x = embeds.to(self.dtype).unsqueeze(0)  # [1, S, width]
        h, extra = x[..., :hidden], x[..., hidden:].unflatten(-1, (-1, hidden))  # [1, S, hidden], [1, S, D', hidden]
        rope = self.lm.rotary_emb(h, positions.to(self.device).unsqueeze(1))  # positions [3, 1, S]
        for i, layer in enumerate(self.lm.layers):
            h = layer(h, attention_mask=None, position_embeddings=rope, past_key_values=cache, use_cache=True)
            if i < extra.shape[-2]:  # DeepStack: added after the first D layers, as the stock model does
                h = h + extra[..., i, :]
        if not logits:
            return None
        last = self.lm.norm(h[:, -1])
        return self.model.lm_head(last)[0].float()

    def rotate_keys(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Move post-RoPE keys to new positions: keys [..., S, d], delta [3, S] (new - old); exact, the
        rotary embedding interleaving the components as it does for the forward."""
        return rotate_by(self.lm.rotary_emb, keys, delta)

    # ---- the oracle ---------------------------------------------------------------------------
    @torch.inference_mode()
    def stock_forward(self, before: list[int], frames: np.ndarray, times: list[tuple[float, ...]],
                      after: list[int], positions: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """`Qwen3VLForConditionalGeneration.forward` over before + (per block: its text, <|video_pad|> x n,
        <|vision_end|>) + after, with its own vision tower, DeepStack and KV cache."""
        pixels, grid = self.patchify(frames)
        per_block = int(grid[0, 1] * grid[0, 2]) // (self.spec.merge ** 2)
        ids = list(before)
        for t in times:
            head, tail = self.block_text(t)
            ids += head + [self.video_token_id] * per_block + tail
        ids += after
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
    backbone=Qwen3VLBackbone,
    load_model=load_model,
    presets={p.name: p for p in (TINY, SMALL)},
    make_tokenizer=preset_tokenizer,
    build_model=build_model,
)
