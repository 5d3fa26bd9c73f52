"""One backbone family as the registry sees it: how to load it and how to build its offline presets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .base import Backbone
from .presets import Preset


@dataclass(frozen=True)
class Family:
    """A registry entry of `memstream.backbones`, keyed by the checkpoint's `model_type`."""

    model_type: str  # transformers' model_type of the family's checkpoints ("qwen2_5_vl")
    backbone: Callable[..., Backbone]  # (model, tokenizer, device, name) -> Backbone
    load_model: Callable[[str, torch.dtype, bool], tuple[Any, torch.nn.Module]]  # (path, dtype, local_only)
    presets: dict[str, Preset] = field(default_factory=dict)  # offline random-weight presets by name
    make_tokenizer: Callable[[], Any] | None = None  # the presets' tokenizer
    build_model: Callable[[Preset, Any], torch.nn.Module] | None = None  # (preset, tokenizer) -> random model
