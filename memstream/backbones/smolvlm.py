"""SmolVLM2 (transformers `smolvlm`, the SmolVLM2 Video-Instruct checkpoints): adapter and offline presets.

What is specific to this family (checked against transformers 5.23's `SmolVLMProcessor.replace_video_token`
and its chat template):
* A block is one frame. SmolVLM2's video prompt writes each sampled frame as
  `\\nFrame from MM:SS:<fake_token_around_image><global-img>` + `<image>` x n + `<fake_token_around_image>`,
  MM:SS the frame's own time (minutes, seconds, truncated), so a block is that text with the frame's n
  visual tokens in it: the timestamp is stored, retrieved and dropped together with its frame.
  The time is the frame's real time (a webcam's arrival time, a file's frame timestamp), not i / fps.
* The vision tower (SigLIP) encodes each frame alone; the connector's pixel shuffle needs a square
  patch grid, so frames are resized to a square of side `g * patch * scale_factor` with g * g tokens.
  The real processor uses 512 px (64 tokens) on 256M/500M and 384 px (81 tokens) on 2.2B.
* Positions are 1-D RoPE (a Llama decoder): `LinearPositionTracker` below hands out [1, n] positions,
  one step per token, blocks packed one after the other; the policies move them through its methods.
* The chat: `<|im_start|>User: ` + the video prompt's intro + frames + `\\n\\n` + question +
  `<end_of_utterance>\\nAssistant:`. The intro of the real prompt names the frame count and the
  duration, which a live stream does not know yet: ours says "a live video" instead.

Presets (offline random weights, same architecture):
* `tiny-smolvlm2`: hidden 64, 2 decoder layers, 4 query / 2 KV heads (head_dim 16); vision width 32,
  depth 2, patch 8 at 64 px, scale factor 2 (ppt 16). Builds in about a second; what the tests use.
* `small-smolvlm2-256m`, `small-smolvlm2-500m`, `small-smolvlm2-2.2b`: the real layer shapes of
  SmolVLM2-256M-Video-Instruct, -500M-Video-Instruct and SmolVLM2-2.2B-Instruct (text decoder, vision
  tower, connector) with 4 decoder layers and 4 vision layers; `bench live` scales by the real depths
  (`REAL_DEPTHS`). Sources of the shapes (config.json files on the hub, found with the search tool):
  256M: SmolLM2-135M (576 wide, MLP 1536, 30 layers, 9 / 3 heads of 64, 8192 positions, rope_theta 1e5)
  + SigLIP-B/16 at 512 px, scale factor 4 (HuggingFaceTB/SmolVLM-256M-Instruct, the 256M video model's
  base); 500M: 960 wide, MLP 2560, 15 / 5 heads of 64, scale 4 (vidore/ColSmolVLM-Instruct-500M-base,
  built on SmolVLM-500M-Instruct), 32 layers as SmolLM2-360M; 2.2B: SmolLM2-1.7B (2048 wide, MLP 8192,
  24 layers, 32 / 32 heads of 64, rope_theta 130000) with 16384 positions, SigLIP-so400m/14 at 384 px,
  scale 3, 81 tokens per image (HuggingFaceTB/SmolVLM-Base and SmolLM2-1.7B).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .. import attention
from ..positions import PositionTracker
from . import presets
from .base import Backbone, BackboneSpec, ChatTemplate, KVCache
from .family import Family

MODEL_TYPE = "smolvlm"

# SmolVLM's image processor: rescale to [0, 1], then normalise with mean 0.5 and std 0.5.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5

INTRO = "You are provided the following series of frames from a live video.\n"  # see the module docstring
FRAME_TEXT = "\nFrame from {minutes:02d}:{seconds:02d}:"  # the processor's FRAME_TIMESTAMP_MESSAGE
CHAT = ChatTemplate(
    sink="<|im_start|>User: " + INTRO,
    after_video="\n\n",  # the processor's DEFAULT_MEDIA_OUTTRO
    assistant_turn="<end_of_utterance>\nAssistant:",
    next_user_turn="<end_of_utterance>\nUser: ",
)

# The special tokens SmolVLM2's prompts use (ids in the presets start after the 256 byte tokens).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                  "<end_of_utterance>", "<global-img>")

TINY = presets.Preset(
    "tiny-smolvlm2", MODEL_TYPE, seed=0, special_tokens=SPECIAL_TOKENS,
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=8192, rms_norm_eps=1e-5,
              rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                patch_size=8, image_size=64),
    extra=dict(scale_factor=2),
)


def _small(name: str, text: dict, vision: dict, scale_factor: int) -> presets.Preset:
    """A real-shape preset: the checkpoint's layer shapes with 4 decoder and 4 vision layers."""
    return presets.Preset(name, MODEL_TYPE, seed=0, special_tokens=SPECIAL_TOKENS,
                          text=dict(text, num_hidden_layers=4, rms_norm_eps=1e-5),
                          vision=dict(vision, num_hidden_layers=4), extra=dict(scale_factor=scale_factor))


