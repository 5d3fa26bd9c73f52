"""Offline random-weight checkpoints ("presets"), built locally for tests, benchmarks and the demo.

`build_checkpoint(preset)` writes an ordinary Hugging Face checkpoint directory (config, safetensors
weights, tokenizer files); the backbone then loads it with the *same* `from_pretrained` call it uses
for a real hub checkpoint. Only the sizes and the weights differ: the architecture is the real one.
Each backbone family declares its presets (`Preset`) in its own module.

The tokenizer is byte-level (every UTF-8 byte is a token, no merges) plus the family's special
tokens, so any question round-trips and the chat markup is tokenised exactly as the real tokenizer
does: one id per special token.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1  # bump when a builder changes, so stale cached checkpoints are rebuilt


@dataclass(frozen=True)
class Preset:
    """One offline checkpoint: its family's text and vision sizes and the seed of its weights."""

    name: str  # as passed to memstream.load(model=...)
    model_type: str  # the family's transformers model_type ("qwen2_5_vl")
    text: dict  # text-decoder config fields
    vision: dict  # vision-tower config fields
    seed: int  # torch seed of the random weights
    special_tokens: tuple[str, ...] = ()  # the family's special tokens, in their real order
    extra: dict = field(default_factory=dict)  # further config fields the family's builder reads


# model_type -> function(preset, tokenizer) -> an initialised random-weight model of that family
ModelBuilder = Callable[[Preset, Any], torch.nn.Module]


@dataclass(frozen=True)
class TransformersLoader:
    """`(path, dtype, local_only) -> (tokenizer, model)` for checkpoints of one transformers model class
    (a hub id or a directory), with sdpa attention: every family loads its real checkpoints this way."""

    model_class: str  # transformers' class name, e.g. "Qwen2_5_VLForConditionalGeneration"

    def __call__(self, path: str, dtype: torch.dtype, local_only: bool) -> tuple[Any, torch.nn.Module]:
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model = getattr(transformers, self.model_class).from_pretrained(
            path, dtype=dtype, attn_implementation="sdpa", local_files_only=local_only)
        return tokenizer, model


@dataclass(frozen=True)
class RandomModel:
    """A `ModelBuilder`: the family's model class initialised (random weights) from a preset's config."""

    model_class: str  # transformers' class name
    make_config: Callable[[Preset, Any], Any]  # (preset, tokenizer) -> the class's config

    def __call__(self, preset: Preset, tokenizer: Any) -> torch.nn.Module:
        import transformers

        return getattr(transformers, self.model_class)(self.make_config(preset, tokenizer))


def byte_vocab() -> dict[str, int]:
    """The GPT-2 byte -> printable-character map, as a vocab {char: byte value}."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def byte_tokenizer(special_tokens: tuple[str, ...] | list[str], eos: str, pad: str):
    """A byte-level fast tokenizer (ids 0..255) with `special_tokens` after the bytes (256, 257, ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab=byte_vocab(), merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    tok.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    tok.eos_token = eos
    tok.pad_token = pad
    return tok


def fingerprint(preset: Preset) -> str:
    """Ten hex digits of the preset's recipe: its cache directory changes when (and only when) it does."""
    recipe = [preset.text, preset.vision, preset.seed, FORMAT_VERSION]
    if preset.extra:  # presets without extras hash as before extras existed, so their caches stay valid
        recipe.append(preset.extra)
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def default_cache_dir() -> Path:
    """$MEMSTREAM_CACHE, else ~/.cache/memstream."""
    root = os.environ.get("MEMSTREAM_CACHE") or Path.home() / ".cache" / "memstream"
    return Path(root)


def build_checkpoint(preset: Preset, make_tokenizer: Callable[[], Any], make_model: ModelBuilder,
                     cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory of `preset`'s checkpoint, built (tokenizer, then a seeded random model) if absent.

    Weights come from a fixed seed, so every machine builds identical weights. The build happens in a
    temporary directory renamed into place, so concurrent builders are safe.
    """
    target = Path(cache_dir or default_cache_dir()) / f"{preset.name}-{preset.model_type}-{fingerprint(preset)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{preset.name}-", dir=target.parent))
    try:
        tokenizer = make_tokenizer()
        state = torch.random.get_rng_state()
        torch.manual_seed(preset.seed)
        try:
            model = make_model(preset, tokenizer)
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
