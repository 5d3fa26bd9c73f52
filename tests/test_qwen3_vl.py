"""Qwen3-VL (`tiny-qwen3-vl`; test_engine.py runs its oracles on both families), and what is its own:
timestamps from real frame times, the running position counter (by hand and by transformers'
`get_rope_index`), exact key re-rotation under interleaved M-RoPE, and DeepStack rows that travel with
their tokens (into the stock-equal forward, and out with the tokens compression drops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import memstream
from memstream.backbones import preset_checkpoint, qwen3_vl
from memstream.engine import Engine
from memstream.experts import build_tiny_expert
from memstream.prompt import question_ids, sink_ids

Q = "What is there?"
# a webcam's arrival times: irregular, not multiples of 1/fps
TIMES = np.array([0.0, 1.3, 2.1, 3.9, 4.2, 5.9, 7.3, 8.2, 9.3, 9.9, 11.4, 12.6])


@pytest.fixture(scope="module")
def engine(qwen3_engine):
    return qwen3_engine


@pytest.fixture(scope="module")
def expert_engine(engine):
    return Engine(engine.backbone, build_tiny_expert())


def random_frames(n: int, h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def ingest(engine, frames, policy="full", times=None, **kw) -> memstream.Stream:
    stream = engine.stream(policy=policy, fps=1.0, tokens_per_frame=kw.pop("tokens_per_frame", 8), **kw)
    stream.add_frames(frames, TIMES[: len(frames)] if times is None else times)
    stream.flush()
    return stream


def max_delta(a, b) -> float:
    return (a.first_logits - b.first_logits).abs().max().item()


# ---- loading --------------------------------------------------------------------------------------


def test_family_comes_from_the_checkpoint(engine, tiny_cache):
    bb = engine.backbone
    assert isinstance(bb, qwen3_vl.Qwen3VLBackbone) and bb.model.config.model_type == "qwen3_vl"
    assert bb.spec.pixels_per_token == 32 and bb.spec.frames_per_block == 2 and bb.deepstack == 2
    path = preset_checkpoint("tiny-qwen3-vl", tiny_cache)  # a directory: the family is read from its config
    again = memstream.load(model=str(path), device="cpu")
    assert isinstance(again.backbone, qwen3_vl.Qwen3VLBackbone)


def test_small_preset_has_2b_layer_shapes():
    from transformers import Qwen3VLForConditionalGeneration

    cfg = qwen3_vl.preset_config(qwen3_vl.SMALL, qwen3_vl.preset_tokenizer())
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers) == (2048, 6144, 4)
    assert (t.num_attention_heads, t.num_key_value_heads, t.head_dim) == (16, 8, 128)
    assert (v.depth, v.hidden_size, v.intermediate_size, v.num_heads, v.patch_size) == (4, 1024, 4096, 16, 16)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = Qwen3VLForConditionalGeneration(cfg)
    params = sum(p.numel() for p in model.parameters())
    assert 0.35e9 < params < 0.37e9  # 0.36 G, of which 0.16 G vision (4 mergers of 4096 x 4096 + 4096 x 2048)
    assert model.model.language_model.layers[0].self_attn.k_proj.weight.shape == (8 * 128, 2048)
    assert model.model.language_model.rotary_emb.mrope_section == [24, 20, 20]
    assert qwen3_vl.REAL_SHAPES["Qwen/Qwen3-VL-2B-Instruct"]["decoder_layers"] == 28


# ---- the oracle -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(60, 100), (90, 50)])
def test_full_streaming_equals_offline_forward_at_real_times(engine, shape):
    """As in test_engine.py (where both families run at whole seconds), at a webcam's irregular times."""
    frames = random_frames(7, *shape)  # odd: the last block is the 7th frame padded
    stream = ingest(engine, frames)
    assert stream.stats()["blocks"] == 4
    got = stream.ask(Q, max_new_tokens=4)
    ref = engine.reference_answer(frames, TIMES[:7], Q, fps=1.0, tokens_per_frame=8, max_new_tokens=4)
    assert max_delta(got, ref) < 1e-4, max_delta(got, ref)
    assert got.token_ids == ref.token_ids


