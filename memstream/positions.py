"""M-RoPE positions of Qwen2.5-VL, computed incrementally as a stream grows.

`PositionTracker` is also the interface every backbone's tracker follows (`Backbone.position_tracker`):
the policies hand out, move and compact positions only through its methods, so a family with another
rule (Qwen3-VL's running counter, `backbones/qwen3_vl.py`) subclasses it.

Every LLM token has a 3-component position (t, h, w). Text tokens have t = h = w = p, one step
per token. The tokens of video block i (a `gh x gw` grid of merged 28x28-pixel patches spanning two
frames) get

    (s + floor(i * interval), s + row, s + col),   interval = tokens_per_second * seconds_per_block

where `s` is the position where the video starts (right after `<|vision_start|>`). So the
temporal component encodes absolute stream time at `tokens_per_second` (2 for Qwen2.5-VL) steps
per second, and the height/width components restart at `s` in every block. Text that follows the
video resumes at (max position used so far) + 1: the original Qwen rule.

Worked example (fps = 1, so a block spans 2 s and interval = 2 * 2 = 4; 20 system-prompt tokens
at positions 0..19; blocks of a 2 x 3 grid):

    block  frames   seconds    token range   t    h        w        max
    0      0, 1     0.0-2.0    20..25        20   20..21   20..22   22
    1      2, 3     2.0-4.0    26..31        24   20..21   20..22   24
    2      4, 5     4.0-6.0    32..37        28   20..21   20..22   28
    question text starts at 29 (= 28 + 1), one step per token.

Token j of a block sits at row j // gw, col j % gw (the order the patch merger emits).
"""

from __future__ import annotations

import math

import torch


def block_interval(fps: float, tokens_per_second: float = 2.0, temporal_patch_size: int = 2) -> float:
    """Temporal-position steps between consecutive blocks: tokens_per_second * seconds per block."""
    return tokens_per_second * temporal_patch_size / fps


def block_t_offset(block_index: int, interval: float) -> int:
    """floor(block_index * interval), robust to float noise (3 * (4/3) must give 4, not 3)."""
    return math.floor(block_index * interval + 1e-6)


def text_positions(start: int, n: int) -> torch.Tensor:
    """Positions of `n` text tokens starting at `start`: LongTensor [3, n]."""
    return torch.arange(start, start + n, dtype=torch.long).expand(3, n).clone()


def block_positions(video_start: int, t_offset: int, gh: int, gw: int) -> torch.Tensor:
    """Positions of one block's `gh * gw` tokens: LongTensor [3, gh * gw].

    `t_offset` is `block_t_offset(i, interval)` for the block's slot (its index in the stream
    for original positions, its slot among retrieved blocks for compact ones).
    """
    rows = torch.arange(gh, dtype=torch.long).repeat_interleave(gw)  # [gh*gw]
    cols = torch.arange(gw, dtype=torch.long).repeat(gh)  # [gh*gw]
    t = torch.full((gh * gw,), t_offset, dtype=torch.long)
    return torch.stack([t, rows, cols]) + video_start


def block_max_position(video_start: int, t_offset: int, gh: int, gw: int) -> int:
    """The largest component of any position in the block (what the next text resumes after)."""
    return video_start + max(t_offset, gh - 1, gw - 1)


