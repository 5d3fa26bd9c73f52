"""Batched image preprocessing for open_clip experts, done with torch tensor ops.

open_clip's own transforms work on one PIL image at a time; at ingest we embed every sampled frame, so a
per-frame PIL round trip would dominate the cost. This module applies the *same* recipe (resize mode,
interpolation, centre crop or pad, mean/std) to a whole uint8 batch at once, on the expert's device.

The recipe comes from the model itself (`open_clip.get_model_preprocess_cfg(model)`, which open_clip 3.x
keeps on `model.visual.preprocess_cfg`), so each expert gets its own: ViT-B-32/laion2b resizes the
shortest side with bicubic and centre-crops, PE-Core squashes with bilinear and uses mean = std = 0.5.

The resize runs on the uint8 tensor (torchvision rounds back to uint8), as PIL does before `ToTensor`, so
the numbers stay close to open_clip's reference pipeline. Every step is per-sample, so a batch gives the
same pixels as the frames one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

# open_clip's names for its three inference resize modes.
RESIZE_MODES = ("shortest", "squash", "longest")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """An open_clip image size (an int, or [H, W]) as (H, W)."""
    if isinstance(size, int):
        return size, size
    h, w = size[-2:]
    return int(h), int(w)


@dataclass(frozen=True)
class ImagePreprocess:
    """One model's inference preprocessing: uint8 RGB frames of any size -> normalised pixel tensor."""

    size: tuple[int, int]  # (H, W) the vision tower expects
    mean: tuple[float, float, float]  # per-channel mean subtracted from pixels in [0, 1]
    std: tuple[float, float, float]  # per-channel std the centred pixels are divided by
    interpolation: str  # "bicubic" or "bilinear" (open_clip's "random" means bicubic at inference)
    resize_mode: str  # "shortest": cover then centre-crop; "squash": stretch; "longest": fit then pad
    fill: int = 0  # pad value (uint8) for "longest", as open_clip's fill_color

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")

    @classmethod
    def from_cfg(cls, cfg: dict) -> ImagePreprocess:
        """From open_clip's preprocess dict (keys size, mean, std, interpolation, resize_mode, fill_color)."""
        def three(v: float | Sequence[float]) -> tuple[float, float, float]:
            # open_clip allows a scalar mean/std for all channels
            return (float(v),) * 3 if isinstance(v, (int, float)) else tuple(float(x) for x in v)

        return cls(
            size=_pair(cfg["size"]), mean=three(cfg["mean"]), std=three(cfg["std"]),
            interpolation=cfg.get("interpolation") or "bicubic", resize_mode=cfg.get("resize_mode") or "shortest",
            fill=int(cfg.get("fill_color") or 0),
        )

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> uint8 [B, 3, h, w] of exactly `self.size`."""
        mode = InterpolationMode.BILINEAR if self.interpolation == "bilinear" else InterpolationMode.BICUBIC
        th, tw = self.size
        h, w = x.shape[-2:]
        if self.resize_mode == "squash":
            return TF.resize(x, [th, tw], interpolation=mode, antialias=True)
        if self.resize_mode == "shortest" and th == tw:
            # torchvision's scalar Resize, as open_clip uses for square targets (long side truncated)
            x = TF.resize(x, th, interpolation=mode, antialias=True)
        else:
            # keep the aspect ratio: cover the target ("shortest") or fit inside it ("longest"); the
            # sizes are computed as open_clip's ResizeKeepRatio does, so they round the same way
            ratio = min(h / th, w / tw) if self.resize_mode == "shortest" else max(h / th, w / tw)
            x = TF.resize(x, [max(1, round(h / ratio)), max(1, round(w / ratio))], interpolation=mode,
                          antialias=True)
        if self.resize_mode == "longest" and self.fill:
            ph, pw = th - x.shape[-2], tw - x.shape[-1]
            x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=self.fill)
        return TF.center_crop(x, [th, tw])  # crops "shortest"; zero-pads "longest" (fill 0)

    def __call__(self, frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 [T, H, W, 3] RGB (any device) -> `dtype` [T, 3, h, w] normalised, on the same device.

        The normalisation is computed in float32 and only then cast, so fp16 models see the same
        rounding whatever the batch.
        """
        x = self._resize(frames.permute(0, 3, 1, 2).contiguous())
        x = x.to(torch.float32).div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype)
