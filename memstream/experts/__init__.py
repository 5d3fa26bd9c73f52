"""External retrieval experts: the registry (`EXPERTS`) and `load_expert`.

An expert is an image-text model that ranks memory blocks for a question independently of the backbone
(DESIGN.md 2.3, remedy 4). Real experts are open_clip checkpoints fetched from the Hugging Face hub; the
"tiny" one is a random open_clip CLIP built offline, for tests and machines without a network.

Loading never hangs offline: a cached checkpoint is loaded straight from its file (no hub request at
all), and otherwise one quick TCP connect decides whether a download is worth trying, so an offline
machine gets a one-sentence `ModelLoadError` in seconds instead of minutes of download retries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .. import loading
from ..errors import ConfigError, ModelLoadError
from .clip import Expert, block_scores
from .tiny import TINY_NAME, build_tiny_expert, build_tiny_model, tiny_tokenizer

__all__ = ["EXPERTS", "Expert", "ExpertSpec", "block_scores", "build_tiny_expert", "build_tiny_model",
           "load_expert", "tiny_tokenizer"]

NONE_NAMES = (None, "none")  # what turns the external expert off


@dataclass(frozen=True)
class ExpertSpec:
    """One registry entry: which open_clip architecture and weights an expert name stands for."""

    name: str  # registry name, as given to load_expert / --expert
    model: str  # open_clip architecture name ("ViT-B-32"), or TINY_NAME for the offline builder
    pretrained: str | None  # open_clip pretrained tag; None for random weights
    description: str  # one line for help texts and the UI


EXPERTS: dict[str, ExpertSpec] = {
    spec.name: spec for spec in (
        ExpertSpec("clip-b32", "ViT-B-32", "laion2b_s34b_b79k", "OpenCLIP ViT-B/32 trained on LAION-2B (512-d)"),
        ExpertSpec("pe-core-b16", "PE-Core-B-16", "meta", "Meta Perception Encoder Core B/16 (1024-d)"),
        ExpertSpec(TINY_NAME, TINY_NAME, None, "random 32-d open_clip CLIP built offline (tests, demos)"),
    )
}


def _suggestion() -> str:
    return "use expert='tiny' for the offline random expert, or expert='none' to turn the expert off"


def _cached_checkpoint(tag_cfg: dict, cache_dir: str | None) -> str | None:
    """The path of an already downloaded checkpoint for an open_clip pretrained tag, or None.

    Mirrors open_clip's choice of file in the hub repo: the safetensors twin first, then the pickle.
    """
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if tag_cfg.get("file"):
        return tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else None
    repo, filename = os.path.split(tag_cfg.get("hf_hub") or "")  # "org/name/" -> ("org/name", "")
    if not repo:
        return None
    filename = filename or HF_WEIGHTS_NAME
    candidates = [filename]
    if filename == HF_WEIGHTS_NAME:
        candidates.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    for name in candidates:
        path = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(path, str) and os.path.isfile(path):  # may also be a "known missing" sentinel
            return path
    return None


def _load_open_clip(spec: ExpertSpec, device: torch.device, cache_dir: str | None) -> Expert:
    """A real open_clip expert: fp16 on CUDA (as CLIP is usually served), fp32 on CPU."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    where = f"expert {spec.name!r} (open_clip {spec.model}, {spec.pretrained})"
    tag_cfg = get_pretrained_cfg(spec.model, spec.pretrained)
    model_cfg = open_clip.get_model_config(spec.model)
    if not tag_cfg or model_cfg is None:  # the registry and the installed open_clip disagree
        raise ModelLoadError(f"The installed open_clip does not know {where}; upgrade open_clip or {_suggestion()}.")
    checkpoint = _cached_checkpoint(tag_cfg, cache_dir)
    if checkpoint is None and not loading.hub_reachable():
        raise ModelLoadError(f"The weights of {where} are not cached and the model hub is unreachable; "
                             f"{_suggestion()}.")
    precision = "fp16" if device.type == "cuda" else "fp32"
    try:
        if checkpoint is not None:
            # a file path skips open_clip's hub lookup, so the tag's preprocessing must be passed explicitly
            keys = ("mean", "std", "interpolation", "resize_mode")
            model = open_clip.create_model(
                spec.model, pretrained=checkpoint, precision=precision, device=device,
                force_preprocess_cfg={k: tag_cfg[k] for k in keys if k in tag_cfg})
        else:
            model = open_clip.create_model(spec.model, pretrained=spec.pretrained, precision=precision,
                                           device=device, cache_dir=cache_dir, require_pretrained=True)
        tokenizer = open_clip.get_tokenizer(spec.model)
    except (OSError, RuntimeError, ValueError, KeyError, ImportError) as exc:
        raise ModelLoadError(f"Could not load {where}: the download or the checkpoint failed; "
                             f"{_suggestion()}.") from exc
    return Expert(spec.name, model, tokenizer, model_cfg["embed_dim"], device)


def load_expert(name: str | None, device: str | torch.device = "cpu", cache_dir: str | None = None) -> Expert | None:
    """The expert registered as `name` on `device` ("cpu", "cuda", "auto"), or None for None / "none".

    `cache_dir` is the Hugging Face cache to look in and download to (None: the default one).
    Raises ConfigError for an unknown name and ModelLoadError when real weights cannot be had.
    """
    if name in NONE_NAMES:
        return None
    spec = EXPERTS.get(name)
    if spec is None:
        choices = ", ".join([*EXPERTS, "none"])
        raise ConfigError(f"Unknown expert {name!r}; choose one of: {choices}.")

    dev = loading.resolve_device(str(device))
    if spec.model == TINY_NAME:
        return build_tiny_expert(dev)
    return _load_open_clip(spec, dev, cache_dir)
