"""Oracles for the engine: streaming equals the offline forward, rekv equals full where it should,
positions match a hand computation, retrieval finds planted blocks, memory survives questions,
threads and failures."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from queries import mean_question_query

import memstream
from memstream.store import BlockStore

Q = "What is there?"


def random_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def ingest(engine, frames, policy="full", **kw) -> memstream.Stream:
    stream = engine.stream(policy=policy, fps=1.0, tokens_per_frame=kw.pop("tokens_per_frame", 8), **kw)
    stream.add_frames(frames, np.arange(len(frames), dtype=float))
    stream.flush()
    return stream


@pytest.mark.parametrize("family", ["engine", "qwen3_engine"])  # Qwen2.5-VL, Qwen3-VL
@pytest.mark.parametrize("shape", [(60, 100), (90, 50)])
def test_full_streaming_equals_offline_forward(request, family, shape):
    engine = request.getfixturevalue(family)
    frames = random_frames(7, *shape)  # odd: the last block is the 7th frame padded
    stream = ingest(engine, frames)
    assert stream.stats()["blocks"] == 4
    got = stream.ask(Q, max_new_tokens=4)
    ref = engine.reference_answer(frames, np.arange(7.0), Q, fps=1.0, tokens_per_frame=8, max_new_tokens=4)
    delta = (got.first_logits - ref.first_logits).abs().max().item()
    assert delta < 1e-4, delta
    assert got.token_ids == ref.token_ids
    assert got.first_logits.shape == (engine.backbone.spec.vocab,)


@pytest.mark.parametrize("family", ["engine", "qwen3_engine"])
def test_rekv_with_everything_retrieved_equals_full(request, family):
    engine = request.getfixturevalue(family)
    frames = random_frames(8, 56, 84, seed=1)
    full = ingest(engine, frames, "full").ask(Q, max_new_tokens=3)
    stream = ingest(engine, frames, "rekv", topk=100, n_local=10**6)
    first = stream.ask(Q, max_new_tokens=3)
    second = stream.ask(Q, max_new_tokens=3)
    assert torch.equal(first.first_logits, second.first_logits)
    assert (first.first_logits - full.first_logits).abs().max().item() < 1e-5
    assert first.token_ids == full.token_ids
    # compact positions with every block retrieved move nothing
    compact = ingest(engine, frames, "rekv", topk=100, n_local=10**6, positions="compact").ask(Q, max_new_tokens=3)
    assert (compact.first_logits - full.first_logits).abs().max().item() < 1e-5


def test_sink_window_equals_full_until_the_window_drops_blocks(engine):
    frames = random_frames(8, 56, 84, seed=1)
    full = ingest(engine, frames, "full").ask(Q, max_new_tokens=3)
    wide = ingest(engine, frames, "sink-window", n_local=10**6)
    assert (wide.ask(Q, max_new_tokens=3).first_logits - full.first_logits).abs().max().item() < 1e-5
    narrow = ingest(engine, frames, "sink-window", n_local=20)
    st = narrow.stats()
    # what it holds is the window, not every token it ingested
    assert st["tokens_stored"] == st["window_tokens"] == 20 < st["tokens_raw"]
    assert narrow.ask(Q, max_new_tokens=1).tokens_seen == 20


def test_asking_leaves_memory_unchanged(engine):
    stream = ingest(engine, random_frames(10, 56, 56, seed=2), "rekv", topk=2, n_local=20)
    before = stream.stats()
    window = [tuple(t.clone() for t in kv) for kv in stream.memory.window]
    a = stream.ask(Q, max_new_tokens=5)
    parts = list(stream.ask(Q, max_new_tokens=5, stream=True))
    assert stream.stats() == before
    for kv, saved in zip(stream.memory.window, window):
        assert all(torch.equal(x, y) for x, y in zip(kv, saved))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert parts[-1].token_ids == a.token_ids and torch.equal(parts[-1].first_logits, a.first_logits)
    assert [len(p.token_ids) for p in parts[:-1]] == list(range(1, len(parts)))  # one token per yield
    # the trace comes with the final answer only (drawing it never delays the first token), and equals
    # the non-streamed answer's
    assert all(p.trace is None for p in parts[:-1]) and parts[-1].trace.to_dict() == a.trace.to_dict()


def test_positions_hand_computed(engine, monkeypatch):
    """fps 1 -> interval 4; 3 blocks of a 3 x 5 grid after the sink; then the question."""
    bb = engine.backbone
    seen: list[torch.Tensor] = []
    real = bb.decode

    def spy(embeds, positions, cache, logits=True):
        seen.append(positions.clone())
        return real(embeds, positions, cache, logits)

    monkeypatch.setattr(bb, "decode", spy)
    stream = ingest(engine, random_frames(6, 84, 140, seed=3), "full")
    stream.ask(Q, max_new_tokens=2)
    sink, b0, b1, b2, question, step = seen
    n = sink.shape[1]
    assert torch.equal(sink, torch.arange(n).expand(3, n))
    s = n  # the video starts right after the sink
    rows = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)
    cols = torch.arange(5).repeat(3)
    for block, t in ((b0, 0), (b1, 4), (b2, 8)):
        assert torch.equal(block[0], torch.full((15,), s + t))
        assert torch.equal(block[1], s + rows) and torch.equal(block[2], s + cols)
    q0 = s + 8 + 1  # max position so far (t of block 2) + 1
    assert torch.equal(question, torch.arange(q0, q0 + question.shape[1]).expand(3, -1))
    assert torch.equal(step, torch.full((3, 1), q0 + question.shape[1]))


def test_retrieval_finds_a_planted_block_in_every_layer(engine):
    stream = ingest(engine, random_frames(16, 56, 56, seed=4), "rekv", topk=3, n_local=16)
    mem = stream.memory
    first = stream.ask(Q, max_new_tokens=1)
    assert all(len(sel) == 3 and torch.equal(sel, sel.sort().values) for sel in first.trace.selected)
    planted = 5
    # Plant block 5's representative key along each layer's (group-summed) question query.
    for layer in range(engine.backbone.spec.n_layers):
        rep = mem.rep_keys(layer)  # [N, Hkv, d], a writable view
        query = first_query(stream, layer).view(rep.shape[1], -1, rep.shape[-1]).sum(1)
        rep[planted] = 100 * query / query.norm()
    again = stream.ask(Q, max_new_tokens=1)
    for sel in again.trace.selected:
        assert planted in sel.tolist() and len(sel) == 3
    assert int(again.trace.internal.argmax(dim=1).unique().item()) == planted


def first_query(stream, layer: int) -> torch.Tensor:
    return mean_question_query(stream, layer, Q)


def test_block_store_round_trip_is_bit_exact(engine):
    store = BlockStore(pin=False)
    kv = [torch.randn(2, 2, 2, n, 16) for n in (3, 5, 4)]  # [L, 2, Hkv, n, d]
    for block in kv:
        store.add(block)
    got = store.gather([0, 2], layer=1, device=torch.device("cpu"))
    assert torch.equal(got, torch.cat([kv[0][1], kv[2][1]], dim=-2))
    assert store.nbytes == sum(t.numel() * 4 for t in kv)
    # through a stream: the stored blocks are exactly the tokens the window holds
    stream = ingest(engine, random_frames(6, 56, 56, seed=5), "rekv", topk=8, n_local=10**6)
    mem = stream.memory
    for layer in range(engine.backbone.spec.n_layers):
        stored = mem.store.gather([0, 1, 2], layer, torch.device("cpu"))
        wk, wv = mem.window[layer]
        assert torch.equal(stored[0], wk[0]) and torch.equal(stored[1], wv[0])


def test_failed_ingest_leaves_memory_unchanged(engine, failing_layer):
    stream = ingest(engine, random_frames(4, 56, 56, seed=6), "rekv", topk=4, n_local=100)
    before = stream.stats()
    reference = stream.ask(Q, max_new_tokens=2)
    with failing_layer(), pytest.raises(RuntimeError):
        stream.add_frames(random_frames(2, 56, 56, seed=7), [10.0, 11.0])
    after = stream.stats()
    for key in ("blocks", "tokens_stored", "bytes_cpu", "window_tokens"):
        assert after[key] == before[key]
    again = stream.ask(Q, max_new_tokens=2)
    assert torch.equal(again.first_logits, reference.first_logits)
    stream.add_frames(random_frames(2, 56, 56, seed=7), [12.0, 13.0])
    assert stream.stats()["blocks"] == before["blocks"] + 1


@pytest.mark.slow
def test_questions_while_a_thread_ingests(engine):
    """Every answer given mid-ingestion equals the answer of a stream holding the same blocks."""
    frames = random_frames(24, 56, 56, seed=8)
    stream = engine.stream(policy="full", fps=1.0, tokens_per_frame=8)
    errors: list[BaseException] = []

    def feed():
        try:
            for i in range(0, 24, 2):
                stream.add_frames(frames[i:i + 2], [float(i), float(i + 1)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=feed)
    worker.start()
    answers = []
    while worker.is_alive() or len(answers) < 3:
        if stream.stats()["blocks"]:
            answers.append(stream.ask(Q, max_new_tokens=1))
        if len(answers) > 40:
            break
    worker.join()
    assert not errors
    assert [a.blocks_seen for a in answers] == sorted(a.blocks_seen for a in answers)
    for a in {a.blocks_seen: a for a in answers}.values():
        twin = ingest(engine, frames[: 2 * a.blocks_seen], "full")
        assert (twin.ask(Q, max_new_tokens=1).first_logits - a.first_logits).abs().max().item() < 1e-5


def test_stats_and_trace_shapes(engine):
    stream = ingest(engine, random_frames(9, 56, 112, seed=9), "rekv", topk=2, n_local=30)
    st = stream.stats()
    assert st["frames"] == 9 and st["blocks"] == 5 and st["frames_pending"] == 0
    assert st["tokens_stored"] == 5 * st["tokens_per_block"]
    assert st["bytes_cpu"] > 0 and st["bytes_gpu"] == 0
    trace = stream.ask(Q, max_new_tokens=1).trace
    L = engine.backbone.spec.n_layers
    assert trace.internal.shape == (L, 5) and trace.internal_agg.shape == (5,)
    assert trace.fused.shape == (5,) and trace.external is None
    assert torch.equal(trace.block_times, torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0]))
    assert len(trace.selected) == L and set(trace.bias) == {"internal", "fused"}


def test_an_odd_frame_waits_for_its_partner(engine):
    stream = engine.stream(policy="full", fps=1.0, tokens_per_frame=8)
    stream.add_frames(random_frames(1, 56, 56))
    with pytest.raises(memstream.EmptyMemoryError):
        stream.ask(Q)
    assert stream.stats()["frames"] == 1 and stream.stats()["blocks"] == 0
    stream.add_frames(random_frames(1, 56, 56, seed=1))
    assert stream.stats()["blocks"] == 1


def test_close_and_pacing(engine, monkeypatch):
    from pathlib import Path

    sample = str(Path(__file__).resolve().parent.parent / "assets" / "sample.mp4")
    frames = random_frames(4, 60, 120, seed=10)  # thumbnails are the demo's (tests/test_ui_session.py)
    # pacing: the replay sleeps until each frame's time at `pace` x real time
    clock, slept = [100.0], []  # a fake clock that only sleeping advances

    def fake_sleep(s):
        slept.append(round(s, 9))
        clock[0] += s

    monkeypatch.setattr("memstream.engine.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr("memstream.engine.time.sleep", fake_sleep)
    paced = engine.stream(policy="rekv", fps=1.0, tokens_per_frame=8)
    assert paced.add_video(sample, pace=4.0) == 4
    assert slept == [0.0] + [0.25] * 7  # frame k (k s into the video) is due k/4 s after the start
    # close() from another thread stops a replay between blocks and refuses new frames
    closing = engine.stream(policy="rekv", fps=1.0, tokens_per_frame=8)
    monkeypatch.setattr("memstream.engine.time.sleep", lambda s: closing.close() if closing.stats()["blocks"] else None)
    assert closing.add_video(sample, pace=1.0) == 1
    with pytest.raises(memstream.InputError):
        closing.add_frames(frames)
    assert closing.ask(Q, max_new_tokens=1).blocks_seen == 1


def test_two_streams_on_one_engine_answer_in_parallel(engine):
    """Streams share the backbone; their forwards may run at once in different threads."""
    a_frames, b_frames = random_frames(8, 56, 56, seed=11), random_frames(8, 56, 84, seed=12)
    expected = [ingest(engine, f, "rekv", topk=2, n_local=30).ask(Q, max_new_tokens=3) for f in (a_frames, b_frames)]
    results: dict[int, list] = {0: [], 1: []}

    def work(i, frames):
        stream = ingest(engine, frames, "rekv", topk=2, n_local=30)
        for _ in range(3):
            results[i].append(stream.ask(Q, max_new_tokens=3))

    threads = [threading.Thread(target=work, args=(i, f)) for i, f in enumerate((a_frames, b_frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert len(results[i]) == 3
        for got in results[i]:
            assert torch.equal(got.first_logits, expected[i].first_logits)
            assert all(torch.equal(x, y) for x, y in zip(got.trace.selected, expected[i].trace.selected))


def test_answer_prefix_and_retrieval_query(engine):
    from memstream.prompt import question_ids

    frames = random_frames(5, 56, 84, seed=13)
    question = "Which shape moved? Options: (A) ball (B) box"
    prefix = "Best option: ("
    got = ingest(engine, frames, "full").ask(question, max_new_tokens=2, answer_prefix=prefix)
    ref = engine.reference_answer(frames, np.arange(5.0), question, tokens_per_frame=8, max_new_tokens=2,
                                  answer_prefix=prefix)
    assert (got.first_logits - ref.first_logits).abs().max().item() < 1e-4 and got.token_ids == ref.token_ids
    plain = ingest(engine, frames, "full").ask(question, max_new_tokens=2)
    assert not torch.allclose(plain.first_logits, got.first_logits)  # the prefix is really in the prompt

    bb = engine.backbone
    ids, qslice = question_ids(bb, question, "Which shape moved?", prefix)
    assert bb.tokenizer.decode(ids[qslice]) == "Which shape moved?"
    assert bb.tokenizer.decode(ids).endswith("assistant\n" + prefix)
    stream = ingest(engine, frames, "rekv", topk=1, n_local=10)
    whole = stream.ask(question, max_new_tokens=1)
    assert torch.equal(stream.ask(question, max_new_tokens=1, query=question).first_logits, whole.first_logits)
    part = stream.ask(question, max_new_tokens=1, query="Which shape moved?")
    assert not torch.equal(part.trace.internal, whole.trace.internal)  # scored by fewer tokens
    with pytest.raises(memstream.InputError):
        stream.ask(question, query="not in the question")
