"""MemStream (memstream, memstream-internal, external): adaptive key selection and patch compression
on planted tensors and end to end, rank fusion against hand computations and plain loops, the
external expert's scores, the equivalence with rekv when every remedy is off, traces and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from queries import mean_question_query

import memstream
from memstream import cli, video
from memstream.engine import Engine
from memstream.fusion import rank_fuse, ranks
from memstream.keyselect import compress_keep, least_similar, resolve_count, token_cosine

Q = "What is there?"
SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample.mp4"


def random_frames(n: int, h: int = 56, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def ingest(engine, frames, policy, tokens_per_frame=8, **kw) -> memstream.Stream:
    stream = engine.stream(policy=policy, fps=1.0, tokens_per_frame=tokens_per_frame, **kw)
    stream.add_frames(frames, np.arange(len(frames), dtype=float))
    stream.flush()
    return stream


@pytest.fixture(scope="module")
def expert_engine(engine):
    from memstream.experts import build_tiny_expert

    return Engine(engine.backbone, build_tiny_expert())


# ---- keyselect: AKS and compression on planted tensors -------------------------------------------
def test_aks_keeps_exactly_the_changed_tokens():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(10, 2, 8, generator=g)  # [n, Hkv, d] keys of the previous block
    new = ref.clone() * 1.5  # same direction: cosine 1
    new[[2, 7]] = torch.randn(2, 2, 8, generator=g)  # two tokens change in every head
    assert least_similar(token_cosine(new, ref), 2).tolist() == [2, 7]
    # per head: each head changes its own tokens
    per_head = ref.clone()
    per_head[[1, 4], 0] = torch.randn(2, 8, generator=g)
    per_head[[3, 8], 1] = torch.randn(2, 8, generator=g)
    sim = token_cosine(per_head, ref, per_head=True)  # [n, Hkv]
    assert sim.shape == (10, 2)
    assert least_similar(sim, 2).tolist() == [[1, 4], [3, 8]]


def test_counts_and_compression_floor():
    assert resolve_count(3, 10) == 3 and resolve_count(50, 10) == 10 and resolve_count(0.25, 10) == 3
    assert resolve_count(0.1, 30) == 3 and resolve_count(0.001, 10) == 1 and resolve_count(1.0, 7) == 7
    sim = torch.tensor([0.99, 0.5, 0.97, 0.2, 0.999, 0.96])
    assert compress_keep(sim, 0.95, 1).tolist() == [1, 3]  # below the threshold
    assert compress_keep(sim, 0.95, 3).tolist() == [1, 3, 5]  # the floor adds the next least similar
    assert compress_keep(torch.ones(5), 0.95, 2).tolist() == [0, 1]  # nothing changed: the floor, ties early
    assert compress_keep(torch.tensor([float("nan"), 1.0]), 0.95, 1).tolist() == [0]


def test_gather_kept_per_layer_and_per_head():
    from memstream.policies.memstream import gather_kept

    free = torch.randn(6, 2, 4)  # [n, Hkv, d]
    k, v = free.permute(1, 0, 2)[None], 2 * free.permute(1, 0, 2)[None]  # [1, Hkv, n, d]
    wk, wv, rep = gather_kept(k, v, free, torch.tensor([1, 4]))
    assert torch.equal(wk[0], free[[1, 4]].permute(1, 0, 2)) and torch.equal(wv, 2 * wk)
    assert torch.allclose(rep[0], free[[1, 4]].mean(0))
    keep = torch.tensor([[0, 5], [2, 3]])  # head 0 keeps tokens 0 and 5, head 1 keeps 2 and 3
    wk, wv, rep = gather_kept(k, v, free, keep)
    assert wk.shape == (1, 2, 2, 4) and torch.equal(wv, 2 * wk)
    for h in range(2):
        assert torch.equal(wk[0, h], free[keep[h], h])
        assert torch.allclose(rep[0, h], free[keep[h], h].mean(0))


# ---- compression end to end --------------------------------------------------------------------
def test_static_clip_is_stored_once_and_noise_almost_fully(engine):
    static = np.repeat(random_frames(1, seed=1), 12, axis=0)
    rekv = ingest(engine, static, "rekv").stats()
    ms = ingest(engine, static, "memstream-internal").stats()
    first = rekv["tokens_per_block"]  # the first block is stored whole by both
    assert ms["tokens_raw"] == rekv["tokens_stored"]
    assert ms["tokens_stored"] - first <= 0.2 * (rekv["tokens_stored"] - first)
    assert ms["compression_ratio"] > 2 and ms["tokens_dropped"] == ms["tokens_raw"] - ms["tokens_stored"]
    noise = ingest(engine, random_frames(12, seed=2), "memstream-internal").stats()
    assert noise["tokens_stored"] >= 0.9 * noise["tokens_raw"]


@pytest.mark.parametrize("floor, per_block", [(3, 3), (0.2, 4)])  # 0.2 of 16 cells = 3.2 -> 4
def test_compression_never_stores_fewer_than_the_floor(engine, floor, per_block):
    static = np.repeat(random_frames(1, seed=3), 8, axis=0)
    stream = ingest(engine, static, "memstream-internal", compress_floor=floor, compress_threshold=-1.0)
    blocks = stream.memory.blocks
    assert blocks[0].n_tokens == 16 and blocks[0].token_index is None  # 56 x 56 px at 8 tokens/frame: 4 x 4 cells
    assert [b.n_tokens for b in blocks[1:]] == [per_block] * 3
    for b in blocks[1:]:
        assert torch.equal(b.token_index, b.token_index.sort().values)


def test_failed_ingest_leaves_memory_and_references_unchanged(engine, failing_layer):
    frames = random_frames(6, seed=4)
    stream = ingest(engine, frames[:4], "memstream-internal", topk=2, n_local=40, compress_threshold=0.5)
    mem = stream.memory
    before = stream.stats()
    cell_ref = mem.cell_ref.clone()
    key_ref = [r.clone() for r in mem.key_ref]
    window = [tuple(t.clone() for t in kv) for kv in mem.window]
    reference = stream.ask(Q, max_new_tokens=2)
    with failing_layer(), pytest.raises(RuntimeError):
        stream.add_frames(frames[4:], [10.0, 11.0])
    assert stream.stats() == before and len(mem.kept) == len(mem.blocks)
    assert torch.equal(mem.cell_ref, cell_ref) and all(torch.equal(a, b) for a, b in zip(mem.key_ref, key_ref))
    assert all(torch.equal(a, b) for kv, saved in zip(mem.window, window) for a, b in zip(kv, saved))
    assert torch.equal(stream.ask(Q, max_new_tokens=2).first_logits, reference.first_logits)
    # the next block goes in as if the failure had never happened
    stream.add_frames(frames[4:], [12.0, 13.0])
    twin = ingest(engine, frames[:4], "memstream-internal", topk=2, n_local=40, compress_threshold=0.5)
    twin.add_frames(frames[4:], [12.0, 13.0])
    assert torch.equal(stream.memory.cell_ref, twin.memory.cell_ref)
    assert stream.memory.blocks[-1].n_tokens == twin.memory.blocks[-1].n_tokens


# ---- AKS end to end ----------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["layer", "head"])
def test_sparse_window_holds_the_kept_tokens_of_each_block(engine, scope):
    stream = ingest(engine, random_frames(8, seed=5), "memstream-internal", compress_threshold=None,
                    aks_keep=3, aks_scope=scope, n_local=10**6)
    mem = stream.memory
    n = mem.blocks[0].n_tokens
    assert mem.window_tokens() == n + 3 * 3 and mem.kept == [n, 3, 3, 3]
    assert stream.stats()["aks_kept_tokens"] == (n + 9) / 4
    for layer in range(engine.backbone.spec.n_layers):
        block = mem.store.gather([3], layer, torch.device("cpu"))[0, :, :, :]  # keys [Hkv, n, d]
        tail = mem.window[layer][0][0, :, -3:]  # [Hkv, 3, d]
        chosen = []
        for h in range(block.shape[0]):  # every kept key is one of the block's keys, in grid order
            rows = [int((block[h] == t).all(-1).nonzero()[0]) for t in tail[h]]
            assert rows == sorted(rows)
            chosen.append(rows)
        if scope == "layer":
            assert all(c == chosen[0] for c in chosen)


def test_everything_off_equals_rekv(engine):
    frames = random_frames(10, seed=6)
    rekv = ingest(engine, frames, "rekv", topk=2, n_local=30).ask(Q, max_new_tokens=3)
    ms = ingest(engine, frames, "memstream-internal", topk=2, n_local=30, compress_threshold=None,
                aks_keep=1.0).ask(Q, max_new_tokens=3)
    assert (ms.first_logits - rekv.first_logits).abs().max().item() <= 1e-5
    assert [s.tolist() for s in ms.trace.selected] == [s.tolist() for s in rekv.trace.selected]
    assert ms.token_ids == rekv.token_ids


# ---- fusion ------------------------------------------------------------------------------------
def test_ranks_and_rank_fusion_by_hand():
    assert ranks(torch.tensor([5.0, 7.0, 7.0, 1.0])).tolist() == [3, 1, 1, 4]
    assert ranks(torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])).tolist() == [[3, 2, 1], [1, 1, 1]]
    internal = torch.tensor([0.9, 0.1, 0.5, 0.5])  # ranks 1, 4, 2, 2
    external = torch.tensor([0.2, 0.8, 0.8, 0.1])  # ranks 3, 1, 1, 4
    want = [1 / 61 + 2 / 63, 1 / 64 + 2 / 61, 1 / 62 + 2 / 61, 1 / 62 + 2 / 64]
    got = rank_fuse([internal, external], (1.0, 2.0))
    assert torch.allclose(got, torch.tensor(want), atol=1e-7)
    assert torch.allclose(rank_fuse([internal], c=0.0), torch.tensor([1.0, 1 / 4, 1 / 2, 1 / 2]))


def loop_ranks(scores: list[float]) -> list[int]:
    return [1 + sum(other > s for other in scores) for s in scores]


def loop_topk(scores: list[float], k: int) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))  # ties: the earlier block
    return sorted(order[:k])


def test_per_layer_fused_topk_matches_a_plain_loop(expert_engine):
    stream = ingest(expert_engine, random_frames(16, seed=7), "memstream", topk=3, fusion_c=2.0,
                    fusion_weights=(1.0, 0.5))
    trace = stream.ask(Q, max_new_tokens=1).trace
    external = trace.external.tolist()
    ext_ranks = loop_ranks(external)
    for layer, row in enumerate(trace.internal.tolist()):
        fused = [1.0 / (2.0 + ri) + 0.5 / (2.0 + re) for ri, re in zip(loop_ranks(row), ext_ranks)]
        assert trace.selected[layer].tolist() == loop_topk(fused, 3)
    agg_ranks = loop_ranks(trace.internal_agg.tolist())
    want = [1.0 / (2.0 + ri) + 0.5 / (2.0 + re) for ri, re in zip(agg_ranks, ext_ranks)]
    assert torch.allclose(trace.fused, torch.tensor(want), atol=1e-6)


# ---- external expert ---------------------------------------------------------------------------
def test_external_scores_are_the_experts_block_scores(expert_engine):
    """The expert embeds the frames as they were added (its own preprocessing resizes them to its input),
    not the frames downsized to the LLM's token budget."""
    expert = expert_engine.expert
    frames = random_frames(7, 252, 420, seed=8)  # odd: the last block is one frame, padded
    whole = ingest(expert_engine, frames, "memstream")
    answer = whole.ask(Q, max_new_tokens=1)
    text = expert.embed_text(Q)

    def block_scores(embeds):  # [7, D] -> [4]: blocks of 2 frames, the last one alone
        return torch.cat([expert.block_scores(text, embeds[i:i + 2][None]) for i in range(0, 7, 2)])

    assert whole.frame_size == (84, 140)  # the LLM sees 84 x 140 pixels at 8 tokens per frame
    want = block_scores(expert.embed_images(frames))  # [7, D] of the 252 x 420 originals
    assert answer.trace.external.shape == (4,)
    assert torch.allclose(answer.trace.external, want, atol=1e-6)
    # what the expert saw before: the LLM's downsized frames, which score differently
    downsized = block_scores(expert.embed_images(video.resize_frames(frames, whole.frame_size)))
    assert (answer.trace.external - downsized).abs().max() > 1e-4
    # one block at a time gives the same scores as one batch
    stepwise = expert_engine.stream(policy="memstream", fps=1.0, tokens_per_frame=8)
    for i in range(0, 6, 2):
        stepwise.add_frames(frames[i:i + 2], [float(i), float(i + 1)])
    stepwise.add_frames(frames[6:], [6.0])
    stepwise.flush()
    assert torch.allclose(stepwise.ask(Q, max_new_tokens=1).trace.external, answer.trace.external, atol=1e-6)
    assert whole.stats()["bytes_external"] > 0 and whole.stats()["external_expert"]


