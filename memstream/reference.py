"""The oracle: what a user without memstream would run, one standard forward over everything.

The stock model class's forward (`Backbone.stock_forward`; for Qwen2.5-VL
`Qwen2_5_VLForConditionalGeneration.forward`) encodes all sampled frames at once with the vision
tower, scatters them into its video placeholders, and runs the decoder with its own KV cache.
Prompt and positions follow the same rules as a stream, so under policy `full` a stream's first
logits must equal these (tests/test_engine.py).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import video
from .backbones import Backbone
from .checks import check_question, check_times
from .config import StreamConfig
from .decoding import IncrementalDetokenizer, greedy_tokens
from .prompt import question_ids, sink_ids
from .trace import Answer


@torch.inference_mode()
def reference_answer(backbone: Backbone, frames: np.ndarray, times: list[float] | np.ndarray | None, question: str, *,
                     fps: float = 1.0, tokens_per_frame: int = 256, max_new_tokens: int = 1,
                     answer_prefix: str = "") -> Answer:
    """The oracle: one standard forward of the model over all frames and the question.

    Uses the stock model's forward (`Backbone.stock_forward`: vision tower over all frames at once,
    placeholder tokens, its own KV cache), the same prompt as a stream, and positions from the same
    rule. Under policy `full`, a stream's `first_logits` must equal these.
    """
    q = check_question(question, max_new_tokens)
    cfg = StreamConfig(fps=fps, tokens_per_frame=tokens_per_frame)
    bb, spec = backbone, backbone.spec
    t0 = time.perf_counter()
    frames = video.to_rgb_frames(frames)
    size = bb.frame_size(frames.shape[1], frames.shape[2], cfg.tokens_per_frame)
    frames = video.resize_frames(frames, size)
    n_frames = len(frames)
    times_arr = check_times(times, n_frames, None, cfg.fps)
    per = spec.frames_per_block
    if n_frames % per:  # the last block padded with its last frame, as a stream's flush() does
        frames = np.concatenate([frames] + [frames[-1:]] * (per - n_frames % per))
    n_blocks = len(frames) // per
    gh, gw = size[0] // spec.pixels_per_token, size[1] // spec.pixels_per_token
    tracker = bb.position_tracker(cfg.fps)
    sink = sink_ids(bb)
    q_ids, _ = question_ids(bb, q, answer_prefix=answer_prefix)
    # each block's frame times, as a stream records them (a padded last block lists its real frames only)
    block_times = [tuple(times_arr[i: min(i + per, n_frames)].tolist()) for i in range(0, len(frames), per)]
    pos = [tracker.text(len(sink))]
    for t in block_times:
        before, after = bb.block_text(t)
        pos.append(tracker.block(gh, gw, len(before), len(after))[0])
    n_video = sum(p.shape[1] for p in pos[1:])  # the blocks' tokens, their own text rows included
    start = tracker.next_text
    pos.append(tracker.text_at(start, len(q_ids)))
    first, cache = bb.stock_forward(sink, frames, block_times, q_ids, torch.cat(pos, dim=1))
    ttft = time.perf_counter() - t0
    def step(token: int, position: int) -> torch.Tensor:
        nonlocal cache
        logits, cache = bb.stock_step(cache, token, position)  # the stock model's own KV cache
        return logits

    detok = IncrementalDetokenizer(bb.tokenizer)
    for token in greedy_tokens(first, step, start_position=start + len(q_ids), max_new_tokens=max_new_tokens,
                               eos_ids=bb.eos_ids):
        detok.add(token)
    return Answer(question=q, text=detok.finish(), token_ids=detok.token_ids, ttft_s=ttft,
                  first_logits=first.cpu(), trace=None, asked_at_s=float(times_arr[-1]) + 1.0 / cfg.fps,
                  frames_seen=n_frames, blocks_seen=n_blocks, tokens_seen=n_video, policy="offline",
                  total_s=time.perf_counter() - t0)
