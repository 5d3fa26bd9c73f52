"""The offline "tiny" expert: a small random-weight open_clip CLIP, built locally in a fraction of a second.

No expert weights can be downloaded on the development machines, yet the whole external-expert path
(batched preprocessing, both towers, tokenizer, fusion of rankings) must run in tests and in the offline
demo. The tiny model is a genuine `open_clip.model.CLIP` (ViT image tower, causal text transformer),
only small and random, so it exercises the same code as ViT-B-32. Its rankings carry no meaning.

It uses open_clip's own BPE tokenizer (`SimpleTokenizer`, whose vocabulary ships inside the package, so
it works offline) with CLIP's vocabulary size of 49408 and context length 77, and CLIP's OpenAI mean/std
with bicubic shortest-side resizing and a centre crop, as ViT-B-32/laion2b does.

Sizes and seed are frozen: tests compare embeddings across loads, and a change would silently change
what the demo's "tiny" expert returns.
"""

from __future__ import annotations

import torch

from .clip import Expert

TINY_NAME = "tiny"
TINY_EMBED_DIM = 32  # D of both towers
TINY_VISION = dict(image_size=32, patch_size=8, width=64, head_width=32, layers=2)  # 4x4 patches, 2 heads
TINY_TEXT = dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)  # CLIP's BPE vocab
TINY_SEED = 0


def build_tiny_model() -> torch.nn.Module:
    """The tiny random CLIP, float32 on the CPU, with its preprocess config attached.

    Seeded inside a forked RNG, so building it neither depends on nor disturbs the caller's random state.
    """
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, set_model_preprocess_cfg

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = CLIP(TINY_EMBED_DIM, CLIPVisionCfg(**TINY_VISION), CLIPTextCfg(**TINY_TEXT))
    # open_clip's defaults (OpenAI mean/std, bicubic, shortest side + centre crop) at the tiny size
    cfg = dict(size=TINY_VISION["image_size"], mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD,
               interpolation="bicubic", resize_mode="shortest", fill_color=0)
    set_model_preprocess_cfg(model, cfg)
    return model.eval()


def tiny_tokenizer():
    """open_clip's BPE tokenizer at the tiny model's context length (its vocabulary ships with open_clip)."""
    import open_clip

    return open_clip.SimpleTokenizer(context_length=TINY_TEXT["context_length"])


def build_tiny_expert(device: torch.device | str = "cpu") -> Expert:
    """The tiny expert on `device`, always in float32 (its only use is tests and offline demos)."""
    model = build_tiny_model().to(device)
    return Expert(TINY_NAME, model, tiny_tokenizer(), TINY_EMBED_DIM, torch.device(device))
