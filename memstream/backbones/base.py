"""The backbone interface: everything the memory, the engine and the oracle need from a Video-LLM.

A backbone family (one module in this package, e.g. `qwen2_5_vl.py`) subclasses `Backbone`. The rest
of memstream never touches transformers directly; it asks the backbone to

  * turn frames into visual tokens (`encode_blocks`) and text into token ids and embeddings,
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
    """A loaded Video-LLM with what the memory needs. Subclasses set the attributes below in
    `__init__` and call `install_capture_hooks` once."""

    name: str  # as passed to memstream.load ("tiny", a hub id, a directory)
    model: torch.nn.Module  # the transformers model
    tokenizer: Any  # its tokenizer
    device: torch.device
    dtype: torch.dtype
    spec: BackboneSpec
    chat: ChatTemplate
    eos_ids: set[int]  # token ids that end an answer

    def __init__(self) -> None:
        self._local = threading.local()  # per-thread capture target: streams share a backbone across threads

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
        -> visual tokens [k, (H / ppt) * (W / ppt), hidden], token j of a block at grid cell
        (j // gw, j % gw)."""

    @abstractmethod
    def position_tracker(self, fps: float) -> PositionTracker:
        """A fresh tracker handing out positions for sinks, then blocks sampled at `fps`, then text."""

    def frame_size(self, height: int, width: int, tokens_per_frame: int) -> tuple[int, int]:
        """The (H, W) pixels frames of `height` x `width` are resized to for `tokens_per_frame` LLM tokens
        per frame: multiples of `spec.pixels_per_token` (default: Qwen's aspect-keeping grid of a 2-frame block)."""
        return video.frame_size_for_budget(height, width, tokens_per_frame)

    def block_grid(self, times: tuple[float, ...], grid: tuple[int, int]) -> tuple[int, int]:
        """The grid the memory files a block under, given its frames' `times` and its visual grid (gh, gw):
        the visual grid itself unless the family writes text inside each block (`frame_block`)."""
        return grid

    def frame_block(self, tokens: torch.Tensor, times: tuple[float, ...],
                    grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """One block as the decoder reads it: visual tokens [gh*gw, hidden] -> (the block's embeddings
        [n, hidden], its grid from `block_grid`). Default: the visual tokens alone. A family whose prompt
        writes text with every frame (SmolVLM2's timestamps) returns that text's embeddings around them."""
        return tokens, grid

    # ---- decoder ------------------------------------------------------------------------------
    @abstractmethod
    def run_decoder(self, embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                    logits: bool = True) -> torch.Tensor | None:
        """The decoder over `cache` for new tokens: embeds [S, hidden], positions [P, S] (P = the
        backbone's position components) -> logits of the last token [vocab] float32, or None."""

    def decode(self, embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache,
               logits: bool = True) -> torch.Tensor | None:
        """`run_decoder` with the cache's `capture` (if it has one) receiving this forward's
        position-free queries and keys. `logits=False`: ingestion only needs what the cache stores."""
        with self.capturing(getattr(cache, "capture", None)):
            return self.run_decoder(embeds, positions, cache, logits)

    def decoder_layers(self) -> torch.nn.ModuleList | None:
        """The text decoder's layers in order, for code that runs them itself (hermes' manual pseudo
        attention); None: find them by their shape (the one list of n_layers modules with `self_attn`)."""
        return None

    @abstractmethod
    def rotate_keys(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Move post-RoPE keys [..., S, d] to new positions: delta [P, S] = new - old (exact)."""

    # ---- the oracle ---------------------------------------------------------------------------
    @abstractmethod
    def stock_forward(self, before: list[int], frames: np.ndarray, after: list[int],
                      positions: torch.Tensor, block_times: list[tuple[float, ...]] | None = None,
                      ) -> tuple[torch.Tensor, Any]:
        """One forward of the stock model class, as a user without memstream would run it: its own
        vision tower over all `frames` (uint8 [T, H, W, 3], T a multiple of frames_per_block), its
        placeholder tokens between the ids `before` and `after`, its own KV cache. positions [P, S]
        for the whole sequence; `block_times`: each block's frame times, for a family that writes them
        into the prompt. Returns (logits of the last token [vocab] float32, the model's cache)."""

    @abstractmethod
    def stock_step(self, cache: Any, token: int, position: int) -> tuple[torch.Tensor, Any]:
        """One decoding step of the stock model over its own cache: (logits [vocab] float32, cache)."""
