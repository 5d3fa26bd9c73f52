"""HERMES (memstream/hermes.py, hermes_layers.py): the per-layer budget holds on long streams, layer
roles keep what they should on planted scores, summaries are exact means, key re-rotation is RoPE,
an unbounded budget equals `full`, bad settings give one sentence, and the trace/stats add up."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AttentionInterface
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

import memstream
from memstream.attention import ATTENTION_NAME, memory_attention
from memstream.errors import ConfigError
from memstream.policies import hermes_layers as hs
from memstream.policies.hermes import HermesConfig, HermesMemory
from memstream.prompt import question_ids

Q = "What is there?"
# Our choices before the fidelity work, each a named option now (the defaults follow the release).
OURS = dict(role_rounding="ceil", recency="block", pseudo_queries="averaged", pseudo_forward="model",
            summary="running", smoothing="identity", compaction="slots")
SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample.mp4"


def random_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def hermes_stream(engine, frames, tokens_per_frame=16, **hermes) -> memstream.Stream:
    """A hermes stream fed two frames (one block) at a time."""
    stream = engine.stream(policy="hermes", fps=1.0, tokens_per_frame=tokens_per_frame, **hermes)
    for i in range(0, len(frames), 2):
        stream.add_frames(frames[i:i + 2], [float(i), float(i + 1)])
    return stream


# ---- scoring, selection and layer roles (no model) ----------------------------------------------


def test_layer_roles_follow_the_alpha_kappa_schedule():
    ceil = HermesConfig(role_rounding="ceil")
    roles = hs.layer_roles(ceil, 10)  # 1 shallow, 6 middle, 3 deep
    assert [r.name for r in roles] == ["shallow"] + ["middle"] * 6 + ["deep"] * 3
    assert (roles[0].alpha, roles[0].kappa, roles[0].gamma) == (1.0, 20.0, 0.1)
    assert roles[1].alpha == pytest.approx(0.75) and roles[1].kappa == pytest.approx(20.0)
    assert roles[6].alpha == pytest.approx(0.15) and roles[6].kappa == pytest.approx(8.0)
    assert roles[3].alpha == pytest.approx(0.75 - 0.6 * 0.4) and roles[3].gamma == 0.3
    assert all(r.alpha == 0.0 and r.gamma == 0.4 for r in roles[7:])
    assert [r.name for r in hs.layer_roles(ceil, 2)] == ["shallow", "deep"]
    assert [r.name for r in hs.layer_roles(ceil, 1)] == ["deep"]


def test_shallow_keeps_newest_and_deep_keeps_planted_attention():
    blocks = torch.arange(6).repeat_interleave(4)  # 6 blocks x 4 cells, time order
    cells = torch.arange(4).repeat(6)
    planted = torch.rand(24, generator=torch.Generator().manual_seed(0)) * 0.01
    hot = torch.tensor([1, 6, 7, 13, 20])  # tokens the pseudo questions attend to
    planted[hot] = 1.0
    shallow, deep = hs.LayerRole("shallow", 1.0, 20.0, 0.0), hs.LayerRole("deep", 0.0, 8.0, 0.4)
    keep_shallow = hs.select_top(hs.combine(planted, blocks, shallow), 10)
    assert keep_shallow.tolist() == list(range(14, 24))  # exactly the newest 10 tokens
    keep_deep = hs.select_top(hs.combine(planted, blocks, deep), 5)
    assert keep_deep.tolist() == hot.tolist()
    # smoothing blends the deeper score only where the token is held in both layers
    ids = [hs.token_ids(blocks, cells), hs.token_ids(blocks[::2], cells[::2])]
    upper = torch.linspace(0, 1, 12)
    out = hs.smooth([torch.zeros(24), upper], ids, [0.5, 0.4])
    assert torch.allclose(out[0][::2], 0.5 * upper) and torch.equal(out[0][1::2], torch.zeros(12))
    assert torch.equal(out[1], upper)


def test_attention_mass_is_a_hand_softmax_with_gqa_and_causal_rows():
    torch.manual_seed(0)
    q, k = torch.randn(4, 2, 8), torch.randn(2, 7, 8)  # Hq 4, Hkv 2, 2 query rows, 7 keys (3 new)
    rows = torch.tensor([0, 2])
    got = hs.attention_mass(q, k[:, :4], k[:, 4:], rows, 0.5)
    want = torch.zeros(7)
    for h in range(4):
        for i, r in enumerate(rows.tolist()):
            visible = 7 - 3 + r + 1
            want[:visible] += torch.softmax(q[h, i] @ k[h // 2, :visible].T * 0.5, -1) / 8
    assert torch.allclose(got, want, atol=1e-6)


# ---- the memory on the tiny model ---------------------------------------------------------------


def test_budget_holds_in_every_layer_after_every_chunk(engine):
    """40 blocks of 32 tokens (1280) through a 40-token budget, compressing every 2 blocks."""
    stream = engine.stream(policy="hermes", fps=1.0, tokens_per_frame=16, budget=40, chunk_frames=4,
                           summary="running")
    mem = stream.memory
    frames = random_frames(80, 56, 112, seed=3)
    for i in range(0, 80, 2):
        stream.add_frames(frames[i:i + 2], [float(i), float(i + 1)])
        bound = 40 if mem.since_compress == 0 else 40 + 32 * mem.since_compress  # a chunk waits on top
        assert all(s.n <= bound for s in mem.layers)
        assert all(torch.equal(s.block, torch.sort(s.block).values) for s in mem.layers)  # time order
    assert isinstance(mem, HermesMemory) and len(mem.blocks) == 40 and mem.blocks[0].n_tokens == 32
    assert mem.compressions == 20 and all(s.n == 40 for s in mem.layers)
    # layers choose different tokens; the deep layer carries a summary of the other 1240
    assert not torch.equal(mem.layers[0].block, mem.layers[1].block)
    assert mem.layers[1].count == 40 * 32 - 40 and mem.layers[0].count == 0


def test_planted_pseudo_attention_decides_the_deep_layer(engine, monkeypatch):
    # the pseudo questions attend to cell 5 of every block (ties broken toward the newest)
    monkeypatch.setattr(HermesMemory, "_pseudo_attention", lambda self, layers: [(s.cell == 5).float() for s in layers])
    stream = hermes_stream(engine, random_frames(24, 56, 112, seed=5), budget=6, chunk_frames=4, shallow_gamma=0.0,
                           role_rounding="ceil", summary="running")
    shallow, deep = stream.memory.layers
    n_blocks = len(stream.memory.blocks)
    # shallow: exactly the 6 newest tokens (the last cells of the last block)
    assert shallow.block.tolist() == [n_blocks - 1] * 6 and shallow.cell.tolist() == list(range(26, 32))
    # deep: cell 5 of the 6 newest blocks it has seen with that cell
    assert deep.cell.tolist() == [5] * 6
    assert deep.block.tolist() == list(range(n_blocks - 6, n_blocks))


def test_trace_attention_equals_the_models_own_softmax(engine):
    """The question's per-block attention in the trace (captured position-free queries, rotated by
    us) equals the softmax of the queries and keys the model's attention function really gets."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def spy(module, query, key, value, attention_mask, **kw):
        seen.setdefault(module.layer_idx, (query.clone(), key.clone()))  # the prefill's call
        return memory_attention(module, query, key, value, attention_mask, **kw)

    stream = hermes_stream(engine, random_frames(12, 56, 84, seed=13), tokens_per_frame=8, budget=20, chunk_frames=4)
    AttentionInterface.register(ATTENTION_NAME, spy)
    try:
        trace = stream.ask(Q, max_new_tokens=1).trace
    finally:
        AttentionInterface.register(ATTENTION_NAME, memory_attention)
    _, rows = question_ids(engine.backbone, Q)
    for layer, state in enumerate(stream.memory.layers):
        query, key = seen[layer]  # [1, Hq, S, d], [1, Hkv, K, d]
        s_new, k_len = query.shape[2], key.shape[2]
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)[0]  # [Hq, K, d]
        logits = query[0] @ key.transpose(-1, -2) * engine.backbone.spec.head_dim ** -0.5  # [Hq, S, K]
        visible = torch.arange(k_len)[None, :] <= torch.arange(s_new)[:, None] + k_len - s_new
        probs = torch.softmax(logits.masked_fill(~visible, float("-inf")), -1)[:, rows].mean(dim=(0, 1))
        held = probs[k_len - s_new - state.n: k_len - s_new]  # the held tokens precede the prompt
        want = torch.zeros(len(stream.memory.blocks)).index_add_(0, state.block, held)
        assert torch.allclose(trace.internal[layer], want, atol=1e-6)


