"""SmolVLM2 (`tiny-smolvlm2`): the oracle (streaming `full` equals one stock forward of
`SmolVLMForConditionalGeneration`), rekv retrieving everything equals full, positions and the prompt equal a
hand computation, and every policy ingests, answers and traces through the same Backbone interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import memstream
from memstream.backbones import smolvlm

Q = "What is there?"
TIMES = [0.0, 1.4, 2.0, 59.9, 61.0, 125.5, 126.0]  # real, uneven frame times (a webcam's arrivals)


@pytest.fixture(scope="module")
def smol(tiny_cache):
    return memstream.load(model="tiny-smolvlm2", device="cpu", cache_dir=str(tiny_cache))


def random_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def ingest(engine, frames, policy="full", times=None, tokens_per_frame=16, **kw) -> memstream.Stream:
    stream = engine.stream(policy=policy, fps=1.0, tokens_per_frame=tokens_per_frame, **kw)
    stream.add_frames(frames, TIMES[: len(frames)] if times is None else times)
    stream.flush()
    return stream


def test_family_comes_from_the_checkpoint(smol, tiny_cache):
    from memstream.backbones import preset_checkpoint

    assert isinstance(smol.backbone, smolvlm.SmolVLMBackbone)
    path = preset_checkpoint("tiny-smolvlm2", tiny_cache)
    again = memstream.load(model=str(path), device="cpu")  # a directory: the family from its model_type
    assert isinstance(again.backbone, smolvlm.SmolVLMBackbone)
    assert smol.backbone.spec.frames_per_block == 1


@pytest.mark.parametrize("shape,tpf", [((40, 70), 16), ((90, 50), 9)])
@pytest.mark.parametrize("n", [5, 7])
def test_full_streaming_equals_the_stock_forward(smol, shape, tpf, n):
    frames = random_frames(n, *shape, seed=n)
    stream = ingest(smol, frames, tokens_per_frame=tpf)
    assert stream.stats()["blocks"] == n  # one frame per block: nothing is padded
    got = stream.ask(Q, max_new_tokens=4)
    ref = smol.reference_answer(frames, TIMES[:n], Q, fps=1.0, tokens_per_frame=tpf, max_new_tokens=4)
    delta = (got.first_logits - ref.first_logits).abs().max().item()
    assert delta <= 1e-4, delta
    assert got.token_ids == ref.token_ids


def test_the_timestamps_are_the_frames_real_times(smol):
    """Changing one frame's time changes the stream's answer and the oracle's the same way."""
    frames = random_frames(3, 64, 64, seed=3)
    a = ingest(smol, frames, times=[0.0, 1.0, 2.0]).ask(Q, max_new_tokens=1)
    b = ingest(smol, frames, times=[0.0, 1.0, 75.0]).ask(Q, max_new_tokens=1)
    ref = smol.reference_answer(frames, [0.0, 1.0, 75.0], Q, tokens_per_frame=16)
    assert (a.first_logits - b.first_logits).abs().max().item() > 1e-4
    assert (b.first_logits - ref.first_logits).abs().max().item() <= 1e-4


