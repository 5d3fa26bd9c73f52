"""`bench live` on a tiny preset: the synthetic memory has the size of the stream it stands for, and the
figures are scaled by the real depths given."""

from __future__ import annotations

import argparse


def test_live_measures_one_model_with_a_synthetic_memory(tiny_cache, monkeypatch):
    from memstream.bench import live

    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    args = argparse.Namespace(one="tiny-smolvlm2:30:12:fp32", minutes=0.5, fps=1.0, frames=3, questions=2,
                              tokens_per_frame=None, threads=None)
    row = live.measure_one(args)
    assert row["real_depths"] == [30, 12] and row["built_depths"] == [2, 2]
    assert row["tokens_per_frame"] == 16  # the tiny preset's own frame: 64 px, 4 x 4 tokens
    assert row["blocks"] == 1 + 30 + 1 + 2  # the first block, 30 s of synthetic blocks, warm-up, 2 timed
    assert row["frame_s"] > 0 and abs(row["live_fps"] * row["frame_s"] - 1) < 1e-9
    assert row["ttft_s"] == row["ttft_built_s"] * 30 / 2
    assert "| tiny-smolvlm2 | fp32 | 16 |" in live.table_row(row)


def test_live_rejects_unknown_models():
    import pytest

    from memstream.bench import live

    with pytest.raises(SystemExit, match="not a preset"):
        live.parse_model("no-such-model")
    with pytest.raises(SystemExit, match="real depths"):
        live.parse_model("tiny-smolvlm2")
    assert live.parse_model("small-smolvlm2-500m") == ("small-smolvlm2-500m", 32, 12)