def test_rotating_a_stored_key_equals_rope_of_its_position_free_key(engine, monkeypatch):
    """A held post-RoPE key moved from its position o to n == the model's own RoPE at n applied to the
    position-free key the k_proj hook reported, with all three M-RoPE sections moving."""
    free: list[list[torch.Tensor]] = []
    real = HermesMemory.run_forward

    def spy(self, cache, embeds, pos):
        real(self, cache, embeds, pos)
        free.append(list(cache.keys_free))

    monkeypatch.setattr(HermesMemory, "run_forward", spy)
    stream = hermes_stream(engine, random_frames(4, 56, 84, seed=6), budget=100)
    bb, state = engine.backbone, stream.memory.layers[1]
    m = stream.memory.blocks[-1].n_tokens
    k_free = free[-1][1].transpose(0, 1).unsqueeze(0)  # last block's position-free keys [1, Hkv, m, d]
    stored, old = state.keys[..., -m:, :], state.pos[:, -m:]
    assert len(set(old[1].tolist())) > 1 and len(set(old[2].tolist())) > 1
    new = old + torch.tensor([[37], [3], [-2]]) + torch.arange(m)  # every component moves, differently per token
    moved = bb.rotate_keys(stored, new - old)
    cos, sin = bb.lm.rotary_emb(k_free, new.unsqueeze(1))
    _, want = apply_rotary_pos_emb(k_free, k_free, cos, sin)
    assert torch.allclose(moved, want, atol=1e-5)


