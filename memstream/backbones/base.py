"""The backbone interface: everything the memory, the engine and the oracle need from a Video-LLM.

A backbone family (one module in this package, e.g. `qwen2_5_vl.py`) subclasses `Backbone`. The rest
of memstream never touches transformers directly; it asks the backbone to

  * turn frames into visual tokens (`encode_blocks`) and text into token ids and embeddings,
  * say which text frames each block (`block_text`: none for Qwen2.5-VL; Qwen3-VL's timestamp and
    vision markers) and lay a block's rows out for the decoder (`block_embeds`),
  * hand out the positions of sinks, blocks and questions (`position_tracker`),
  * run the decoder over a cache object of ours (`decode`): each attention layer calls
    `cache.update(keys, values, layer_idx)` with the new tokens' post-RoPE keys and gets back the keys
    and values to attend to; while it runs, the position-free queries and keys of every layer are
    reported to `cache.capture` (they are computed before that layer's `update()`, so a layer can
    retrieve with them inside the same forward),
  * re-rotate stored keys to new positions (`rotate_keys`),
  * lay out the chat around the video (`chat`), and
  * run the stock model's own forward over a whole video, the oracle's reference (`stock_forward`).

Terms: a *block* is what the vision tower encodes at once and the memory stores, scores and retrieves
as a unit (Qwen2.5-VL: a temporal patch of 2 frames, `spec.frames_per_block`).

Visual tokens may carry more than the LLM's input embedding: a row of `encode_blocks` is
[hidden * (1 + D)], the embedding followed by D extra rows that the decoder adds to the token's hidden
state after its first D layers (Qwen3-VL's DeepStack; D = 0 for Qwen2.5-VL). Packing them into the same
row means whatever drops a token before the LLM (memstream's compression) drops its extra rows with it.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .. import video
from ..positions import PositionTracker


class KVCache(Protocol):
    """What the decoder layers call: store the new tokens, return everything to attend to."""

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """keys/values [1, Hkv, S_new, d] (keys post-RoPE) -> [1, Hkv, S_ctx + S_new, d] each."""
        ...


# Called as capture(kind, layer_idx, tensor) with kind "q" ([S, Hq, d]) or "k" ([S, Hkv, d]): the
# position-free (pre-RoPE) queries or keys of the forward's new tokens in that layer.
Capture = Callable[[str, int, torch.Tensor], None]


@dataclass(frozen=True)
class BackboneSpec:
    """Shapes of the loaded model that the memory needs."""

    n_layers: int  # decoder layers
    n_heads: int  # query heads per layer
    n_kv_heads: int  # key/value heads per layer (GQA)
    head_dim: int  # channels per head
    hidden: int  # LLM width
    vocab: int  # logits size
    patch: int  # vision patch side in pixels (14 for Qwen2.5-VL)
    merge: int  # spatial merge factor: one LLM token per merge x merge patches
    frames_per_block: int  # frames the vision tower merges into one block (Qwen2.5-VL's temporal patch: 2)
    tokens_per_second: float  # temporal position steps per second of video (Qwen2.5-VL: 2)
    max_positions: int  # the decoder's max_position_embeddings
    default_tokens_per_frame: int = 256  # what the demo starts with: the family's usual frame size (SmolVLM2: 64)

    @property
    def pixels_per_token(self) -> int:
        """Side in pixels of the square one LLM token covers (Qwen2.5-VL: 14 * 2 = 28)."""
        return self.patch * self.merge


@dataclass(frozen=True)
class ChatTemplate:
    """The text around the video, as the model's chat template lays it out:

        {sink}[visual tokens of every block]{after_video}QUESTION{assistant_turn}ANSWER{next_user_turn}...

    Everything before the video is the memory's sink; everything after it is the question.
    """

    sink: str  # system prompt and the user's turn up to the first visual token
    after_video: str  # between the last visual token and the question
    assistant_turn: str  # after the question: closes the user's turn, opens the assistant's
    next_user_turn: str  # after an answer: closes the assistant's turn, opens the next user turn


class Backbone(ABC):
    """A loaded Video-LLM with what the memory needs. `Backbone.__init__` sets the attributes that come
    from the loaded model; subclasses set the rest (`spec`, `eos_ids`, `decoder_layers`) in their
    `__init__` and call `install_capture_hooks` once."""

    name: str  # as passed to memstream.load ("tiny", a hub id, a directory)
    model: torch.nn.Module  # the transformers model
    tokenizer: Any  # its tokenizer
    device: torch.device
    dtype: torch.dtype
    spec: BackboneSpec
    chat: ChatTemplate
    eos_ids: set[int]  # token ids that end an answer
    decoder_layers: torch.nn.ModuleList  # the LLM's decoder layers, in order (hermes' manual pseudo forward)

    def __init__(self, model: torch.nn.Module, tokenizer: Any, device: torch.device, name: str,
                 chat: ChatTemplate) -> None:
        self._local = threading.local()  # per-thread capture target: streams share a backbone across threads
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.name = name
        self.dtype = next(model.parameters()).dtype
        self.chat = chat

    # ---- capture of position-free queries and keys --------------------------------------------
    @property
    def capture(self) -> Capture | None:
        """Where this thread's forward reports position-free queries/keys (None = nowhere).

        Thread-local because several streams (browser sessions, compare mode) share one backbone and
        the hooks run in the thread that runs the forward. Set it with `capturing()`."""
        return getattr(self._local, "capture", None)

    @contextlib.contextmanager
    def capturing(self, target: Capture | None) -> Iterator[None]:
        """Report this thread's position-free queries/keys to `target` inside the block."""
        previous = self.capture
        self._local.capture = target
        try:
            yield
        finally:
            self._local.capture = previous

    def install_capture_hooks(self, layers: list[torch.nn.Module], q_name: str = "q_proj",
                              k_name: str = "k_proj") -> None:
        """Forward hooks on each decoder layer's query/key projections that report to `capture`."""
        spec = self.spec
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            getattr(attn, q_name).register_forward_hook(self._reporter("q", i, spec.n_heads))
            getattr(attn, k_name).register_forward_hook(self._reporter("k", i, spec.n_kv_heads))

    def _reporter(self, kind: str, layer_idx: int, heads: int):
        def hook(_module, _inputs, output):  # output [1, S, heads * d]
            target = self.capture
            if target is not None:
                target(kind, layer_idx, output[0].view(output.shape[1], heads, -1))
        return hook

    # ---- text ---------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added (chat markup in the text is tokenised as such)."""
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @abstractmethod
    def embed(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Token ids [S] -> input embeddings [S, hidden]."""

    # ---- vision and positions -----------------------------------------------------------------
    @abstractmethod
    def encode_blocks(self, frames: np.ndarray) -> torch.Tensor:
        """Frames uint8 [k * frames_per_block, H, W, 3], H and W multiples of `spec.pixels_per_token`
        -> visual tokens [k, (H / ppt) * (W / ppt), hidden * (1 + D)], token j of a block at grid cell
        (j // gw, j % gw); see the module docstring for the D DeepStack rows."""

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """The LLM input embeddings of visual tokens [..., hidden * (1 + D)] -> [..., hidden] (a view)."""
        return tokens[..., : self.spec.hidden]

    def block_text(self, times: tuple[float, ...]) -> tuple[list[int], list[int]]:
        """Token ids of the text right before and right after a block's visual tokens, for a block whose
        frames were taken at `times` (seconds). Default: none (Qwen2.5-VL)."""
        return [], []

    def block_embeds(self, before: list[int], tokens: torch.Tensor, after: list[int]) -> torch.Tensor:
        """One block's decoder input: the embeddings of `before`, the visual tokens [n, width], those of
        `after` -> [len(before) + n + len(after), width]. Text rows get zero extra (DeepStack) rows, so
        adding them changes nothing, exactly as the stock model adds nothing at text positions."""
        if not before and not after:
            return tokens
        extra = tokens.shape[-1] - self.spec.hidden

        def text(ids: list[int]) -> torch.Tensor:
            emb = self.embed(ids).to(tokens.dtype)  # [m, hidden]
            return torch.nn.functional.pad(emb, (0, extra)) if extra else emb

        return torch.cat([text(before), tokens, text(after)])

    @abstractmethod
    def position_tracker(self, fps: float) -> PositionTracker:
        """A fresh tracker handing out positions for sinks, then blocks sampled at `fps`, then text."""

    def frame_size(self, height: int, width: int, tokens_per_frame: int) -> tuple[int, int]:
        """The (H, W) pixels frames of `height` x `width` are resized to for `tokens_per_frame` LLM tokens per
        frame, multiples of `spec.pixels_per_token` (default: the Qwen grid that keeps the aspect ratio)."""
        return video.frame_size_for_budget(height, width, tokens_per_frame, self.spec.pixels_per_token)

    # ---- decoder ------------------------------------------------------------------------------
    @abstractmethod
    def run_decoder(self, embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                    logits: bool = True) -> torch.Tensor | None:
        """The decoder over `cache` for new tokens: embeds [S, hidden] or a block's [S, hidden * (1 + D)]
        (`block_embeds`), positions [P, S] (P = the backbone's position components) -> logits of the
        last token [vocab] float32, or None."""

    def decode(self, embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache,
               logits: bool = True) -> torch.Tensor | None:
        """`run_decoder` with the cache's `capture` (if it has one) receiving this forward's
        position-free queries and keys. `logits=False`: ingestion only needs what the cache stores."""
        with self.capturing(getattr(cache, "capture", None)):
            return self.run_decoder(embeds, positions, cache, logits)

    @abstractmethod
    def rotate_keys(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Move post-RoPE keys [..., S, d] to new positions: delta [P, S] = new - old (exact)."""

    # ---- the oracle ---------------------------------------------------------------------------
    @abstractmethod
    def stock_forward(self, before: list[int], frames: np.ndarray, times: list[tuple[float, ...]],
                      after: list[int], positions: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """One forward of the stock model class, as a user without memstream would run it: its own
        vision tower over all `frames` (uint8 [T, H, W, 3], T a multiple of frames_per_block), its
        placeholder tokens (each block framed by `block_text` of its frames' `times`, one tuple per
        block) between the ids `before` and `after`, its own KV cache. positions [P, S] for the whole
        sequence. Returns (logits of the last token [vocab] float32, the model's cache)."""

    @abstractmethod
    def stock_step(self, cache: Any, token: int, position: int) -> tuple[torch.Tensor, Any]:
        """One decoding step of the stock model over its own cache: (logits [vocab] float32, cache)."""


def rotate_by(rotary_emb: torch.nn.Module, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE keys [..., S, d] by position deltas [P, S] with the model's own rotary embedding.

    RoPE turns each frequency pair by position * inv_freq; M-RoPE (sectioned in Qwen2.5-VL, interleaved
    in Qwen3-VL) only picks which component drives each pair. Rotations of a pair compose, so turning
    a key by the embedding of `delta` moves it exactly from its old position to old + delta.
    """
    cos, sin = rotary_emb(keys, delta.to(keys.device).unsqueeze(1))  # [1, S, d]
    cos, sin = cos[0].to(keys.dtype), sin[0].to(keys.dtype)
    half = keys.shape[-1] // 2
    rotated_half = torch.cat((-keys[..., half:], keys[..., :half]), dim=-1)
    return keys * cos + rotated_half * sin
