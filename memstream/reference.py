"""The oracle: what a user without memstream would run, one standard forward over everything.

The stock `Qwen2_5_VLForConditionalGeneration.forward` encodes all sampled frames at once with
the vision tower, scatters them into `<|video_pad|>` placeholders, and runs the decoder with its
own KV cache. Prompt and positions follow the same rules as a stream, so under policy `full` a
stream's first logits must equal these (tests/test_engine.py).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import video
from .backbone import Backbone
from .config import StreamConfig, check_question, check_times
from .decoding import IncrementalDetokenizer, greedy_tokens
from .positions import PositionTracker, block_interval
from .prompt import question_ids, sink_text
from .trace import Answer


@torch.inference_mode()
def reference_answer(backbone: Backbone, frames: np.ndarray, times: list[float] | np.ndarray | None, question: str, *,
                     fps: float = 1.0, tokens_per_frame: int = 256, max_new_tokens: int = 1,
                     answer_prefix: str = "") -> Answer:
    """The oracle: one standard forward of the model over all frames and the question.

    Uses the stock `Qwen2_5_VLForConditionalGeneration.forward` (vision tower over all frames
    at once, placeholder tokens, its own KV cache), the same prompt as a stream, and positions
    from the same rule. Under policy `full`, a stream's `first_logits` must equal these.
    """
    q = check_question(question, max_new_tokens)
    cfg = StreamConfig(fps=fps, tokens_per_frame=tokens_per_frame).validate()
    bb, spec = backbone, backbone.spec
    t0 = time.perf_counter()
    frames = video.to_rgb_frames(frames)
    size = video.frame_size_for_budget(frames.shape[1], frames.shape[2], cfg.tokens_per_frame)
    frames = video.resize_frames(frames, size)
    n_frames = len(frames)
    times_arr = check_times(times, n_frames, None, cfg.fps)
    if n_frames % 2:
        frames = np.concatenate([frames, frames[-1:]])
    pixels, grid = bb.patchify(frames)
    n_blocks, gh, gw = int(grid[0, 0]), size[0] // spec.pixels_per_token, size[1] // spec.pixels_per_token
    tracker = PositionTracker(block_interval(cfg.fps, spec.tokens_per_second, spec.temporal_patch))
    sink = bb.tokenize(sink_text())
    q_ids, _ = question_ids(bb, q, answer_prefix=answer_prefix)
    pos = [tracker.text(len(sink))] + [tracker.block(gh, gw)[0] for _ in range(n_blocks)]
    start = tracker.next_text
    pos.append(torch.arange(start, start + len(q_ids)).expand(3, -1))
    ids = sink + [bb.video_token_id] * (n_blocks * gh * gw) + q_ids
    out = bb.model(input_ids=torch.tensor([ids], device=bb.device),
                   pixel_values_videos=pixels.to(bb.device, bb.dtype), video_grid_thw=grid.to(bb.device),
                   position_ids=torch.cat(pos, dim=1).unsqueeze(1).to(bb.device), use_cache=True)
    first = out.logits[0, -1].float()
    ttft = time.perf_counter() - t0
    cache = out.past_key_values  # the stock model's own KV cache

    def step(token: int, position: int) -> torch.Tensor:
        nonlocal cache
        out = bb.model(input_ids=torch.tensor([[token]], device=bb.device), past_key_values=cache,
                       position_ids=torch.full((3, 1, 1), position, device=bb.device), use_cache=True)
        cache = out.past_key_values
        return out.logits[0, -1].float()

    detok = IncrementalDetokenizer(bb.tokenizer)
    for token in greedy_tokens(first, step, start_position=start + len(q_ids), max_new_tokens=max_new_tokens,
                               eos_ids=bb.eos_ids):
        detok.add(token)
    return Answer(question=q, text=detok.finish(), token_ids=detok.token_ids, ttft_s=ttft,
                  first_logits=first.cpu(), trace=None, asked_at_s=float(times_arr[-1]) + 1.0 / cfg.fps,
                  frames_seen=n_frames, blocks_seen=n_blocks, tokens_seen=n_blocks * gh * gw, policy="offline",
                  total_s=time.perf_counter() - t0)