def test_the_oracle_sees_deepstack_and_timestamps(engine, monkeypatch):
    """The oracle is not blind to what is new: without the DeepStack rows, or with nominal times in
    place of the real ones, streaming no longer equals the stock forward."""
    frames = random_frames(4)
    ref = engine.reference_answer(frames, TIMES[:4], Q, fps=1.0, tokens_per_frame=8)
    nominal = ingest(engine, frames, times=np.arange(4.0)).ask(Q, max_new_tokens=1)
    assert max_delta(nominal, ref) > 1e-3
    bb = engine.backbone
    encode = bb.encode_blocks
    hidden = bb.spec.hidden

    def without_deepstack(x):
        tokens = encode(x)
        assert tokens.shape[-1] == hidden * (1 + bb.deepstack) and tokens[..., hidden:].abs().sum() > 0
        return torch.cat([tokens[..., :hidden], torch.zeros_like(tokens[..., hidden:])], -1)

    monkeypatch.setattr(bb, "encode_blocks", without_deepstack)
    blind = ingest(engine, frames).ask(Q, max_new_tokens=1)
    assert max_delta(blind, ref) > 1e-3


# ---- timestamps and positions ---------------------------------------------------------------------


def test_timestamps_are_the_processors_from_real_times(engine):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    fps, indices = 3.0, list(range(7))  # the processor pads an odd count by repeating the last index
    stock = Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
    ours = [qwen3_vl.timestamp_text(tuple(i / fps for i in indices[k:k + 2])) for k in range(0, 7, 2)]
    assert ours == [f"<{t:.1f} seconds>" for t in stock]
    stream = ingest(engine, random_frames(5))
    texts = [engine.backbone.tokenizer.decode(engine.backbone.block_text(b.times)[0]) for b in stream.memory.blocks]
    # means of (0.0, 1.3), (2.1, 3.9) and the padded last block's one frame 4.2
    assert texts == ["<0.7 seconds><|vision_start|>", "<3.0 seconds><|vision_start|>", "<4.2 seconds><|vision_start|>"]


def test_positions_by_hand_and_by_get_rope_index(engine):
    """Two blocks of a 2 x 3 grid at real times (0.0, 1.0) and (2.0, 3.0); the sink is `<|im_start|>user\\n`
    (6 tokens: the special token and 5 bytes), each block is framed by `<t seconds><|vision_start|>`
    (13 + 1 tokens) and `<|vision_end|>`."""
    bb = engine.backbone
    tracker = bb.position_tracker(fps=1.0)
    sink = sink_ids(bb)
    assert len(sink) == 6
    pos = [tracker.text(6)]
    for times in ((0.0, 1.0), (2.0, 3.0)):
        before, after = bb.block_text(times)
        assert (len(before), len(after)) == (14, 1)
        pos.append(tracker.block(2, 3, 14, 1)[0])
    q_ids, _ = question_ids(bb, Q)
    pos.append(tracker.text_at(tracker.next_text, len(q_ids)))
    got = torch.cat(pos, dim=1)

    def text(a, b):  # text tokens a..b: t = h = w
        return [[p, p, p] for p in range(a, b + 1)]

    def visual(s):  # rows 0..1, cols 0..2 from s
        return [[s, s + r, s + c] for r in range(2) for c in range(3)]

    n_q = len(q_ids)
    by_hand = (text(0, 5)                           # sink
               + text(6, 19) + visual(20) + text(23, 23)   # block 0: "<0.5 seconds><|vision_start|>", 6 tokens, end
               + text(24, 37) + visual(38) + text(41, 41)  # block 1: starts at 23 + 1, its tokens at 38
               + text(42, 41 + n_q))                # the question follows the last <|vision_end|>
    assert got.T.tolist() == by_hand
    # transformers' own rule over the same ids gives the same positions
    ids = list(sink)
    kinds = [0] * len(sink)
    for times in ((0.0, 1.0), (2.0, 3.0)):
        before, after = bb.block_text(times)
        ids += before + [bb.video_token_id] * 6 + after
        kinds += [0] * len(before) + [2] * 6 + [0] * len(after)
    ids += q_ids
    kinds += [0] * n_q
    stock, _ = bb.model.model.get_rope_index(
        torch.tensor([ids]), video_grid_thw=torch.tensor([[2, 4, 6]]), mm_token_type_ids=torch.tensor([kinds]))
    assert torch.equal(stock[:, 0], got)


