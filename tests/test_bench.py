"""Benchmarks: every `bench` subcommand runs in-process through the CLI and prints a JSON last line
with the documented keys and sane values; the FLOP counter matches a hand count and torch's own
FLOP counter; the `small` preset has the documented shape."""

from __future__ import annotations

import json

import pytest
import torch

import memstream
from memstream.bench import flops as fl
from memstream.cli import main


@pytest.fixture(autouse=True)
def _tiny_in_session_cache(tiny_cache, monkeypatch):
    """`--model tiny` through the CLI builds into this session's cache, not ~/.cache."""
    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))


def bench_json(capsys, *argv: str) -> dict:
    assert main(["bench", *argv, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_ingest_reports_first_and_last_block_cost(capsys):
    out = bench_json(capsys, "ingest", "--policy", "rekv", "--blocks", "10", "--tokens-per-frame", "8",
                     "--n-local", "40")
    assert {"policy", "blocks", "first_block_s", "last_block_s", "ratio"} <= set(out)
    assert out["policy"] == "rekv" and out["blocks"] == 10
    assert out["first_block_s"] > 0 and out["last_block_s"] > 0 and out["ratio"] > 0
    assert out["ratio_normalised"] > 0
    assert out["window_tokens"] <= 40 and len(out["curve"]) == 10
    # 10 blocks: the first and the last 10% are one block each, and the curve (binned separately) has
    # one point per block, so the ratio is the curve's last point over its first
    assert [out["curve"][0][0], out["curve"][-1][0]] == [0, 9]
    assert out["ratio"] == pytest.approx(out["curve"][-1][1] / out["curve"][0][1])


def test_ttft_for_a_policy_and_offline(capsys):
    rows = {p: bench_json(capsys, "ttft", "--policy", p, "--minutes", "0.1", "--questions", "2",
                          "--tokens-per-frame", "8") for p in ("full", "offline")}
    for policy, out in rows.items():
        assert {"policy", "minutes", "blocks", "ttft_s"} <= set(out)
        assert out["policy"] == policy and out["minutes"] == 0.1 and out["blocks"] == 3  # 6 frames at 1 fps
        assert out["ttft_s"] > 0 and out["questions"] == 2
    assert rows["full"]["video_tokens"] == rows["offline"]["video_tokens"]  # same stream, same tokens


def test_ttft_of_several_policies_in_one_run(capsys):
    assert main(["bench", "ttft", "--policy", "rekv,hermes,memstream", "--expert", "tiny", "--budget", "20",
                 "--minutes", "0.1", "--questions", "2", "--tokens-per-frame", "8", "--json", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]
    assert [r["policy"] for r in rows] == ["rekv", "hermes", "memstream"]  # one JSON line each, in order
    assert all(r["interleaved"] == ["rekv", "hermes", "memstream"] and r["questions"] == 2 for r in rows)
    assert rows[1]["budget"] == 20 and rows[1]["video_tokens"] <= rows[0]["video_tokens"]
    assert rows[0]["tokens_raw"] == rows[2]["tokens_raw"] == rows[0]["video_tokens"]  # same frames


def test_an_unknown_policy_is_one_clear_error(capsys):
    assert main(["bench", "ingest", "--policy", "nope", "--blocks", "2", "--device", "cpu"]) == 2
    assert "Unknown policy 'nope'" in capsys.readouterr().err


def test_efficiency_reports_mfu(capsys):
    out = bench_json(capsys, "efficiency", "--calls", "2", "--blocks-per-call", "2", "--warmup", "1",
                     "--tokens-per-frame", "16", "--peak-seconds", "0.3")
    assert 0 < out["mfu"] < 1.5 and out["device"] == "cpu"
    row = out["devices"][0]
    assert row["blocks"] == 4 and row["peak_tflops"] > 0 and row["gflop_per_block"] > 0
    assert all(0 < row[k] < 1.5 for k in ("mfu_global", "mfu_vision", "mfu_decoder"))
    assert 0 < row["vision_share"] < 1 and 0 < row["attention_share"] < 1


def test_memory_reports_bytes_per_block(capsys, engine):
    out = bench_json(capsys, "memory", "--policies", "full,rekv", "--tpf", "8", "--lengths", "3,6", "--n-local", "20")
    assert out["lengths"] == [3, 6] and len(out["rows"]) == 2
    spec = engine.backbone.spec
    for row in out["rows"]:
        tokens = row["tokens_per_block"]
        assert row["kv_bytes_per_block"] == spec.n_layers * 2 * spec.n_kv_heads * tokens * spec.head_dim * 4
        assert [a["blocks"] for a in row["at"]] == [3, 6]
        assert all(a["bytes_cpu_per_block"] > 0 and a["bytes_gpu"] == 0 and a["peak_gpu_bytes"] is None
                   for a in row["at"])
    rekv = next(r for r in out["rows"] if r["policy"] == "rekv")
    # rekv keeps every block in the store: at least one block's keys/values more per block
    assert rekv["marginal_cpu_bytes_per_block"] >= rekv["kv_bytes_per_block"]


def test_flop_counter_by_hand():
    assert fl.linear_flops(3, 5, 7) == 2 * 3 * 5 * 7
    assert fl.attention_flops(2, 10, heads=4, head_dim=16) == 4 * 2 * (2 * 2 * 16 * 10)  # heads x (QK^T, PV)

    class Text:  # the tiny decoder's sizes
        hidden_size, intermediate_size, num_hidden_layers = 64, 128, 2
        num_attention_heads, num_key_value_heads = 4, 2

    s, ctx = 10, 30
    dense = 2 * s * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128)  # q, k+v, o, gate+up+down
    attention = 2 * (2 * s * 16 * (ctx + s)) * 4  # QK^T and PV, 4 heads of 16
    got = fl.decoder_flops(Text, s, ctx)
    assert (got.dense, got.attention) == (2 * dense, 2 * attention)
    # a 5 x 6 merged grid in 4 x 4 windows: 4x4, 4x2, 1x4, 1x2 merged tokens
    assert fl.window_lengths(5, 6, 4) == [16, 8, 4, 2]


@pytest.mark.parametrize("family", ["engine", "qwen3_engine"])
def test_flop_counter_matches_torch_counting_a_real_ingest(request, family):
    """Our config-based count equals torch's FlopCounterMode on the actual forward of one block (per
    family; a Qwen3-VL block's forward also runs its text rows)."""
    from torch.utils.flop_counter import FlopCounterMode

    from memstream.bench.common import SyntheticVideo
    from memstream.video import resize_frames

    engine = request.getfixturevalue(family)
    bb, cfg = engine.backbone, engine.backbone.model.config
    stream = engine.stream(policy="rekv", fps=1.0, tokens_per_frame=16, n_local=50)
    synthetic = SyntheticVideo()
    for i in range(3):
        stream.add_frames(synthetic.frames(2 * i, 2))
    mem = stream.memory
    context = mem.n_sink + mem.window_tokens()
    pair = resize_frames(synthetic.frames(6, 2), stream.frame_size)
    with FlopCounterMode(display=False) as vision_count:
        tokens = bb.encode_blocks(pair)
    with FlopCounterMode(display=False) as decoder_count:
        info = mem.ingest_block(tokens[0], (6.0, 7.0), stream.grid)
    assert fl.vision_flops(cfg.vision_config, *stream.grid).total == vision_count.get_total_flops()
    assert fl.decoder_flops(cfg.text_config, info.n_tokens, context).total == decoder_count.get_total_flops()


def test_small_preset_has_the_documented_shape():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from memstream.backbones.qwen2_5_vl import SMALL, preset_config, preset_tokenizer

    cfg = preset_config(SMALL, preset_tokenizer())
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers) == (2048, 11008, 4)
    assert (t.num_attention_heads, t.num_key_value_heads, t.hidden_size // t.num_attention_heads) == (16, 2, 128)
    assert (v.patch_size, v.spatial_merge_size, v.temporal_patch_size, v.window_size) == (14, 2, 2, 112)
    assert (v.depth, v.hidden_size, v.num_heads, v.out_hidden_size) == (4, 1280, 16, 2048)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    params = sum(p.numel() for p in model.parameters())
    assert 0.40e9 < params < 0.45e9  # "about 0.43 G parameters" (backbones/qwen2_5_vl.py)
    assert model.model.language_model.layers[0].self_attn.k_proj.weight.shape == (2 * 128, 2048)


def test_presets_load_through_the_same_path(tiny_cache):
    from memstream.backbones import PRESETS, preset_checkpoint

    assert set(PRESETS) >= {"tiny", "small"}
    assert preset_checkpoint("tiny", tiny_cache) == preset_checkpoint("tiny", tiny_cache)
    assert preset_checkpoint("tiny", tiny_cache).name.startswith("tiny-qwen2_5_vl-")
    assert memstream.load("tiny", device="cpu", cache_dir=str(tiny_cache)).backbone.spec.hidden == 64


def test_compression_prints_its_table_once_and_memory_its_progress(capsys):
    assert main(["bench", "compression", "--budgets", "8", "--blocks", "3", "--warmup", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("| tokens/frame |") == 1 and "markdown:" not in out  # the table once, at the end
    assert out.rstrip().splitlines()[-1].startswith("| 8 | ")
    assert main(["bench", "memory", "--policies", "rekv", "--tpf", "8", "--lengths", "2,3", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "memory: rekv, 8 tokens/frame, up to 3 blocks (1/1)" in err


@pytest.mark.slow
def test_boundary_reports_overhead_and_bytes_of_the_worker_mode(capsys):
    out = bench_json(capsys, "boundary", "--policy", "rekv", "--minutes", "0.2", "--questions", "1",
                     "--tokens-per-frame", "8", "--blocks-per-call", "2")
    assert out["policy"] == "rekv" and out["blocks"] == 6 and out["first_logits_equal"] is True
    assert set(out["ingest_call_s"]) == {"in_process", "worker"} and out["ingest_overhead_s"] >= 0
    ingest, question = out["ingest_last_bytes"], out["question_bytes"]
    assert ingest["sent"] > ingest["sent_tensors"] > 0 and question["sent"] >= question["sent_tensors"] > 0
    assert question["sent_tensors"] < out["store_bytes"]  # the stored blocks stay in their files


@pytest.mark.slow
def test_boundary_synthetic_fills_the_memory_between_two_real_calls(capsys):
    out = bench_json(capsys, "boundary", "--policy", "rekv", "--minutes", "0.5", "--fps", "1", "--questions", "1",
                     "--tokens-per-frame", "8", "--blocks-per-call", "2", "--synthetic")
    # 30 frames = 15 blocks: one real call (2 blocks), 12 random, one real call (the last frames' block)
    assert out["synthetic"] is True and out["blocks"] == 15 and out["first_logits_equal"] is True
    assert main(["bench", "boundary", "--policy", "hermes", "--minutes", "0.1", "--synthetic", "--device", "cpu"]) == 2
    assert "use --policy rekv" in capsys.readouterr().err
