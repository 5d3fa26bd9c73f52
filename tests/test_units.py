"""Hand computations for the small pieces: scores, selection, ranks, RoPE rotation, attention mask,
patch layout, positions, the tiny checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memstream.attention import memory_attention
from memstream.positions import PositionTracker, block_interval, block_t_offset
from memstream.retrieval import block_scores, minmax, select_blocks
from memstream.trace import RetrievalTrace, rank, spearman


def test_dot_and_cosine_scores_by_hand():
    # Hq = 4, Hkv = 2 (groups of 2), d = 2
    query = torch.tensor([[1.0, 0.0], [1.0, 2.0], [0.0, 1.0], [3.0, 0.0]])
    keys = torch.tensor([[[1.0, 1.0], [2.0, 0.0]], [[0.0, -1.0], [0.0, 0.0]]])  # [N=2, Hkv=2, d=2]
    # block 0: head0 (1,1).(1,0)+(1,1).(1,2) = 1+3 = 4; head1 (2,0).(0,1)+(2,0).(3,0) = 0+6 = 6 -> 10
    # block 1: head0 (0,-1).(1,0)+(0,-1).(1,2) = 0-2 = -2; head1 0 -> -2
    assert torch.allclose(block_scores(query, keys, "dot"), torch.tensor([10.0, -2.0]))
    # cosine against the GQA-repeated key: |q| = sqrt(1+5+1+9) = 4; |rep(k0)| = sqrt(2)*sqrt(2+4)
    expected0 = 10 / (4 * math.sqrt(2) * math.sqrt(6))
    expected1 = -2 / (4 * math.sqrt(2) * 1.0)
    assert torch.allclose(block_scores(query, keys, "cosine"), torch.tensor([expected0, expected1]))
    repeated = keys.repeat_interleave(2, dim=1).flatten(1)  # [N, Hq*d]
    assert torch.allclose(torch.nn.functional.cosine_similarity(repeated, query.flatten()[None]),
                          block_scores(query, keys, "cosine"))


def test_select_blocks_topk_time_order_and_ties():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2, 0.7])
    assert select_blocks(scores, 3).tolist() == [1, 3, 5]
    assert select_blocks(scores, 2).tolist() == [1, 3]
    tied = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert select_blocks(tied, 2).tolist() == [0, 1]  # ties go to the earlier block
    assert select_blocks(scores, 100).tolist() == list(range(6))


def test_chunked_selection_takes_whole_runs_by_mean():
    scores = torch.tensor([0.0, 1.0, 0.9, 0.9, 0.1, 0.1, 0.8, 0.0])
    # chunks of 2: means 0.5, 0.9, 0.1, 0.4 -> chunk 1 (blocks 2,3) then chunk 0 (block 1 before 0)
    assert select_blocks(scores, 2, chunk_size=2).tolist() == [2, 3]
    assert select_blocks(scores, 3, chunk_size=2).tolist() == [1, 2, 3]
    assert select_blocks(scores, 4, chunk_size=2).tolist() == [0, 1, 2, 3]
    # a trailing partial chunk is averaged over its own size
    assert select_blocks(torch.tensor([0.0, 0.0, 5.0]), 1, chunk_size=2).tolist() == [2]


def test_minmax_rank_and_spearman():
    assert torch.allclose(minmax(torch.tensor([[2.0, 4.0, 3.0]])), torch.tensor([[0.0, 1.0, 0.5]]))
    assert torch.equal(minmax(torch.tensor([3.0, 3.0])), torch.tensor([0.0, 0.0]))
    assert rank(torch.tensor([10.0, 30.0, 20.0, 20.0])).tolist() == [1.0, 4.0, 2.5, 2.5]
    t = torch.arange(6.0)
    assert spearman(t, t**3) == pytest.approx(1.0)
    assert spearman(t, -t) == pytest.approx(-1.0)
    # by hand: ranks x = 1..4, y = 2,1,4,3 -> d^2 = 1+1+1+1 = 4 -> 1 - 6*4/(4*15) = 0.6
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([2.0, 1, 4, 3])) == pytest.approx(0.6)
    assert math.isnan(spearman(t, torch.ones(6)))


def test_trace_aggregates_and_bias_on_a_planted_rising_score():
    times = torch.arange(5.0) * 2
    internal = torch.stack([torch.arange(5.0), 10 * torch.arange(5.0) + 3])  # both rise with time
    trace = RetrievalTrace.build(times, internal, [torch.tensor([3, 4]), torch.tensor([0, 4])])
    assert torch.allclose(trace.internal_agg, torch.linspace(0, 1, 5))
    assert trace.bias["internal"] == pytest.approx(1.0) and trace.bias["fused"] == pytest.approx(1.0)
    assert trace.selection_counts().tolist() == [1, 0, 0, 1, 2]
    assert trace.to_dict()["selected"] == [[3, 4], [0, 4]]


def test_attention_mask_is_bottom_right_causal():
    torch.manual_seed(0)
    q = torch.randn(1, 4, 3, 8)  # 3 new tokens, 4 query heads
    k = torch.randn(1, 2, 7, 8)  # 7 keys (4 cached + 3 new), 2 kv heads
    v = torch.randn(1, 2, 7, 8)
    out, _ = memory_attention(None, q, k, v, None, scaling=8**-0.5)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    for i in range(3):  # query i sees keys 0 .. 4 + i
        w = torch.softmax(q[:, :, i : i + 1] @ kk[:, :, : 5 + i].transpose(-1, -2) * 8**-0.5, dim=-1)
        ref = (w @ vv[:, :, : 5 + i]).squeeze(-2)  # [1, 4, 8]
        assert torch.allclose(out[:, i], ref, atol=1e-6)


def test_rotating_a_stored_key_equals_rope_at_the_new_position(engine):
    """RoPE(n) k == rotate(RoPE(o) k, n - o), with 3-D M-RoPE positions and all sections moving."""
    bb = engine.backbone
    d = bb.spec.head_dim
    torch.manual_seed(1)
    k = torch.randn(1, 2, 5, d)  # position-free keys
    old = torch.tensor([[3, 7, 7, 9, 20], [1, 2, 3, 4, 5], [0, 0, 6, 6, 1]])
    new = torch.tensor([[40, 41, 41, 42, 60], [1, 5, 3, 0, 5], [2, 0, 6, 9, 1]])

    def rope(x, pos):
        cos, sin = bb.lm.rotary_emb(x, pos.unsqueeze(1))
        half = d // 2
        return x * cos[0] + torch.cat((-x[..., half:], x[..., :half]), -1) * sin[0]

    moved = bb.rotate_keys(rope(k, old), new - old)
    assert torch.allclose(moved, rope(k, new), atol=1e-5)


def test_patchify_matches_the_qwen_video_processor(engine):
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    frames = np.random.default_rng(0).integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)
    ours, grid = engine.backbone.patchify(frames)
    proc = Qwen2VLVideoProcessor()(videos=[torch.from_numpy(frames).permute(0, 3, 1, 2)], do_resize=False,
                                   do_sample_frames=False, return_tensors="pt", cap_pixels_per_frame=False)
    assert torch.equal(grid, proc["video_grid_thw"])
    assert torch.allclose(ours, proc["pixel_values_videos"], atol=1e-5)


def test_blocks_encode_the_same_alone_or_batched(engine):
    frames = np.random.default_rng(1).integers(0, 256, (6, 56, 56, 3), dtype=np.uint8)
    together = engine.backbone.encode_blocks(frames)
    alone = torch.cat([engine.backbone.encode_blocks(frames[i:i + 2]) for i in (0, 2, 4)])
    assert together.shape == (3, 4, engine.backbone.spec.hidden)
    assert torch.allclose(together, alone, atol=1e-5)


def test_position_tracker_and_fractional_intervals():
    assert block_interval(1.0) == 4.0 and block_interval(0.5) == 8.0
    interval = block_interval(3.0)  # 4/3 steps per block: floor(i * 4/3)
    assert [block_t_offset(i, interval) for i in range(7)] == [0, 1, 2, 4, 5, 6, 8]
    tr = PositionTracker(4.0)
    assert tr.text(20).tolist() == [list(range(20))] * 3
    pos, t = tr.block(2, 3)
    assert t == 0 and pos[0].tolist() == [20] * 6
    assert pos[1].tolist() == [20, 20, 20, 21, 21, 21] and pos[2].tolist() == [20, 21, 22] * 2
    assert tr.next_text == 23  # w reached 22
    tr.block(2, 3)
    tr.block(2, 3)
    assert tr.next_text == 29  # the worked example in positions.py
    assert tr.compact_question_start(2, 2, 3) == 25  # slots 0, 1 -> t 20, 24


def test_tiny_checkpoint_tokenizer_and_determinism(engine, tiny_cache):
    from memstream.backbones import preset_checkpoint
    from memstream.backbones.qwen2_5_vl import SPECIAL_TOKENS as QWEN_SPECIAL_TOKENS

    tok = engine.backbone.tokenizer
    ids = tok("<|im_start|>user\nhé<|vision_start|>", add_special_tokens=False).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and len(ids) == 1 + 5 + 3 + 1  # "é" is two bytes
    assert tok.decode(tok("naïve ☃", add_special_tokens=False).input_ids) == "naïve ☃"
    assert all(tok.convert_tokens_to_ids(t) >= 256 for t in QWEN_SPECIAL_TOKENS)
    assert preset_checkpoint("tiny", tiny_cache) == preset_checkpoint("tiny", tiny_cache)  # cached, same dir
    w = engine.backbone.lm.layers[0].self_attn.q_proj.weight
    torch.manual_seed(0)
    from transformers import Qwen2_5_VLForConditionalGeneration

    from memstream.backbones.qwen2_5_vl import TINY, preset_config, preset_tokenizer

    fresh = Qwen2_5_VLForConditionalGeneration(preset_config(TINY, preset_tokenizer()))
    assert torch.equal(fresh.model.language_model.layers[0].self_attn.q_proj.weight, w)  # seeded weights


def test_row_buffer_grows_like_cat():
    from memstream.store import RowBuffer

    buf, rows = RowBuffer(), []
    for i in range(40):
        r = torch.full((1, 2, 3), float(i))
        buf.append(r)
        rows.append(r)
    assert torch.equal(buf.view, torch.cat(rows)) and buf.rows == 40
    buf.view[3] = -1.0  # a view: writes land in the buffer
    assert torch.equal(buf.view[3], torch.full((2, 3), -1.0))
