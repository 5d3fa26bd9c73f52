"""The external expert: an open_clip vision-language model that scores memory blocks against a question.

MemStream's retrieval mixture (DESIGN.md 2.3, remedy 4) ranks the stored blocks twice: once with the
backbone's own keys, once with an independent image-text model. The second ranking is immune to the
temporal drift of the backbone's keys, because each frame is embedded on its own, with no memory of
earlier frames. Frames are embedded once, at ingest (`embed_images`); at question time only the
question is embedded (`embed_text`) and compared with the stored frame embeddings (`block_scores`).

Everything handed back is float32 on the CPU, L2-normalised, whatever the model's device and dtype
(real experts run in fp16 on CUDA): the memory stores these vectors next to its own CPU bookkeeping,
and cosines computed from them must not depend on where the model ran.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .preprocess import ImagePreprocess

DEFAULT_BATCH_SIZE = 64  # frames per forward: bounds activation memory on long videos


def block_scores(text_emb: torch.Tensor, frame_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine of the question with each block, averaged over the block's frames.

    text_emb [D], frame_embeds [N, F, D] (F frames per block) -> float32 [N] on frame_embeds' device.
    Both sides are re-normalised, so stored embeddings that lost their unit norm (e.g. saved in fp16)
    still give cosines.
    """
    if frame_embeds.ndim != 3 or text_emb.ndim != 1 or frame_embeds.shape[-1] != text_emb.shape[0]:
        raise ValueError(f"block_scores wants text [D] and frames [N, F, D], got {tuple(text_emb.shape)} "
                         f"and {tuple(frame_embeds.shape)}")
    t = F.normalize(text_emb.to(device=frame_embeds.device, dtype=torch.float32), dim=0)
    f = F.normalize(frame_embeds.to(torch.float32), dim=-1)
    return (f @ t).mean(dim=1)  # [N, F] cosines -> [N]


def _pixel_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the image tower's patch embedding expects.

    Not simply the first parameter's: open_clip's fp16 mode casts only convolutions, linears and
    projections, leaving e.g. the class embedding in float32.
    """
    visual = getattr(model, "visual", model)
    for module in visual.modules():
        if isinstance(module, torch.nn.Conv2d):
            return module.weight.dtype
    return next(visual.parameters()).dtype


class Expert:
    """An open_clip model with its tokenizer and image preprocessing, behind three calls.

    `model` must offer open_clip's `encode_image(pixels [B, 3, h, w]) -> [B, D]` and
    `encode_text(tokens [B, L]) -> [B, D]`, and carry its preprocess config (open_clip attaches it in
    `create_model`; `tiny.build_tiny_model` attaches its own).
    """

    def __init__(self, name: str, model: torch.nn.Module, tokenizer, dim: int, device: torch.device,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        import open_clip  # the model is an open_clip one, so the package is already imported

        self.name = name  # registry name ("clip-b32", "pe-core-b16", "tiny")
        self.model = model.eval()  # the open_clip model, already on `device` in its final dtype
        self.tokenizer = tokenizer  # the model's open_clip tokenizer: str | list[str] -> int64 [B, L]
        self.dim = int(dim)  # embedding size D of both towers
        self.device = torch.device(device)  # where the model runs (outputs always come back to the CPU)
        self.batch_size = int(batch_size)  # frames per forward in embed_images
        self.dtype = _pixel_dtype(model)  # pixels are cast to this (fp16 on CUDA for real experts)
        self.preprocess = ImagePreprocess.from_cfg(open_clip.get_model_preprocess_cfg(model))

    def __repr__(self) -> str:
        return f"Expert({self.name!r}, dim={self.dim}, device={self.device}, dtype={self.dtype})"

    def embed_images(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [T, H, W, 3] RGB frames (any size) -> float32 [T, D] unit-norm embeddings, on the CPU.

        Frames go through the model in chunks of `batch_size`; each chunk is one forward.
        """
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
                or frames.shape[-1] != 3:
            shape = getattr(frames, "shape", None)
            raise InputError(f"The expert wants uint8 RGB frames shaped [T, H, W, 3], got {shape} "
                             f"of {getattr(frames, 'dtype', type(frames).__name__)}.")
        if len(frames) == 0:
            return torch.zeros(0, self.dim, dtype=torch.float32)
        pixels = torch.from_numpy(np.ascontiguousarray(frames))
        out = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                chunk = pixels[start:start + self.batch_size].to(self.device, non_blocking=True)
                feats = self.model.encode_image(self.preprocess(chunk, self.dtype))  # [B, D]
                out.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out)

    def embed_text(self, text: str) -> torch.Tensor:
        """A question -> float32 [D] unit-norm embedding, on the CPU.

        The tokenizer truncates to the model's context length (77 for CLIP, 32 for PE-Core); an empty
        string is still a valid input (start and end tokens only).
        """
        if not isinstance(text, str):
            raise InputError(f"The expert embeds a question string, got {type(text).__name__}.")
        with torch.inference_mode():
            tokens = self.tokenizer([text]).to(self.device)  # [1, L]
            feats = self.model.encode_text(tokens)  # [1, D]
            return F.normalize(feats.float(), dim=-1)[0].cpu()

    def block_scores(self, text_emb: torch.Tensor, frame_embeds: torch.Tensor) -> torch.Tensor:
        """text_emb [D], frame_embeds [N, F, D] -> float32 [N]: the mean cosine of each block's frames."""
        return block_scores(text_emb, frame_embeds)