def test_external_policy_retrieves_the_external_topk(expert_engine):
    stream = ingest(expert_engine, random_frames(12, seed=9), "external", topk=2, n_local=20)
    trace = stream.ask(Q, max_new_tokens=1).trace
    want = loop_topk(trace.external.tolist(), 2)
    assert all(s.tolist() == want for s in trace.selected)
    assert torch.equal(trace.fused, trace.external)
    st = stream.stats()  # ReKV's dense window, nothing compressed
    assert st["tokens_stored"] == st["tokens_raw"] and st["aks_kept_tokens"] == st["tokens_per_block"]
    assert st["window_tokens"] == 20


def test_external_without_an_expert_is_refused(engine):
    from memstream.policies import MemStreamConfig, MemStreamMemory

    with pytest.raises(memstream.ConfigError):
        engine.stream(policy="external")
    with pytest.raises(memstream.ConfigError, match="expert"):
        MemStreamMemory(engine.backbone, MemStreamConfig(), fps=1.0, ranking="external")


# ---- traces ------------------------------------------------------------------------------------
def mean_query(stream, layer: int) -> torch.Tensor:
    return mean_question_query(stream, layer, Q)


@pytest.mark.parametrize("policy", ["memstream", "memstream-internal", "external"])
def test_trace_shapes_and_planted_bias(expert_engine, policy):
    stream = ingest(expert_engine, random_frames(12, seed=10), policy, topk=2)
    mem = stream.memory
    L, N = expert_engine.backbone.spec.n_layers, 6
    trace = stream.ask(Q, max_new_tokens=1).trace
    assert trace.internal.shape == (L, N) and trace.internal_agg.shape == (N,) and trace.fused.shape == (N,)
    assert len(trace.selected) == L and all(len(s) == 2 for s in trace.selected)
    assert set(trace.bias) == {"internal", "fused"} and trace.policy == policy
    assert (trace.external is None) == (policy == "memstream-internal")
    # plant: internal scores rise with time; the external expert prefers early blocks
    for layer in range(L):
        rep = mem.rep_keys(layer)  # [N, Hkv, d], writable
        q = mean_query(stream, layer).view(rep.shape[1], -1, rep.shape[-1]).sum(1)
        rep[:] = torch.arange(1.0, N + 1)[:, None, None] * q / q.norm()
    if mem.expert is not None:
        text = mem.expert.embed_text(Q)
        mem.frame_mean.view[:] = torch.linspace(1.0, -1.0, N)[:, None] * text
    trace = stream.ask(Q, max_new_tokens=1).trace
    if policy != "external":
        assert trace.bias["internal"] > 0.99
        assert all(s.tolist() == [N - 2, N - 1] for s in trace.selected) == (policy == "memstream-internal")
    if policy == "memstream-internal":
        assert trace.bias["fused"] == trace.bias["internal"]
    else:
        assert trace.bias["fused"] < trace.bias["internal"] - 0.5


