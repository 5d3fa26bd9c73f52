"""M-RoPE positions of Qwen2.5-VL, computed incrementally as a stream grows.

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


def ranked_positions(pos: torch.Tensor, start: int) -> torch.Tensor:
    """Compaction as released: each position component of the held tokens replaced by its rank among
    that component's distinct values, counted from `start`: pos LongTensor [P, n] -> [P, n].

    E.g. t values (20, 20, 28, 36) -> (s, s, s+1, s+2); h and w are ranked the same way on their own.
    """
    out = torch.empty_like(pos)
    for d in range(pos.shape[0]):
        _, rank = torch.unique(pos[d], sorted=True, return_inverse=True)
        out[d] = start + rank
    return out


class PositionTracker:
    """Hands out positions for: sinks (text) -> blocks (video) -> question (text), incrementally.

    `next_text` is where text would start if the video ended now: (max position so far) + 1.
    """

    def __init__(self, interval: float):
        self.interval = interval
        self.video_start: int | None = None  # set by the first block
        self.next_text = 0  # (max position used so far) + 1
        self.blocks = 0

    def text(self, n: int) -> torch.Tensor:
        """Positions for `n` text tokens before the video (sinks): [3, n]."""
        if self.video_start is not None:
            raise RuntimeError("text after the video belongs to the question; use question_start()")
        pos = text_positions(self.next_text, n)
        self.next_text += n
        return pos

    def block(self, gh: int, gw: int) -> tuple[torch.Tensor, int]:
        """Positions of the next block, [3, gh*gw], and its temporal offset from the video start."""
        if self.video_start is None:
            self.video_start = self.next_text
        t_off = block_t_offset(self.blocks, self.interval)
        pos = block_positions(self.video_start, t_off, gh, gw)
        self.next_text = max(self.next_text, block_max_position(self.video_start, t_off, gh, gw) + 1)
        self.blocks += 1
        return pos, t_off

    def text_at(self, start: int, n: int) -> torch.Tensor:
        """Positions of `n` text tokens from `start` on (a question, an answer step): [3, n]."""
        return text_positions(start, n)

    def compact_question_start(self, n_blocks: int, gh: int, gw: int) -> int:
        """Where the question starts when `n_blocks` retrieved blocks sit in slots 0..n_blocks-1."""
        assert self.video_start is not None
        return self.block_end(block_t_offset(n_blocks - 1, self.interval), gh, gw) + 1

    # The three rules below are what a policy that moves or summarises tokens needs to know about the
    # position scheme (hermes' compaction, summaries and position limit); a backbone whose positions
    # count differently (`LinearPositionTracker`) overrides them.
    def next_block_offset(self) -> int:
        """The temporal offset the next block would get."""
        return block_t_offset(self.blocks, self.interval)

    def block_end(self, t_offset: int, gh: int, gw: int) -> int:
        """The position text after a block at `t_offset` must pass (M-RoPE: its largest component)."""
        assert self.video_start is not None
        return block_max_position(self.video_start, t_offset, gh, gw)

    def extent(self, pos: torch.Tensor) -> torch.Tensor:
        """How far along the text axis each position [3, n] reaches: [n] (M-RoPE: the largest component)."""
        return pos.max(dim=0).values

    def ranked(self, pos: torch.Tensor, start: int) -> torch.Tensor:
        """Held positions [3, n] re-indexed densely from `start` (hermes' released compaction): [3, n]."""
        return ranked_positions(pos, start)


class LinearPositionTracker(PositionTracker):
    """1-D RoPE positions (one index per token), written in the same 3-component form so that every
    policy handles them unchanged: text at (p, p, p), token j of a block of n tokens at
    (s + t_offset, s + j, s), and the 1-D position is `linear(pos) = t + h - w`.

    So a shift of the temporal component (rekv's compact slots, hermes' compaction) moves a whole block
    along the 1-D axis, a summary at (m, m, m) sits at m, and re-rotating a key by a delta [3, n] is
    re-rotating it by `linear(delta)` (the map is linear). Blocks are packed one after the other:
    block i starts where the previous one ended (`t_offset` = tokens before it), and `interval` (the
    slot width of compact layouts) is the largest block seen. A block's grid is (n, 1): n tokens in
    one column (`Backbone.block_grid`).

    Worked example (20 sink tokens, blocks of 7 tokens):

        block  token range  t_offset  positions (t, h, w)        1-D positions
        0      20..26       0         (20, 20..26, 20)           20..26
        1      27..33       7         (27, 27..33, 27)           27..33
        question text starts at 34, one step per token.
    """

    def __init__(self) -> None:
        super().__init__(interval=0.0)

    @staticmethod
    def linear(pos: torch.Tensor) -> torch.Tensor:
        """The 1-D positions of 3-component positions [3, ...] -> [...]."""
        return pos[0] + pos[1] - pos[2]

    def block(self, gh: int, gw: int) -> tuple[torch.Tensor, int]:
        if self.video_start is None:
            self.video_start = self.next_text
        n = gh * gw
        t_off = self.next_block_offset()
        pos = block_positions(self.video_start, t_off, n, 1)  # [3, n]: (s + t_off, s + j, s)
        self.next_text = self.video_start + t_off + n
        self.interval = max(self.interval, float(n))
        self.blocks += 1
        return pos, t_off

    def next_block_offset(self) -> int:
        return 0 if self.video_start is None else self.next_text - self.video_start

    def block_end(self, t_offset: int, gh: int, gw: int) -> int:
        assert self.video_start is not None
        return self.video_start + t_offset + gh * gw - 1

    def extent(self, pos: torch.Tensor) -> torch.Tensor:
        return self.linear(pos)

    def ranked(self, pos: torch.Tensor, start: int) -> torch.Tensor:
        """Each held token's 1-D position -> start + its rank among the distinct ones, as (p, start, start)."""
        _, rank = torch.unique(self.linear(pos), sorted=True, return_inverse=True)
        out = torch.full_like(pos, start)
        out[0] = start + rank
        return out
