"""Offline random-weight Qwen2.5-VL checkpoints ("presets"), built locally for tests, benchmarks and the demo.

`build_checkpoint(preset)` writes an ordinary Hugging Face checkpoint directory (config, safetensors
weights, tokenizer files); the backbone then loads it with the *same* `from_pretrained` call it uses
for `Qwen/Qwen2.5-VL-7B-Instruct`. Only the sizes and the weights differ: the architecture (vision
tower with window attention, patch merger, M-RoPE text decoder with GQA) is the real one.

Presets (`PRESETS`):

* `tiny`: hidden 64, 2 decoder layers, 4 query / 2 KV heads (head_dim 16); vision depth 2, width 32.
  Builds in about a second; what the tests use. Its sizes, seed and format are frozen: its
  fingerprint (and so its cache directory and weights) must not change.
* `small`: Qwen2.5-VL-3B-Instruct's layer shapes with fewer layers, for benchmarks whose CPU
  figures should be dominated by matrix products rather than Python overhead. Decoder: hidden
  2048, MLP 11008, 16 query / 2 KV heads of head_dim 128 (3B's GQA), M-RoPE sections (16, 24, 24),
  4 layers (3B: 36). Vision: patch 14, spatial merge 2, temporal patch 2, window 112 px, width
  1280, 16 heads of 80, MLP 3420, 4 blocks (3B: 32) with the last one full-attention (3B: every
  8th). About 0.43 G parameters, 1.7 GB in float32; builds in 10-40 s on two cores.

The tokenizer is byte-level (every UTF-8 byte is a token, no merges) plus Qwen's special tokens, so
any question round-trips and the chat markup (`<|im_start|>`, `<|vision_start|>`...) is tokenised
exactly as the real tokenizer does: one id per special token.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

# Qwen2.5's special tokens, in their real order (ids here start after the 256 byte tokens).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Sizes of the tiny model. head_dim = 64 / 4 = 16, so the M-RoPE sections must sum to 8.
TINY_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
)
TINY_VISION = dict(
    depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
    fullatt_block_indexes=[1],
)
TINY_SEED = 0
_FORMAT_VERSION = 1  # bump when the builder changes, so stale cached checkpoints are rebuilt

# Qwen2.5-VL-3B-Instruct's shapes with 4 decoder layers (of 36) and 4 vision blocks (of 32).
# head_dim = 2048 / 16 = 128, so the M-RoPE sections sum to 64 as in 3B.
SMALL_TEXT = dict(
    hidden_size=2048, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=16,
    num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
)
SMALL_VISION = dict(
    depth=4, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
    fullatt_block_indexes=[3],
)


@dataclass(frozen=True)
class Preset:
    """One offline checkpoint: its Qwen2.5-VL text and vision sizes and the seed of its weights."""

    name: str
    text: dict
    vision: dict
    seed: int


PRESETS = {
    "tiny": Preset("tiny", TINY_TEXT, TINY_VISION, TINY_SEED),
    "small": Preset("small", SMALL_TEXT, SMALL_VISION, seed=0),
}


def _byte_vocab() -> dict[str, int]:
    """The GPT-2 byte -> printable-character map, as a vocab {char: byte value}."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def build_tiny_tokenizer():
    """A byte-level fast tokenizer with Qwen's special tokens (ids 256..269)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab=_byte_vocab(), merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    return tok


def tiny_config(tokenizer):
    """The Qwen2.5-VL config of the tiny model, with token ids taken from `tokenizer`."""
    return preset_config(PRESETS["tiny"], tokenizer)


def preset_config(preset: Preset, tokenizer):
    """The Qwen2.5-VL config of `preset`, with token ids taken from `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab = (len(tokenizer) + 7) // 8 * 8
    text = dict(preset.text, vocab_size=vocab, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=dict(preset.vision),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _fingerprint(preset: Preset) -> str:
    # The tiny preset's recipe [text, vision, seed, format] is what older versions hashed, so its
    # cache directory (and every test fixture built from it) stays the same.
    blob = json.dumps([preset.text, preset.vision, preset.seed, _FORMAT_VERSION], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def default_cache_dir() -> Path:
    root = os.environ.get("MEMSTREAM_CACHE") or Path.home() / ".cache" / "memstream"
    return Path(root)


def build_tiny_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the directory of the tiny checkpoint, building it (about a second) if absent."""
    return build_checkpoint("tiny", cache_dir)


def build_checkpoint(preset: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the directory of preset `preset` ("tiny" or "small"), building it if absent.

    Weights are drawn from a fixed seed, so every machine builds identical weights. The build
    happens in a temporary directory that is renamed into place, so concurrent builders are safe.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    spec = PRESETS[preset]
    target = Path(cache_dir or default_cache_dir()) / f"{spec.name}-qwen2_5_vl-{_fingerprint(spec)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    try:
        tokenizer = build_tiny_tokenizer()
        config = preset_config(spec, tokenizer)
        state = torch.random.get_rng_state()
        torch.manual_seed(spec.seed)
        try:
            model = Qwen2_5_VLForConditionalGeneration(config)
        finally:
            torch.random.set_rng_state(state)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: its checkpoint is identical
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