# ---- CLI ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["memstream", "memstream-internal", "external"])
def test_cli_runs_the_memstream_policies(policy, tiny_cache, monkeypatch, capsys):
    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    code = cli.main(["ask", str(SAMPLE), "What moves?", "--policy", policy, "--expert", "tiny",
                     "--tokens-per-frame", "16", "--max-new-tokens", "2", "--device", "cpu", "--json"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0
    result = json.loads(out)
    blocks = result["blocks"]
    assert result["policy"] == policy and blocks >= 2
    assert len(result["trace"]["fused"]) == blocks
    assert (result["trace"]["external"] is None) == (policy == "memstream-internal")
    assert result["stats"]["tokens_stored"] <= result["stats"]["tokens_raw"]


def test_bench_compression_reports_a_row_per_budget(tiny_cache, monkeypatch, capsys):
    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    assert cli.main(["bench", "compression", "--budgets", "8,16", "--blocks", "4", "--warmup", "1",
                     "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["tokens_per_frame"] for r in out["rows"]] == [8, 16]
    for row in out["rows"]:
        t = row["tokens_per_min"]
        assert t["aks"] == t["rekv"] >= t["aks+compress"] > 0
        assert row["token_reduction"] == pytest.approx(1 - t["aks+compress"] / t["rekv"])
        assert all(s > 0 for s in row["block_s"].values())
    assert out["markdown"].count("\n") == 3


@pytest.mark.parametrize("policy", ["rekv", "memstream"])
def test_set_retrieval_equals_a_stream_opened_with_those_settings(expert_engine, policy):
    """topk and the fusion settings are read at question time: changing them on a stream that holds
    video answers exactly as a fresh stream opened with them would, with nothing re-ingested."""
    frames = np.random.default_rng(11).integers(0, 256, (16, 56, 84, 3), dtype=np.uint8)

    def opened(**kw):
        stream = expert_engine.stream(policy=policy, fps=1.0, tokens_per_frame=8, **kw)
        stream.add_frames(frames)
        return stream

    stream = opened(topk=6)
    blocks = stream.stats()["blocks"]
    changed = {"topk": 2, **({"fusion_c": 5.0, "fusion_weights": (1.0, 3.0)} if policy == "memstream" else {})}
    assert stream.set_retrieval(**changed).topk == 2
    twin = opened(**changed)
    got, want = stream.ask(Q, max_new_tokens=2), twin.ask(Q, max_new_tokens=2)
    assert torch.allclose(got.first_logits, want.first_logits, atol=1e-6) and got.token_ids == want.token_ids
    assert [s.tolist() for s in got.trace.selected] == [s.tolist() for s in want.trace.selected]
    assert all(len(s) == 2 for s in got.trace.selected) and stream.stats()["blocks"] == blocks
    with pytest.raises(memstream.ConfigError, match="open a new stream"):
        stream.set_retrieval(tokens_per_frame=64)
    with pytest.raises(memstream.ConfigError, match="topk"):
        stream.set_retrieval(topk=0)
    assert stream.config.topk == 2  # a refused change changes nothing


# ---- fidelity to the paper (docs/fidelity.md, "MemStream") -------------------------------------
def test_memstream_without_an_expert_is_a_config_error(engine, expert_engine):
    """`memstream` fuses two rankings; without an expert it is refused in one sentence that names the
    internal-only row, instead of quietly becoming memstream-internal."""
    from memstream.policies import MemStreamConfig, MemStreamMemory, policy_spec

    assert policy_spec("memstream").needs_expert and not policy_spec("memstream-internal").uses_expert
    for attempt in (lambda: engine.stream(policy="memstream"),  # an engine without an expert
                    lambda: expert_engine.stream(policy="memstream", expert="none")):  # one switched off
        with pytest.raises(memstream.ConfigError) as err:
            attempt()
        message = str(err.value)
        assert "memstream-internal" in message and "expert" in message
        assert message.count(". ") == 0 and message.endswith(".")  # one sentence
    with pytest.raises(memstream.ConfigError, match="memstream-internal"):
        MemStreamMemory(engine.backbone, MemStreamConfig(), fps=1.0)  # ranking "fused", no expert
    assert engine.stream(policy="memstream-internal").expert is None  # the internal-only row needs none
    assert expert_engine.stream(policy="memstream").expert is expert_engine.expert


def test_aks_keeps_a_fixed_count_per_block_by_default(engine):
    """The project page: AKS keeps the top-k least similar patches, k fixed. Planted: two token budgets
    whose blocks hold different numbers of tokens; the window keeps exactly k of every past block at
    both, while a fraction (still accepted) keeps a share that grows with the block."""
    from memstream.policies import MemStreamConfig
    from memstream.policies.memstream import AKS_KEEP

    assert MemStreamConfig().aks_keep == AKS_KEEP == 128 and type(AKS_KEEP) is int
    frames = random_frames(6, 112, 112, seed=12)
    sizes = {}
    for tpf in (100, 200):
        stream = ingest(engine, frames, "memstream-internal", tokens_per_frame=tpf, compress_threshold=None,
                        n_local=10**6)
        mem, st = stream.memory, stream.stats()
        n = mem.blocks[0].n_tokens
        sizes[tpf] = n
        assert n > AKS_KEEP and mem.kept == [n, AKS_KEEP, AKS_KEEP]  # the first block keeps all
        assert mem.window_tokens() == n + 2 * AKS_KEEP
        assert st["aks_k"] == AKS_KEEP and st["aks_keep"] == AKS_KEEP and st["tokens_per_frame"] == tpf
        frac = ingest(engine, frames, "memstream-internal", tokens_per_frame=tpf, compress_threshold=None,
                      aks_keep=0.25, n_local=10**6)
        k = -(-n // 4)  # a fraction rounds up
        assert frac.memory.kept == [n, k, k] and frac.stats()["aks_k"] == k and frac.stats()["aks_keep"] == 0.25
    assert sizes[100] < sizes[200]  # the budgets really differ


def test_stats_record_k_tokens_per_frame_and_the_expert(expert_engine):
    stream = ingest(expert_engine, random_frames(4, seed=13), "memstream", tokens_per_frame=8)
    st = stream.stats()
    n = stream.memory.blocks[0].grid[0] * stream.memory.blocks[0].grid[1]
    assert st["expert"] == "tiny" and st["external_expert"] is True and st["tokens_per_frame"] == 8
    assert st["aks_keep"] == 128 and st["aks_k"] == min(128, n) == n  # 16 tokens per block: k covers them all
    off = ingest(expert_engine, random_frames(4, seed=13), "external", tokens_per_frame=8).stats()
    assert off["aks_k"] is None and off["aks"] is False and off["expert"] == "tiny"
    internal = ingest(expert_engine, random_frames(4, seed=13), "memstream-internal").stats()
    assert internal["expert"] is None and internal["external_expert"] is False


def test_expert_sees_each_frame_as_added_across_calls_and_sizes(expert_engine):
    """A block may pair a waiting frame of one call with the first frame of the next, even of another size;
    the expert embeds each as it was added, and a caller reusing its array afterwards changes nothing."""
    expert = expert_engine.expert
    big, small = random_frames(3, 252, 420, seed=14), random_frames(3, 126, 210, seed=15)
    want = torch.cat([expert.embed_images(big), expert.embed_images(small)])  # [6, D]
    stream = expert_engine.stream(policy="memstream", fps=1.0, tokens_per_frame=8)
    buffer = big.copy()
    stream.add_frames(buffer, [0.0, 1.0, 2.0])  # frame 2 waits for its partner
    buffer[:] = 0  # the caller reuses its array
    stream.add_frames(small, [3.0, 4.0, 5.0])
    text = expert.embed_text(Q)
    got = stream.ask(Q, max_new_tokens=1).trace.external
    expect = torch.stack([expert.block_scores(text, want[i:i + 2][None])[0] for i in range(0, 6, 2)])
    assert torch.allclose(got, expect, atol=1e-6)


@pytest.mark.parametrize("row, options, flags", [
    # the paper's four rows (docs/fidelity.md): compression is ours, off to reproduce them
    ("ReKV", {"policy": "rekv"}, {}),
    ("AKS (Internal)", {"policy": "memstream-internal", "compress_threshold": None},
     {"compression": False, "aks": True, "external_expert": False}),
    ("Full (External)", {"policy": "external"}, {"compression": False, "aks": False, "external_expert": True}),
    ("AKS (MoE)", {"policy": "memstream", "compress_threshold": None},
     {"compression": False, "aks": True, "external_expert": True}),
])
def test_the_papers_rows_are_aks_only(expert_engine, row, options, flags):
    stream = ingest(expert_engine, np.repeat(random_frames(1, seed=16), 6, axis=0), tokens_per_frame=8, **options)
    st = stream.stats()
    assert st["tokens_stored"] == st["tokens_raw"]  # a static clip, and still nothing dropped
    assert {k: st[k] for k in flags} == flags


def test_cli_refuses_memstream_without_an_expert_before_loading(monkeypatch, capsys, tmp_path):
    import memstream.evaluate.command as eval_command

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(cli, "load", no_load)
    monkeypatch.setattr(eval_command, "load", no_load)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"video_id": "v", "video_path": str(SAMPLE),
                                "conversations": [{"question": "What moves?", "answer": "a square"}]}]))
    for argv in (["ask", str(SAMPLE), "What moves?", "--policy", "memstream"],
                 ["eval", str(ann), "--policy", "memstream", "--no-progress"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: Policy 'memstream'") and "memstream-internal" in err and err.count("\n") == 0
