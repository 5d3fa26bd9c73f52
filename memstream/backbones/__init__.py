"""Backbones: the Video-LLM families memstream runs on, behind one interface (`base.Backbone`).

    from memstream.backbones import load_backbone
    bb = load_backbone("tiny")                       # an offline preset, a hub id or a local directory

A family is one module (e.g. `qwen2_5_vl.py`: its `Backbone` subclass, loader and presets) plus one
line in `FAMILIES` below, keyed by the transformers `model_type` that its checkpoints declare; a
checkpoint's family is read from its config, so `memstream.load(model=<hub id or dir>)` picks the
right adapter. Presets (random weights, built offline) are named across families: "tiny", "small".
"""

from __future__ import annotations

import os

import torch

from ..errors import ModelLoadError
from ..loading import hub_reachable, resolve_device
from . import qwen2_5_vl, qwen3_vl, smolvlm
from .base import Backbone, BackboneSpec, Capture, ChatTemplate, KVCache
from .family import Family
from .presets import Preset, build_checkpoint

__all__ = ["Backbone", "BackboneSpec", "Capture", "ChatTemplate", "KVCache", "Family", "Preset",
           "FAMILIES", "PRESETS", "register_backbone", "load_backbone", "preset_checkpoint",
           "DEFAULT_CUDA_MODEL", "DEFAULT_CPU_MODEL"]

DEFAULT_CUDA_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
# Without CUDA: SmolVLM2-500M, picked from `bench live` (BENCHMARKS.md, "Live rate on a CPU").
DEFAULT_CPU_MODEL = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"

FAMILIES: dict[str, Family] = {}  # model_type -> family
PRESETS: dict[str, Family] = {}  # preset name -> its family


def register_backbone(family: Family) -> None:
    """Make a family loadable by its `model_type` and its presets by name."""
    clash = sorted(set(family.presets) & {p for p, f in PRESETS.items() if f.model_type != family.model_type})
    if clash:
        raise ValueError(f"preset names {clash} are taken by another family")
    FAMILIES[family.model_type] = family
    PRESETS.update({name: family for name in family.presets})


register_backbone(qwen2_5_vl.FAMILY)
register_backbone(qwen3_vl.FAMILY)
register_backbone(smolvlm.FAMILY)


def preset_checkpoint(name: str, cache_dir: str | os.PathLike | None = None):
    """The directory of preset `name`'s checkpoint, built offline if absent (about a second for tiny)."""
    family = PRESETS[name]
    return build_checkpoint(family.presets[name], family.make_tokenizer, family.build_model, cache_dir)


def load_backbone(name: str | None = None, device: str | None = "auto", cache_dir: str | None = None,
                  dtype: torch.dtype | None = None) -> Backbone:
    """Load a backbone from a preset name, a hub id or a local directory; the family comes from the
    checkpoint's `model_type`. `dtype` None: bf16 on CUDA, fp32 on CPU. `name=None`: the default real model
    for the device. Raises ModelLoadError with one sentence when it cannot."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dev = resolve_device(device)
    if name is None:
        name = DEFAULT_CUDA_MODEL if dev.type == "cuda" else DEFAULT_CPU_MODEL
    if name in PRESETS:  # built, then loaded like any checkpoint
        path, family = str(preset_checkpoint(name, cache_dir)), PRESETS[name]
    else:
        if (name.startswith((".", os.path.sep)) or name.count("/") > 1) and not os.path.isdir(name):
            raise ModelLoadError(f"Model directory {name!r} does not exist; use --model tiny for the offline model.")
        path, family = name, None
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    try:
        family = family or _family_of(path)
        tokenizer, model = _local_first(lambda local_only: family.load_model(path, dtype, local_only), path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"Could not load model {name!r} (not a local checkpoint of a known family, not in the cache, and the "
            f"hub is unreachable or refused it); use --model tiny for the offline random-weight model."
        ) from exc
    return family.backbone(model.to(dev), tokenizer, dev, name)


def _family_of(path: str) -> Family:
    """The registered family of the checkpoint at `path` (hub id or directory), from its model_type."""
    from transformers import AutoConfig

    config = _local_first(lambda local_only: AutoConfig.from_pretrained(path, local_files_only=local_only), path)
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ModelLoadError(f"Model {path!r} is a {config.model_type!r} checkpoint; memstream runs "
                             f"{', '.join(sorted(FAMILIES))}.")
    return family


def _local_first(load, path: str):
    """`load(local_only=True)`; when that misses, `load(local_only=False)` if a download can work."""
    try:  # a cached or local checkpoint needs no network
        return load(True)
    except OSError:
        if os.path.isdir(path) or not hub_reachable():
            raise
        return load(False)