def test_prompt_and_positions_equal_a_hand_computation(smol):
    bb = smol.backbone
    assert smolvlm.frame_text(0.0) == "\nFrame from 00:00:"
    assert smolvlm.frame_text(125.9) == "\nFrame from 02:05:"  # truncated, as the processor's int()
    before, after = bb.block_text((125.9,))
    assert bb.tokenizer.decode(before) == "\nFrame from 02:05:<fake_token_around_image><global-img>"
    assert bb.tokenizer.decode(after) == "<fake_token_around_image>"
    assert bb.frame_size(480, 640, 16) == (64, 64)  # square: 4 x 4 tokens of 16 px
    stream = ingest(smol, random_frames(3, 48, 48), tokens_per_frame=16)
    sink = len(bb.tokenize(smolvlm.CHAT.sink))
    per = len(before) + 16 + len(after)  # 18 text + 2 marker tokens, 16 visual, 1 marker: every block the same
    blocks = stream.memory.blocks
    assert [(b.grid, b.n_tokens, b.text_rows) for b in blocks] == [((4, 4), per, (len(before), 1))] * 3
    assert [b.t_offset for b in blocks] == [0, per, 2 * per]
    assert stream.memory.question_start() == sink + 3 * per
    # the tracker's positions: sink 0..sink-1, block i from sink + i * per, one step per token
    tracker = smolvlm.LinearPositionTracker()
    text = tracker.text(sink)
    pos = [tracker.block(4, 4, len(before), len(after))[0] for _ in range(3)]
    assert torch.cat([text, *pos], dim=1).tolist() == [list(range(sink + 3 * per))]
    assert tracker.compact_question_start(2, 4, 4) == sink + 2 * per  # two retrieved blocks in slots 0, 1
    assert tracker.slot_delta(2 * per, 1, per).tolist() == [[-per] * per]  # block 2 to slot 1


def test_rekv_retrieving_everything_equals_full(smol):
    frames = random_frames(6, 48, 64, seed=1)
    full = ingest(smol, frames).ask(Q, max_new_tokens=3)
    for positions in ("original", "compact"):
        got = ingest(smol, frames, "rekv", topk=100, n_local=10**6, positions=positions).ask(Q, max_new_tokens=3)
        assert (got.first_logits - full.first_logits).abs().max().item() < 1e-5, positions
        assert got.token_ids == full.token_ids


def test_rotate_keys_moves_keys_exactly(smol):
    """Re-rotating keys by a delta [1, n] equals applying RoPE at the new positions."""
    bb = smol.backbone
    raw = torch.randn(1, 2, 5, bb.spec.head_dim)  # pre-RoPE keys [1, Hkv, n, d]

    def rope_at(pos: torch.Tensor) -> torch.Tensor:  # the decoder's own RoPE at 1-D positions [n]
        cos, sin = bb.lm.rotary_emb(raw, pos.unsqueeze(0))
        half = raw.shape[-1] // 2
        return raw * cos[0] + torch.cat((-raw[..., half:], raw[..., :half]), dim=-1) * sin[0]

    old = torch.tensor([[30, 31, 32, 33, 44]])  # four tokens of a block and a text token
    delta = torch.tensor([[-10, -10, -10, -10, 3]])  # the block to an earlier slot; the text token on by 3
    moved = bb.rotate_keys(rope_at(old[0]), delta)
    expected = rope_at((old + delta)[0])
    assert (moved - expected).abs().max().item() < 1e-5


POLICIES = [("full", {}), ("rekv", dict(topk=2, n_local=40)), ("memstream", dict(topk=2, n_local=40)),
            ("memstream-internal", dict(topk=2, n_local=40)), ("external", dict(topk=2)),
            ("hermes", dict(budget=40, chunk_frames=2)), ("sink-window", dict(n_local=40))]


@pytest.mark.parametrize("policy,options", POLICIES)
def test_every_policy_ingests_answers_and_traces(tiny_cache, policy, options):
    engine = memstream.load(model="tiny-smolvlm2", expert="tiny", device="cpu", cache_dir=str(tiny_cache))
    stream = ingest(engine, random_frames(7, 40, 60, seed=4), policy, **options)
    answer = stream.ask(Q, max_new_tokens=3)
    assert answer.blocks_seen == 7 and answer.first_logits.shape == (engine.backbone.spec.vocab,)
    trace = answer.trace
    assert trace.block_times.tolist() == pytest.approx(TIMES)
    assert trace.internal.shape[0] in (0, engine.backbone.spec.n_layers)
    assert len(trace.selected) == engine.backbone.spec.n_layers
    assert stream.stats()["blocks"] == 7