def test_summary_is_the_mean_of_everything_evicted(engine, monkeypatch):
    calls: list[tuple[list, list]] = []
    real = HermesMemory._compress

    def spy(self, layers, *rest):
        out, compressed = real(self, layers, *rest)
        calls.append((layers, out))
        return out, compressed

    monkeypatch.setattr(HermesMemory, "_compress", spy)
    stream = hermes_stream(engine, random_frames(20, 56, 84, seed=7), tokens_per_frame=8, budget=10, chunk_frames=4,
                           summary="running")
    mem, bb = stream.memory, engine.backbone
    keys, values = [], []
    for before, after in calls:
        b, a = before[1], after[1]  # the deep layer
        kept = set(hs.token_ids(a.block, a.cell).tolist())
        gone = torch.tensor([i for i, t in enumerate(hs.token_ids(b.block, b.cell).tolist()) if t not in kept])
        if len(gone):
            keys.append(bb.rotate_keys(b.keys[..., gone, :], mem.positions.video_start - b.pos[:, gone]))
            values.append(b.values[..., gone, :])
    keys, values = torch.cat(keys, -2), torch.cat(values, -2)
    deep = mem.layers[1]
    assert deep.count == keys.shape[-2] == sum(b.n_tokens for b in mem.blocks) - 10
    sk, sv = deep.summary()
    assert torch.allclose(sk, keys.double().mean(-2, keepdim=True).float(), atol=1e-6)
    assert torch.allclose(sv, values.double().mean(-2, keepdim=True).float(), atol=1e-6)
    first, second = stream.ask(Q, max_new_tokens=3), stream.ask(Q, max_new_tokens=3)
    assert torch.equal(first.first_logits, second.first_logits) and first.token_ids == second.token_ids