SIGLIP_B16_512 = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, patch_size=16, image_size=512)
SIGLIP_SO400M_384 = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, patch_size=14,
                         image_size=384)
SMALL_256M = _small("small-smolvlm2-256m", dict(
    hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
    max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
    SIGLIP_B16_512, scale_factor=4)
SMALL_500M = _small("small-smolvlm2-500m", dict(
    hidden_size=960, intermediate_size=2560, num_attention_heads=15, num_key_value_heads=5, head_dim=64,
    max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
    SIGLIP_B16_512, scale_factor=4)
SMALL_2_2B = _small("small-smolvlm2-2.2b", dict(
    hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=32, head_dim=64,
    max_position_embeddings=16384, rope_parameters={"rope_type": "default", "rope_theta": 130000.0}),
    SIGLIP_SO400M_384, scale_factor=3)
# (decoder layers, vision layers) of the real checkpoints, for benchmarks that scale the small presets.
REAL_DEPTHS = {"small-smolvlm2-256m": (30, 12), "small-smolvlm2-500m": (32, 12), "small-smolvlm2-2.2b": (24, 27)}
# The real processors' tokens per frame (a 512-px frame at scale 4; a 384-px frame at scale 3).
NATIVE_TOKENS_PER_FRAME = {"small-smolvlm2-256m": 64, "small-smolvlm2-500m": 64, "small-smolvlm2-2.2b": 81}


class LinearPositionTracker(PositionTracker):
    """1-D positions ([1, n]): one step per token, text and blocks alike, each block right after the last.

    A block's `t_offset` is the number of positions before it since the video start; `interval`, the
    width of a compact slot, is the largest block seen (blocks of one stream have the same size unless a
    timestamp grows a digit). Compact layouts (rekv's slots) put block j at video start + j * interval.
    Hermes' compaction re-indexes held tokens densely in order: 1-D positions have no temporal slots, so
    "slots" and "ranks" coincide.

    Worked example (20 sink tokens, blocks of 7 tokens): block 0 at 20..26 (t_offset 0), block 1 at 27..33
    (t_offset 7); the question starts at 34.
    """

    components = 1

    def __init__(self) -> None:
        super().__init__(interval=0.0)

    def text(self, n: int) -> torch.Tensor:
        if self.video_start is not None:
            raise RuntimeError("text after the video belongs to the question; use question_start()")
        pos = self.text_at(self.next_text, n)
        self.next_text += n
        return pos

    def text_at(self, start: int, n: int) -> torch.Tensor:
        return torch.arange(start, start + n, dtype=torch.long).unsqueeze(0)  # [1, n]

    def block(self, gh: int, gw: int, n_before: int = 0, n_after: int = 0) -> tuple[torch.Tensor, int]:
        if self.video_start is None:
            self.video_start = self.next_text
        n = n_before + gh * gw + n_after
        t_off = self.next_text - self.video_start
        pos = self.text_at(self.next_text, n)  # [1, n]
        self.next_text += n
        self.interval = max(self.interval, float(n))
        self.blocks += 1
        return pos, t_off

    def slot_start(self, slot: int) -> int:
        """Offset from the video start of compact slot `slot`."""
        return int(slot * self.interval)

    def compact_question_start(self, n_blocks: int, gh: int, gw: int) -> int:
        assert self.video_start is not None
        return self.video_start + self.slot_start(n_blocks)

    def slot_delta(self, t_offset: int, slot: int, n: int) -> torch.Tensor:
        return torch.full((1, n), self.slot_start(slot) - t_offset, dtype=torch.long)

    def next_block_max(self, gh: int, gw: int) -> int:
        return self.next_text + max(int(self.interval), gh * gw) - 1

    def slot_layout(self, pos: torch.Tensor, block: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        _, rank = torch.unique(pos[0], sorted=True, return_inverse=True)
        return (self.video_start + rank).unsqueeze(0)

    def resume(self, held: list[torch.Tensor], gh: int, gw: int, ranked: bool, floor: int) -> None:
        self.next_text = max(floor, self.video_start, max((int(p.max()) + 1 for p in held), default=0))


def preset_tokenizer():
    """The presets' byte-level tokenizer with SmolVLM2's special tokens (ids 256..262)."""
    return presets.byte_tokenizer(SPECIAL_TOKENS, eos="<end_of_utterance>", pad="<|endoftext|>")


def preset_config(preset: presets.Preset, tokenizer):
    """The SmolVLM config of `preset`, with token ids taken from `tokenizer`."""
    from transformers import SmolVLMConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = (len(tokenizer) + 7) // 8 * 8
    text = dict(preset.text, model_type="llama", vocab_size=vocab, bos_token_id=ids["<|im_start|>"],
                eos_token_id=ids["<end_of_utterance>"], pad_token_id=ids["<|endoftext|>"])
    return SmolVLMConfig(text_config=text, vision_config=dict(preset.vision), scale_factor=preset.extra["scale_factor"],
                         image_token_id=ids["<image>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)


# the presets' random-weight models, and (tokenizer, model) of a real SmolVLM2 checkpoint
build_model = presets.RandomModel("SmolVLMForConditionalGeneration", preset_config)
load_model = presets.TransformersLoader("SmolVLMForConditionalGeneration")


def frame_text(time_s: float) -> str:
    """The text SmolVLM2's video prompt writes before a frame taken at `time_s` seconds."""
    t = max(0.0, float(time_s))
    return FRAME_TEXT.format(minutes=int(t // 60), seconds=int(t % 60))


class SmolVLMBackbone(Backbone):
    """A loaded SmolVLM2 with the hooks and helpers the memory needs."""

    def __init__(self, model, tokenizer, device: torch.device, name: str):
        super().__init__(model, tokenizer, device, name, CHAT)
        cfg, vcfg = model.config.text_config, model.config.vision_config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.spec = BackboneSpec(
            n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
            n_kv_heads=cfg.num_key_value_heads, head_dim=head_dim, hidden=cfg.hidden_size,
            vocab=cfg.vocab_size, patch=vcfg.patch_size, merge=model.config.scale_factor, frames_per_block=1,
            tokens_per_second=0.0,  # 1-D positions count tokens, not time
            max_positions=int(cfg.max_position_embeddings),
            # the real processor's frame: image_size pixels, (image_size / patch / scale)^2 tokens (64 or 81)
            default_tokens_per_frame=(vcfg.image_size // (vcfg.patch_size * model.config.scale_factor)) ** 2,
        )
        self.lm = model.model.text_model
        self.decoder_layers = self.lm.layers
        model.set_attn_implementation({"text_config": attention.ATTENTION_NAME, "vision_config": "sdpa"})
        self.install_capture_hooks(self.lm.layers)
        self.eos_ids = {i for i in (tokenizer.convert_tokens_to_ids("<end_of_utterance>"), tokenizer.eos_token_id)
                        if i is not None}
        self.image_token_id = model.config.image_token_id
        around = self.tokenize("<fake_token_around_image>")
        self._before_image = around + self.tokenize("<global-img>")  # after the timestamp text
        self._after_image = around

    # ---- vision -------------------------------------------------------------------------------
    def frame_size(self, height: int, width: int, tokens_per_frame: int) -> tuple[int, int]:
        """A square of g x g tokens, g = floor(sqrt(tokens_per_frame)) (the connector needs a square grid)."""
        side = max(1, math.isqrt(int(tokens_per_frame))) * self.spec.pixels_per_token
        return side, side

    def pixels(self, frames: np.ndarray) -> torch.Tensor:
        """Frames uint8 [T, H, W, 3] -> pixel_values [1, T, 3, H, W], normalised as the processor does."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)
        x = (x - PIXEL_MEAN) / PIXEL_STD
        return x.permute(0, 3, 1, 2).unsqueeze(0).to(self.device, self.dtype)

    @torch.inference_mode()
    def encode_blocks(self, frames: np.ndarray) -> torch.Tensor:
        """Frames uint8 [k, S, S, 3] (square) -> visual tokens [k, (S/ppt)^2, hidden]: each frame alone."""
        out = self.model.model.get_image_features(self.pixels(frames))
        tokens = torch.cat(list(out.pooler_output))  # [k * n, hidden]: one entry per batch row, frames in order
        return tokens.view(len(frames), -1, tokens.shape[-1])

    def position_tracker(self, fps: float) -> PositionTracker:
        return LinearPositionTracker()

    # ---- the text inside a block --------------------------------------------------------------
    def block_text(self, times: tuple[float, ...]) -> tuple[list[int], list[int]]:
        """Token ids before and after a frame's visual tokens (its timestamp and image markers)."""
        return self.tokenize(frame_text(times[0])) + self._before_image, self._after_image

    # ---- text and decoder ---------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.lm.embed_tokens(ids)

    @torch.inference_mode()
    def run_decoder(self, embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                    logits: bool = True) -> torch.Tensor | None:
        """embeds [S, hidden], positions [1, S] -> logits of the last token [vocab] (float32) or None."""
        h = embeds.unsqueeze(0).to(self.dtype)  # [1, S, hidden]
        pos = positions.to(self.device)  # [1, S]: the batch of one
        rope = self.lm.rotary_emb(h, pos)
        for layer in self.lm.layers:
            h = layer(h, attention_mask=None, position_embeddings=rope, past_key_values=cache, use_cache=True)
        if not logits:
            return None
        last = self.lm.norm(h[:, -1])
        return self.model.lm_head(last)[0].float()

    def rotate_keys(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Move post-RoPE keys [..., S, d] by delta [1, S]: RoPE rotations compose, so this is exact."""
        cos, sin = self.lm.rotary_emb(keys, delta.to(keys.device))  # [1, S, d]
        cos, sin = cos[0].to(keys.dtype), sin[0].to(keys.dtype)
        half = keys.shape[-1] // 2
        rotated_half = torch.cat((-keys[..., half:], keys[..., :half]), dim=-1)
        return keys * cos + rotated_half * sin

    # ---- the oracle ---------------------------------------------------------------------------
    @torch.inference_mode()
    def stock_forward(self, before: list[int], frames: np.ndarray, times: list[tuple[float, ...]],
                      after: list[int], positions: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """`SmolVLMForConditionalGeneration.forward` over before + each frame's prompt (timestamp, markers,
        <image> x n) + after, with all frames through its own vision tower at once."""
        if len(times) != len(frames):
            raise ValueError("SmolVLM2's prompt needs every frame's time")
        n = (frames.shape[1] // self.spec.pixels_per_token) ** 2
        ids = list(before)
        for block_times in times:
            pre, post = self.block_text(block_times)
            ids += pre + [self.image_token_id] * n + post
        ids += after
        out = self.model(input_ids=torch.tensor([ids], device=self.device), pixel_values=self.pixels(frames),
                         position_ids=positions.to(self.device),
                         use_cache=True)
        return out.logits[0, -1].float(), out.past_key_values

    @torch.inference_mode()
    def stock_step(self, cache: Any, token: int, position: int) -> tuple[torch.Tensor, Any]:
        out = self.model(input_ids=torch.tensor([[token]], device=self.device), past_key_values=cache,
                         position_ids=torch.full((1, 1), position, device=self.device), use_cache=True)
        return out.logits[0, -1].float(), out.past_key_values


FAMILY = Family(
    model_type=MODEL_TYPE,
    backbone=SmolVLMBackbone,
    load_model=load_model,
    presets={p.name: p for p in (TINY, SMALL_256M, SMALL_500M, SMALL_2_2B)},
    make_tokenizer=preset_tokenizer,
    build_model=build_model,
)