@pytest.mark.parametrize("compaction,room,frames", [("ranks", 400, 14), ("slots", 400, 14)])
def test_hermes_compaction_keeps_1d_positions_distinct(smol, compaction, room, frames):
    """Past the position limit hermes re-indexes what it holds: on 1-D positions every held token keeps a
    position of its own, below where the question starts, and the stream still answers. The stream may use
    positions < room: sinks 74 + at most 60 held + 2 x 37 of a chunk + the next block; on 1-D positions
    "slots" is the same dense re-indexing as "ranks"."""
    limit = smol.backbone.spec.max_positions
    stream = ingest(smol, random_frames(frames, 48, 48, seed=6), "hermes", budget=60, chunk_frames=2,
                    compact_margin=limit - room, compaction=compaction, times=[float(i) for i in range(frames)])
    mem = stream.memory
    assert mem.compactions > 0
    start = mem.question_start()
    for state in mem.layers:
        flat = state.pos[0]  # [n] 1-D positions
        assert state.pos.shape[0] == 1 and flat.unique().numel() == flat.numel() and int(flat.max()) < start < room
    assert stream.ask(Q, max_new_tokens=2).blocks_seen == frames


def test_cli_ask_eval_and_bench_take_the_model(tiny_cache, monkeypatch, capsys, tmp_path):
    import json

    import videos

    from memstream.cli import main

    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    model = ["--model", "tiny-smolvlm2", "--tokens-per-frame", "16", "--device", "cpu"]
    path = videos.write_video(tmp_path / "clip.mp4", random_frames(3, 64, 64))
    assert main(["ask", str(path), Q, *model, "--max-new-tokens", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["answer"] is not None
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"video_id": "v", "video_path": "clip.mp4", "duration": 0.3, "conversations": [
        {"question": "What moves?", "choices": ["a ball", "a car"], "answer": "a car"}]}]))
    assert main(["eval", str(ann), "--video-root", str(tmp_path), "--out", str(tmp_path / "run.jsonl"), *model,
                 "--max-new-tokens", "2", "--no-progress", "--json"]) == 0
    assert len((tmp_path / "run.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    assert main(["bench", "ttft", "--policy", "rekv,hermes", "--budget", "40", "--minutes", "0.05",
                 "--questions", "1", *model, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]
    assert [r["policy"] for r in rows] == ["rekv", "hermes"] and rows[0]["blocks"] == 3  # 3 s, one frame a block


def test_demo_loads_the_preset_at_its_own_frame_size(tiny_cache, monkeypatch):
    """`python app.py --model tiny-smolvlm2`: the preset loads with the tiny expert, the random-weight banner,
    and the demo starts at the family's own tokens per frame; a webcam's frames keep their arrival times."""
    import time

    import app
    from memstream_demo.manager import SessionManager
    from memstream_demo.state import Limits, Settings

    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    engine, banner = app.load_engine("tiny-smolvlm2", "auto", "cpu")
    assert isinstance(engine.backbone, smolvlm.SmolVLMBackbone) and engine.expert_name == "tiny"
    assert app.TINY_BANNER in banner and engine.backbone.spec.default_tokens_per_frame == 16
    m = SessionManager(engine, Settings(policy="rekv", tokens_per_frame=16, fps=8.0, max_new_tokens=2),
                       Limits(webcam_gap_s=5.0))
    try:
        s = m.get("cam")
        for frame in random_frames(4, 48, 64, seed=6):  # the last one may still be on its way
            s.push_webcam(frame)
            time.sleep(0.13)
        deadline = time.monotonic() + 60
        while s.status().get("blocks", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        blocks = s.streams[0].memory.blocks
        assert len(blocks) >= 3 and blocks[0].times == (0.0,)
        assert all(abs(b.times[0] / 0.125 - round(b.times[0] / 0.125)) > 1e-6 for b in blocks[1:])  # not k / fps
        assert any(p.done for _, _, p in s.ask(Q))
    finally:
        m.shutdown()