def test_rotating_keys_is_exact_under_interleaved_mrope(engine):
    bb = engine.backbone
    rope = bb.lm.rotary_emb
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 40, bb.spec.head_dim, generator=g)  # [Hkv, S, d] position-free keys
    old = torch.randint(0, 300, (3, 40), generator=g)
    new = torch.randint(0, 300, (3, 40), generator=g)

    def at(pos):  # the keys as the forward computes them at `pos`
        cos, sin = rope(raw, pos.unsqueeze(1))
        return raw * cos[0] + torch.cat([-raw[..., 8:], raw[..., :8]], -1) * sin[0]

    moved = bb.rotate_keys(at(old), new - old)
    assert (moved - at(new)).abs().max().item() < 1e-4
    # interleaving: a move in h alone turns only the frequency pairs i = 1, 4, 7 (mrope_section [2, 3, 3])
    delta = torch.zeros(3, 40, dtype=torch.long)
    delta[1] = 5
    changed = (bb.rotate_keys(at(old), delta) - at(old)).abs().amax(dim=(0, 1)) > 1e-6  # [d]
    pairs = (changed[:8] | changed[8:]).nonzero().flatten().tolist()
    assert pairs == [1, 4, 7]


# ---- every policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy,options", [
    ("full", {}), ("sink-window", {"n_local": 40}), ("rekv", {"topk": 2, "n_local": 40}),
    ("rekv", {"topk": 2, "n_local": 40, "positions": "compact"}),
    ("memstream", {"topk": 2, "n_local": 40}), ("memstream-internal", {"topk": 2, "n_local": 40}),
    ("external", {"topk": 2, "n_local": 40}), ("hermes", {"budget": 40}),
    ("hermes", {"budget": 40, "chunk_frames": 4, "positions": "eager", "compaction": "slots"}),
    ("hermes", {"budget": 40, "chunk_frames": 4, "positions": "eager", "compaction": "ranks"}),
])
def test_every_policy_ingests_answers_and_traces(expert_engine, policy, options):
    stream = ingest(expert_engine, random_frames(12, seed=3), policy, **options)
    assert stream.stats()["blocks"] == 6
    answer = stream.ask(Q, max_new_tokens=3)
    assert answer.done and len(answer.token_ids) >= 1 and torch.isfinite(answer.first_logits).all()
    assert answer.trace is not None and answer.trace.internal.shape[1] == 6
    again = stream.ask(Q, max_new_tokens=3)  # asking leaves the memory as it was
    assert torch.equal(again.first_logits, answer.first_logits)


def test_hermes_compacted_keys_equal_keys_computed_there(engine):
    """After eager "slots" compactions every held key is where its position says: rotated back to its
    ingest position it is the key a `full` stream stored there (layer 0, whose keys depend on nothing
    but the token and its position): whole blocks move, their timestamp rows included, exactly."""
    frames = random_frames(8, seed=4)
    stream = ingest(engine, frames, "hermes", budget=30, chunk_frames=2, positions="eager", compaction="slots")
    mem = stream.memory
    assert mem.compactions >= 1
    full = ingest(engine, frames, "full")
    starts = np.cumsum([0] + [b.n_tokens for b in full.memory.blocks])  # first row of each block
    state = mem.layers[0]
    keep = ~state.is_summary
    rows = torch.tensor([int(starts[i]) + row_of(full.memory.blocks[i], c)
                         for i, c in zip(state.block[keep].tolist(), state.cell[keep].tolist())])
    assert len({b for b in state.block[keep].tolist()}) >= 2
    stored = full.memory.window[0][0][..., rows, :]
    original = ingest_positions(full)[:, rows]
    assert not torch.equal(original, state.pos[:, keep])  # something did move
    back = engine.backbone.rotate_keys(state.keys[..., keep, :], original - state.pos[:, keep])
    assert (back - stored).abs().max().item() < 1e-4


def row_of(info, cell: int) -> int:
    """The row among a block's stored rows of its token with cell `cell` (a visual token: its grid cell;
    a text row: gh*gw + j, j counting the text before and then after the visual tokens)."""
    gh, gw = info.grid
    nb, _ = info.text_rows
    if cell < gh * gw:
        return nb + cell
    j = cell - gh * gw
    return j if j < nb else gh * gw + j


def ingest_positions(stream) -> torch.Tensor:
    """Positions [3, N] of every block row a `full` stream stored, in order."""
    bb = stream.engine.backbone
    tracker = bb.position_tracker(fps=1.0)
    tracker.text(stream.memory.n_sink)
    parts = []
    for b in stream.memory.blocks:
        before, after = bb.block_text(b.times)
        parts.append(tracker.block(*b.grid, len(before), len(after))[0])
    return torch.cat(parts, dim=1)


# ---- DeepStack rows go with their tokens ------------------------------------------------------------