def test_hermes_with_a_budget_larger_than_the_stream_equals_full(engine):
    frames = random_frames(8, 56, 84, seed=1)
    full = engine.stream(policy="full", fps=1.0, tokens_per_frame=8)
    full.add_frames(frames, np.arange(8.0))
    want = full.ask(Q, max_new_tokens=3)
    for positions, options in [(p, o) for p in ("lazy", "eager") for o in ({}, OURS)]:  # released and ours
        stream = engine.stream(policy="hermes", fps=1.0, tokens_per_frame=8,
                               budget=10**6, chunk_frames=2, positions=positions, **options)
        stream.add_frames(frames, np.arange(8.0))
        got = stream.ask(Q, max_new_tokens=3)
        assert (got.first_logits - want.first_logits).abs().max().item() < 1e-5
        assert got.token_ids == want.token_ids
        assert stream.memory.compressions == 4


def test_eager_and_lazy_compaction_put_held_blocks_in_consecutive_slots(engine):
    frames = random_frames(40, 56, 112, seed=8)
    eager = hermes_stream(engine, frames, budget=40, chunk_frames=4, positions="eager", compaction="slots",
                          summary="running")
    lazy = hermes_stream(engine, frames, budget=40, chunk_frames=4, compaction="slots", summary="running")
    for stream in (eager, lazy):
        mem = stream.memory
        assert mem.compactions == (10 if stream is eager else 0)
        start, interval = mem.positions.video_start, mem.positions.interval
        for s in mem.layers:
            blocks, slot = torch.unique(s.block, return_inverse=True)
            want = torch.tensor([start + int(j * interval) for j in range(len(blocks))])[slot]
            assert torch.equal(s.pos[0], want) == (stream is eager)
    assert eager.memory.question_start() < lazy.memory.question_start()
    eager.ask(Q, max_new_tokens=2)


def test_lazy_compaction_triggers_near_the_position_limit(engine, monkeypatch):
    # pseudo questions that prefer newer blocks keep the held blocks few, so compaction frees positions
    monkeypatch.setattr(HermesMemory, "_pseudo_attention", lambda self, layers: [s.block.float() for s in layers])
    limit = engine.backbone.model.config.text_config.max_position_embeddings
    stream = hermes_stream(engine, random_frames(40, 56, 112, seed=8), budget=40, chunk_frames=4,
                           compact_margin=limit - 100)  # leave the stream only positions below 100
    mem = stream.memory
    assert mem.compactions >= 1 and mem.positions.video_start + 4 * 19 >= 100  # it would have passed 100
    assert mem.positions.next_text <= 100 and all(int(s.pos.max()) < 100 for s in mem.layers)
    assert len(stream.ask(Q, max_new_tokens=2).token_ids) >= 1


def test_failed_compression_leaves_memory_untouched(engine, monkeypatch):
    stream = hermes_stream(engine, random_frames(6, 56, 84, seed=9), tokens_per_frame=8, budget=10, chunk_frames=4)
    mem = stream.memory
    before = (stream.stats(), [s.keys.clone() for s in mem.layers], mem.positions.next_text)

    def boom(self, layers):
        raise RuntimeError("pseudo question failed")

    monkeypatch.setattr(HermesMemory, "_pseudo_attention", boom)
    with pytest.raises(RuntimeError):
        stream.add_frames(random_frames(2, 56, 84, seed=10), [6.0, 7.0])
    assert len(mem.blocks) == 3 and mem.positions.next_text == before[2]
    assert all(torch.equal(s.keys, k) for s, k in zip(mem.layers, before[1]))
    assert stream.stats()["tokens_per_layer"] == before[0]["tokens_per_layer"]


def test_after_answer_prefixes_pseudo_questions(engine):
    stream = hermes_stream(engine, random_frames(4, 56, 84, seed=11), tokens_per_frame=8, budget=5,
                           pseudo_queries="averaged")
    mem = stream.memory
    plain = mem._pseudo_prompts()
    answer = stream.ask("Where is the cat?", max_new_tokens=3)
    prefixed = mem._pseudo_prompts()
    text = engine.backbone.tokenizer.decode(prefixed[0][0])
    assert "Where is the cat?" in text and len(prefixed[0][0]) > len(plain[0][0])
    assert text.endswith("<|im_start|>assistant\n") and answer.done
    # the pseudo question's own tokens are the scored rows in both layouts
    for (ids, rows), (ids0, rows0) in zip(prefixed, plain):
        assert ids[rows] == ids0[rows0]


