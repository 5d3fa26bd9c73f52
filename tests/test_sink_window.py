"""sink-window (memstream/policies/sink_window.py): attention sinks + the most recent n_local tokens.

The oracle: with a window larger than the stream it equals `full`. With a smaller one it holds exactly
the window (nothing stored beyond it), reports the blocks the window covers as selected, and a question
leaves it unchanged."""

from __future__ import annotations

import json

import numpy as np
import torch

import memstream

Q = "What is there?"


def frames_of(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 56, 84, 3), dtype=np.uint8)


def ingest(engine, frames, policy, **kw) -> memstream.Stream:
    stream = engine.stream(policy=policy, fps=1.0, tokens_per_frame=8, **kw)
    stream.add_frames(frames, np.arange(len(frames), dtype=float))
    stream.flush()
    return stream


def test_a_window_larger_than_the_stream_equals_full(engine):
    frames = frames_of(9, seed=1)  # odd: the last block is padded
    want = ingest(engine, frames, "full").ask(Q, max_new_tokens=3)
    got = ingest(engine, frames, "sink-window", n_local=10**6).ask(Q, max_new_tokens=3)
    assert (got.first_logits - want.first_logits).abs().max().item() < 1e-5
    assert got.token_ids == want.token_ids
    assert [s.tolist() for s in got.trace.selected] == [list(range(5))] * 2


def test_a_bounded_window_holds_the_newest_tokens_only(engine):
    stream = ingest(engine, frames_of(12, seed=2), "sink-window", n_local=40)  # 6 blocks of 16 tokens
    st = stream.stats()
    assert st["blocks"] == 6 and st["window_tokens"] == 40 and st["bytes_cpu"] > 0
    assert stream.memory.host_bytes() == 0 and stream.memory.store is None  # nothing beyond the window
    before = [tuple(t.clone() for t in kv) for kv in stream.memory.window]
    first, second = stream.ask(Q, max_new_tokens=2), stream.ask(Q, max_new_tokens=2)
    assert torch.equal(first.first_logits, second.first_logits)
    assert all(torch.equal(a, b) for kv, old in zip(stream.memory.window, before) for a, b in zip(kv, old))
    # 40 tokens = the last 2 blocks and 8 tokens of the one before: blocks 3, 4, 5 are (partly) held
    assert all(s.tolist() == [3, 4, 5] for s in first.trace.selected)
    assert first.trace.internal.shape == (2, 6)  # every block is still scored, for the heatmap


def test_sink_window_in_the_cli(engine, monkeypatch, capsys):
    from pathlib import Path

    from memstream import cli

    monkeypatch.setattr(cli, "load", lambda **kw: engine)
    sample = Path(__file__).resolve().parent.parent / "assets" / "sample.mp4"
    assert cli.main(["ask", str(sample), "What moves?", "--policy", "sink-window", "--n-local", "32",
                     "--tokens-per-frame", "16", "--max-new-tokens", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["policy"] == "sink-window" and out["stats"]["window_tokens"] == 32
    assert cli.main(["ask", str(sample), "q?", "--policy", "sink-window", "--topk", "3"]) == 2
    assert "belongs to policy" in capsys.readouterr().err