def test_compression_drops_deepstack_rows_with_their_tokens(engine, monkeypatch):
    bb = engine.backbone
    frames = random_frames(6, seed=5)
    frames[2:4] = frames[0:2]  # block 1 repeats block 0: compression stores only the floor
    frames[3, :32, :32] = 255  # ... but for a corner
    seen = []
    run = bb.run_decoder

    def record(embeds, positions, cache, logits=True):
        if embeds.shape[-1] > bb.spec.hidden:  # a block's forward
            seen.append(embeds.clone())
        return run(embeds, positions, cache, logits)

    monkeypatch.setattr(bb, "run_decoder", record)
    stream = ingest(engine, frames, "memstream-internal", topk=2, compress_threshold=0.999, compress_floor=1,
                    times=np.arange(6.0))
    blocks = stream.memory.blocks
    assert blocks[0].token_index is None and blocks[1].token_index is not None
    kept = blocks[1].token_index
    resized = memstream.video.resize_frames(frames[2:4], stream.frame_size)
    tokens = bb.encode_blocks(resized)[0]  # [gh*gw, hidden * (1 + D)]
    assert 1 <= kept.numel() < tokens.shape[0]
    nb, na = blocks[1].text_rows
    rows = seen[1]
    assert rows.shape == (nb + kept.numel() + na, tokens.shape[-1])
    assert torch.equal(rows[nb: nb + kept.numel()], tokens[kept])  # embedding and DeepStack rows of the kept
    assert rows[:nb, bb.spec.hidden:].abs().sum() == 0 and rows[-na:, bb.spec.hidden:].abs().sum() == 0
    assert stream.ask(Q, max_new_tokens=2).done


def test_cli_ask_eval_and_bench_take_the_model(tiny_cache, monkeypatch, capsys, tmp_path):
    import json

    import videos

    from memstream.cli import main

    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    model = ["--model", "tiny-qwen3-vl", "--tokens-per-frame", "8", "--device", "cpu"]
    path = videos.write_video(tmp_path / "clip.mp4", random_frames(4, 64, 64))
    assert main(["ask", str(path), Q, *model, "--max-new-tokens", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answer"] is not None
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"video_id": "v", "video_path": "clip.mp4", "duration": 0.4, "conversations": [
        {"question": "What moves?", "choices": ["a ball", "a car"], "answer": "a car"}]}]))
    assert main(["eval", str(ann), "--video-root", str(tmp_path), "--out", str(tmp_path / "run.jsonl"), *model,
                 "--max-new-tokens", "2", "--no-progress", "--json"]) == 0
    assert len((tmp_path / "run.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    assert main(["bench", "ttft", "--policy", "rekv,hermes", "--budget", "20", "--minutes", "0.1", "--questions", "1",
                 *model, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]
    assert [r["policy"] for r in rows] == ["rekv", "hermes"]


def test_demo_loads_the_preset_and_a_webcam_gives_real_times(tiny_cache, monkeypatch):
    """`python app.py --model tiny-qwen3-vl`: the preset loads with the tiny expert and the random-weight
    banner; webcam frames reach the memory at their arrival times, which the timestamps are made of."""
    import time

    import app
    from memstream_demo.manager import SessionManager
    from memstream_demo.state import Limits, Settings

    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    engine, banner = app.load_engine("tiny-qwen3-vl", "auto", "cpu")
    assert isinstance(engine.backbone, qwen3_vl.Qwen3VLBackbone) and engine.expert_name == "tiny"
    assert app.TINY_BANNER in banner
    m = SessionManager(engine, Settings(policy="rekv", tokens_per_frame=8, fps=8.0, max_new_tokens=2),
                       Limits(webcam_gap_s=5.0))
    try:
        s = m.get("cam")
        for frame in random_frames(6, 48, 64, seed=6):
            s.push_webcam(frame)
            time.sleep(0.13)
        deadline = time.monotonic() + 60
        while s.status().get("blocks", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        blocks = s.streams[0].memory.blocks
        assert len(blocks) == 3
        times = [t for b in blocks for t in b.times]
        assert times[0] == 0.0 and all(abs(t / 0.125 - round(t / 0.125)) > 1e-6 for t in times[1:])  # not k / fps
        texts = [engine.backbone.tokenizer.decode(engine.backbone.block_text(b.times)[0]) for b in blocks]
        assert texts == [qwen3_vl.timestamp_text(b.times) + "<|vision_start|>" for b in blocks]
        assert any(p.done for _, _, p in s.ask(Q))
    finally:
        m.shutdown()