def test_stats_and_trace_shapes(engine):
    stream = hermes_stream(engine, random_frames(20, 56, 112, seed=12), budget=40, chunk_frames=4, summary="running")
    stats = stream.stats()
    for key in ("tokens_stored", "tokens_raw", "compression_ratio", "tokens_per_block", "bytes_per_block",
                "sink_tokens", "window_tokens", "bytes_cpu", "bytes_gpu", "tokens_per_layer", "summary_tokens"):
        assert key in stats
    assert stats["tokens_per_layer"] == [40, 40] and stats["tokens_stored"] == 40
    assert stats["tokens_raw"] == 10 * 32 and stats["compression_ratio"] == pytest.approx(8.0)
    assert stats["summary_tokens"] == [0, 1] and stats["sink_tokens"] == stream.memory.n_sink
    trace = stream.ask(Q, max_new_tokens=2).trace
    L, N = 2, 10
    assert trace.policy == "hermes" and trace.internal.shape == (L, N) and trace.kept.shape == (L, N)
    assert trace.kept.sum(1).tolist() == stats["tokens_per_layer"]
    for layer in range(L):
        held = trace.kept[layer] > 0
        assert trace.selected[layer].tolist() == held.nonzero().flatten().tolist()
        assert (trace.internal[layer][~held] == 0).all() and (trace.internal[layer][held] > 0).all()
        assert float(trace.internal[layer].sum()) < 1.0  # attention mass: sinks take the rest
    assert json.loads(json.dumps(trace.to_dict()))["kept"] == trace.kept.tolist()


@pytest.mark.parametrize("field, value, words", [
    ("budget", 0, "budget"), ("budget", 1.5, "budget"), ("chunk_frames", 3, "even"),
    ("shallow_ratio", 0.8, "shallow_ratio + deep_ratio"), ("deep_alpha", 2.0, "deep_alpha"),
    ("middle_alpha", (0.5,), "middle_alpha"), ("shallow_kappa", -1.0, "shallow_kappa"),
    ("positions", "compact", "'lazy' or 'eager'"), ("pseudo_questions", (), "pseudo_questions"),
    ("compact_margin", -5, "compact_margin"), ("summary", "yes", "summary"), ("summary", True, "'running'"),
    ("role_rounding", "floor", "'int' or 'ceil'"), ("recency", "age", "recency"),
    ("pseudo_queries", "local", "pseudo_queries"), ("pseudo_forward", "eager", "'manual' or 'model'"),
    ("smoothing", "cells", "smoothing"), ("compaction", "shift", "'ranks' or 'slots'"),
])
def test_bad_hermes_settings_give_one_sentence(engine, field, value, words):
    with pytest.raises(ConfigError) as err:
        engine.stream(policy="hermes", **{field: value})
    msg = str(err.value)
    assert words in msg and msg.endswith(".") and msg.count(". ") == 0 and "\n" not in msg
    with pytest.raises(ConfigError, match="Unknown hermes option"):
        engine.stream(policy="hermes", budgett=5)


def test_cli_budget_and_chunk_frames(engine, tiny_cache, monkeypatch):
    from memstream import cli

    monkeypatch.setattr(cli, "load", lambda **kw: engine)  # the session's tiny engine, same model
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["ask", str(SAMPLE), "What moves?", "--policy", "hermes", "--budget", "64",
                       "--chunk-frames", "4", "--tokens-per-frame", "16", "--max-new-tokens", "2", "--json"])
    assert rc == 0
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    stats = result["stats"]
    assert result["policy"] == "hermes" and stats["budget"] == 64
    assert max(stats["tokens_per_layer"]) <= 64 + 2 * 32  # a partial chunk may wait on top of the budget
    assert result["trace"]["kept"] is not None
    assert cli.main(["ask", str(SAMPLE), "What moves?", "--policy", "hermes", "--chunk-frames", "3"]) == 2