class PositionTracker:
    """Hands out positions for: sinks (text) -> blocks (video) -> question (text), incrementally.

    `next_text` is where text would start if the video ended now: (max position so far) + 1.
    Positions are LongTensors [P, n] (P = 3 M-RoPE components for the Qwen families).
    """

    components = 3  # P: position components per token

    def __init__(self, interval: float):
        self.interval = interval
        self.video_start: int | None = None  # set by the first block
        self.next_text = 0  # (max position used so far) + 1
        self.blocks = 0  # the next block's temporal slot

    def text(self, n: int) -> torch.Tensor:
        """Positions for `n` text tokens before the video (sinks): [P, n]."""
        if self.video_start is not None:
            raise RuntimeError("text after the video belongs to the question; use question_start()")
        pos = text_positions(self.next_text, n)
        self.next_text += n
        return pos

    def block(self, gh: int, gw: int, n_before: int = 0, n_after: int = 0) -> tuple[torch.Tensor, int]:
        """Positions of the next block, [P, n_before + gh*gw + n_after], and its temporal offset from the
        video start. `n_before` / `n_after`: text tokens the backbone frames each block with
        (`Backbone.block_text`); Qwen2.5-VL has none."""
        if n_before or n_after:
            raise ValueError("Qwen2.5-VL blocks carry no text of their own")
        if self.video_start is None:
            self.video_start = self.next_text
        t_off = block_t_offset(self.blocks, self.interval)
        pos = block_positions(self.video_start, t_off, gh, gw)
        self.next_text = max(self.next_text, block_max_position(self.video_start, t_off, gh, gw) + 1)
        self.blocks += 1
        return pos, t_off

    def text_at(self, start: int, n: int) -> torch.Tensor:
        """Positions of `n` text tokens from `start` on (a question, an answer step): [P, n]."""
        return text_positions(start, n)

    def save(self) -> tuple:
        """The tracker's state, for `restore` after a failed ingest."""
        return self.video_start, self.next_text, self.blocks

    def restore(self, state: tuple) -> None:
        self.video_start, self.next_text, self.blocks = state

    # ---- compact layouts (rekv positions "compact", hermes compaction) -------------------------
    def compact_question_start(self, n_blocks: int, gh: int, gw: int) -> int:
        """Where the question starts when `n_blocks` retrieved blocks sit in slots 0..n_blocks-1."""
        assert self.video_start is not None
        t_last = block_t_offset(n_blocks - 1, self.interval)
        return block_max_position(self.video_start, t_last, gh, gw) + 1

    def slot_delta(self, t_offset: int, slot: int, n: int) -> torch.Tensor:
        """Position change [P, n] that moves the `n` stored tokens of a block with temporal offset
        `t_offset` to compact slot `slot`: only the temporal component moves."""
        delta = torch.zeros(3, n, dtype=torch.long)
        delta[0] = block_t_offset(slot, self.interval) - t_offset
        return delta

    def next_block_max(self, gh: int, gw: int) -> int:
        """The largest position component the next block would get (the position limit's test)."""
        if self.video_start is None:
            return self.next_text + max(gh, gw) - 1
        return block_max_position(self.video_start, block_t_offset(self.blocks, self.interval), gh, gw)

    def slot_layout(self, pos: torch.Tensor, block: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        """Held tokens (positions [P, n], their blocks [n] in time order) moved so that the held blocks
        take temporal slots 0, 1, ...: the new positions [P, n]. A token of `whole` [n] (a summary token)
        moves in every component, the others in the temporal one only."""
        blocks, slot = torch.unique(block, return_inverse=True)  # slot: [n], 0-based, time order
        new_t = torch.tensor([self.video_start + block_t_offset(j, self.interval) for j in range(blocks.numel())],
                             dtype=torch.long)[slot]
        shift = new_t - pos[0]
        delta = torch.zeros_like(pos)
        delta[0] = shift
        delta[:, whole] = shift[whole]
        return pos + delta

    def resume(self, held: list[torch.Tensor], gh: int, gw: int, ranked: bool, floor: int) -> None:
        """After a compaction: the next block takes the first temporal slot after every held token
        (positions `held`, [P, n] per layer) and the next text follows the largest position held (or
        the next block's largest; never below `floor`). `ranked`: h and w were re-indexed too, so only
        what is held counts."""
        start, interval = self.video_start, self.interval
        top_t = max((int(p[0].max()) for p in held), default=start - 1) - start  # temporal offset to pass
        slot = max(0, math.ceil((top_t + 1) / interval - 1e-9))
        while block_t_offset(slot, interval) <= top_t:
            slot += 1
        while slot > 0 and block_t_offset(slot - 1, interval) > top_t:
            slot -= 1
        self.blocks = slot
        last = block_max_position(start, block_t_offset(slot - 1, interval), gh, gw) if slot else start - 1
        if ranked:
            last = max((int(p.max()) for p in held), default=start - 1)
        self.next_text = max(floor, last + 1, max((int(p.max()) + 1 for p in held), default=0))
