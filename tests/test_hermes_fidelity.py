"""HERMES as released (github azaj01/HERMES: inference/qwenvl_hermes.py, video_qa/hermes_vqa.py), on planted
data: layer roles by int(), which prompt scores each layer, the per-round summary (where it sits, what it
averages, earlier summaries scored like any token), index smoothing, rank compaction with exact key
re-rotation, the embedding-level pseudo attention, and our former choices reachable as options."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

import memstream
from memstream.policies import hermes_layers as hl
from memstream.policies import hermes_queries as hermes
from memstream.policies.hermes import HermesConfig, HermesMemory


def random_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def hermes_stream(engine, frames, tokens_per_frame=8, **hermes_options) -> memstream.Stream:
    """A hermes stream fed two frames (one block) at a time."""
    stream = engine.stream(policy="hermes", fps=1.0, tokens_per_frame=tokens_per_frame, **hermes_options)
    for i in range(0, len(frames), 2):
        stream.add_frames(frames[i:i + 2], [float(i), float(i + 1)])
    return stream


def spy_compressions(monkeypatch) -> list[tuple[list, list]]:
    """Record (layers before, layers after) of every compression that changed something."""
    calls: list[tuple[list, list]] = []
    real = HermesMemory._compress

    def spy(self, layers, *rest):
        out, compressed = real(self, layers, *rest)
        if compressed:
            calls.append((layers, out))
        return out, compressed

    monkeypatch.setattr(HermesMemory, "_compress", spy)
    return calls


def counts(roles: list[hl.LayerRole]) -> tuple[int, int, int]:
    names = [r.name for r in roles]
    return names.count("shallow"), names.count("middle"), names.count("deep")


# ---- layer roles (a config object, no model) -----------------------------------------------------


def test_layer_roles_round_down_as_released():
    cfg = HermesConfig()
    assert counts(hl.layer_roles(cfg, 28)) == (2, 17, 9)  # Qwen2.5-VL-7B
    assert counts(hl.layer_roles(cfg, 36)) == (3, 22, 11)  # Qwen2.5-VL-3B
    assert [r.name for r in hl.layer_roles(cfg, 2)] == ["middle", "deep"]  # the tiny model
    assert [r.name for r in hl.layer_roles(cfg, 1)] == ["deep"]
    # the release's middle depth p = (l - 2) / (19 - 2) never reaches 1: alpha 0.75 - 0.6p, kappa 20 - 12p
    roles = hl.layer_roles(cfg, 28)
    assert roles[2].alpha == pytest.approx(0.75) and roles[2].kappa == pytest.approx(20.0)
    assert roles[18].alpha == pytest.approx(0.75 - 0.6 * 16 / 17)
    assert roles[18].kappa == pytest.approx(20 - 12 * 16 / 17)
    assert roles[0].alpha == 1.0 and roles[27].alpha == 0.0 and roles[27].kappa == 0.0
    # our former rule, by option
    ceil = HermesConfig(role_rounding="ceil")
    assert counts(hl.layer_roles(ceil, 28)) == (3, 16, 9)
    assert counts(hl.layer_roles(ceil, 36)) == (4, 21, 11)
    assert [r.name for r in hl.layer_roles(ceil, 2)] == ["shallow", "deep"]


@pytest.mark.parametrize("rounding", ["int", "ceil"])
def test_every_role_rule_gives_valid_roles(rounding):
    ratios = (0.0, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
    for shallow in ratios:
        for deep in ratios:
            if shallow + deep > 1.0:
                continue
            cfg = HermesConfig(role_rounding=rounding, shallow_ratio=shallow, deep_ratio=deep)
            for n in range(1, 65):
                roles = hl.layer_roles(cfg, n)
                order = [hl.ROLES.index(r.name) for r in roles]
                assert len(roles) == n and order == sorted(order)  # shallow prefix, deep suffix
                assert all(0.0 <= r.alpha <= 1.0 and r.kappa >= 0.0 for r in roles)
                if rounding == "int":  # exactly the release's thresholds
                    first_deep = int(n * (1 - deep))
                    want = ["shallow" if l < int(n * shallow) else "deep" if l >= first_deep else "middle"
                            for l in range(n)]
                    assert [r.name for r in roles] == want


def test_tiny_stream_reports_layer_roles(engine):
    frames = random_frames(4, 56, 84, seed=1)
    assert hermes_stream(engine, frames).stats()["layer_roles"] == ["middle", "deep"]
    assert hermes_stream(engine, frames, role_rounding="ceil").stats()["layer_roles"] == ["shallow", "deep"]


# ---- pseudo queries ----------------------------------------------------------------------------------


def test_released_prompt_wording_and_the_prefix_after_a_turn():
    local = ("Describe the current scene in detail, focusing on specific objects, fine-grained actions, "
             "and spatial relationships.")
    global_ = ("Summarize the video narrative, identifying main characters, key events, timeline changes, "
               "and the overall theme.")
    assert hermes.role_prompts(None) == {"local": local, "global": global_, "mixed": f"{local}; {global_}"}
    mc = "Question: What is the man holding?\nOptions:\n(A) a cup\n(B) a phone"
    assert hermes.split_options(mc) == ("What is the man holding?", ("a cup", "a phone"))
    history = "Question: What is the man holding? Answer: a phone"
    for answer in ("B", "(B)", "B.", " B "):  # a bare letter becomes its option's text
        after = hermes.role_prompts((mc, answer))
        assert after["local"] == f"Find recent details related to: {history}. {local}"
        assert after["global"] == f"Context summary: {history}. {global_}"
        assert after["mixed"] == after["local"] + "; " + after["global"]
    assert hermes.released_answer("B) a phone", ("a cup", "a phone")) == "a phone"  # labels dropped
    assert hermes.released_answer("Z", ("a cup", "a phone")) == "Z"  # no such option
    # a question without options: the text as asked, a letter stays a letter
    assert hermes.split_options("Where is the cat?") == ("Where is the cat?", None)
    assert hermes.role_prompts(("Where is the cat?", "A"))["global"].startswith(
        "Context summary: Question: Where is the cat? Answer: A. Summarize")


# The cell whose held tokens each prompt "attends to" in the planted attention below.
CELL = {"local": 3, "mixed": 7, "global": 11}


def plant_attention_by_prompt(monkeypatch) -> list[tuple[str, slice, int]]:
    """Every pseudo prompt attends, in every layer, only to the held tokens of its own cell (CELL); the
    prompts that ran are recorded as (name, rows averaged, prompt length)."""
    ran: list[tuple[str, slice, int]] = []

    def planted(self, layers, ids, rows):
        texts = {text: name for name, text in hermes.role_prompts(self.last_exchange).items()}
        name = texts[self.bb.tokenizer.decode(ids)]  # the ids are the bare released text
        ran.append((name, rows, len(ids)))
        return [(s.cell == CELL[name]).float() for s in layers]

    monkeypatch.setattr(HermesMemory, "_prompt_attention", planted)
    return ran


def test_each_layer_scores_with_its_roles_prompt(engine, monkeypatch):
    ran = plant_attention_by_prompt(monkeypatch)
    frames = random_frames(4, 56, 112, seed=2)
    for rounding, prompts in (("int", ["mixed", "global"]), ("ceil", ["local", "global"])):
        mem = hermes_stream(engine, frames, budget=10**6, role_rounding=rounding).memory
        ran.clear()
        attn = mem._pseudo_attention(mem.layers)
        assert [hermes.ROLE_PROMPT[r.name] for r in mem.roles] == prompts
        for layer, prompt in enumerate(prompts):
            assert torch.equal(attn[layer], (mem.layers[layer].cell == CELL[prompt]).float())
        assert sorted(name for name, _, _ in ran) == sorted(prompts)  # a prompt no layer uses is not run
        assert all(rows == slice(0, n) for _, rows, n in ran)  # the mean runs over all the prompt's tokens


def test_the_deep_layer_keeps_what_the_global_prompt_attends_to(engine, monkeypatch):
    plant_attention_by_prompt(monkeypatch)
    stream = hermes_stream(engine, random_frames(24, 56, 112, seed=3), tokens_per_frame=16, budget=6, chunk_frames=4)
    deep = stream.memory.layers[1]
    n_blocks = len(stream.memory.blocks)
    visual = ~deep.is_summary
    assert deep.n == 6 and deep.n_summaries == 1 and bool(deep.is_summary[-1])  # budget - 1 tokens + summary
    assert deep.cell[visual].tolist() == [CELL["global"]] * 5  # ties go to the newest
    assert deep.block[visual].tolist() == list(range(n_blocks - 5, n_blocks))


def test_prompts_after_a_turn_carry_the_exchange(engine):
    stream = hermes_stream(engine, random_frames(4, 56, 84, seed=4), budget=5)
    mem = stream.memory
    before = engine.backbone.tokenizer.decode(mem._role_prompts()["local"])
    answer = stream.ask("Where is the cat?", max_new_tokens=2)
    after = engine.backbone.tokenizer.decode(mem._role_prompts()["local"])
    assert before == hermes.LOCAL_PROMPT
    assert after == f"Find recent details related to: Question: Where is the cat? Answer: {answer.text}. " \
                    f"{hermes.LOCAL_PROMPT}"


# ---- the embedding-level pseudo attention (the release's manual path) --------------------------------


def test_manual_pseudo_attention_reads_every_layer_from_the_embeddings(engine):
    """pseudo_forward 'manual' equals, per layer, the softmax of q_proj / k_proj of that layer's
    normalised token embeddings (hidden state never advanced), no causal mask among the prompt."""
    bb = engine.backbone
    stream = hermes_stream(engine, random_frames(4, 56, 84, seed=5), budget=10**6)
    mem = stream.memory
    ids = bb.tokenize("Describe it.")
    manual = mem._prompt_attention(mem.layers, ids, slice(0, len(ids)))
    spec, s = bb.spec, len(ids)
    embeds = bb.embed(ids).unsqueeze(0)  # [1, S, hidden]
    pos = mem.positions.text_at(mem.positions.next_text, s)  # [3, S]
    with torch.no_grad():
        for layer, block in enumerate(bb.lm.layers):
            x = block.input_layernorm(embeds)
            q = block.self_attn.q_proj(x).view(1, s, spec.n_heads, -1).transpose(1, 2)  # [1, Hq, S, d]
            k = block.self_attn.k_proj(x).view(1, s, spec.n_kv_heads, -1).transpose(1, 2)  # [1, Hkv, S, d]
            cos, sin = bb.lm.rotary_emb(x, pos.unsqueeze(1))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            ctx = mem.context(layer, mem.layers[layer])[0]  # [1, Hkv, K, d]
            keys = torch.cat([ctx, k], -2).repeat_interleave(spec.n_heads // spec.n_kv_heads, dim=1)
            probs = torch.softmax(q @ keys.transpose(-1, -2) * spec.head_dim ** -0.5, -1)  # no mask
            mass = probs[0].mean(dim=(0, 1))  # over heads and all prompt tokens
            held = mass[ctx.shape[-2] - mem.layers[layer].n: ctx.shape[-2]]
            assert torch.allclose(manual[layer], held, atol=1e-6)
    # a real forward (the option) advances the hidden state: layer 1 sees something else
    model = hermes_stream(engine, random_frames(4, 56, 84, seed=5), budget=10**6, pseudo_forward="model").memory
    real = model._prompt_attention(model.layers, ids, slice(0, len(ids)))
    assert not torch.allclose(real[1], manual[1], atol=1e-4)
    assert all(not block._forward_pre_hooks for block in bb.lm.layers)  # nothing left on the shared model


def test_embedding_feed_acts_only_in_its_own_thread():
    layers = torch.nn.ModuleList([torch.nn.Linear(2, 2, bias=False) for _ in range(3)])
    for layer in layers:
        torch.nn.init.eye_(layer.weight)
        layer.weight.data *= 2  # each layer doubles its input

    def run(x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            x = layer(x)
        return x

    x = torch.ones(1, 2)
    with torch.no_grad(), hermes.layers_fed_embeddings(layers):
        assert torch.equal(run(x), 2 * x)  # every layer saw x itself
        other: list[torch.Tensor] = []
        thread = threading.Thread(target=lambda: other.append(run(x)))
        thread.start()
        thread.join()
        assert torch.equal(other[0], 8 * x)  # another thread's forward is untouched
    with torch.no_grad():
        assert torch.equal(run(x), 8 * x)


def test_decoder_layers_are_the_backbones(engine):
    layers = engine.backbone.decoder_layers
    assert layers is engine.backbone.lm.layers and len(layers) == engine.backbone.spec.n_layers


# ---- the per-round summary --------------------------------------------------------------------------


def test_round_summary_sits_at_the_newest_position_and_averages_that_round(engine, monkeypatch):
    """Summaries attended least: each round's summary is the mean of exactly what that round evicted,
    which includes the previous summary (folded again)."""
    gen = torch.Generator().manual_seed(0)
    monkeypatch.setattr(HermesMemory, "_pseudo_attention", lambda self, layers: [
        torch.rand(s.n, generator=gen) + (~s.is_summary).float() for s in layers])
    calls = spy_compressions(monkeypatch)
    stream = hermes_stream(engine, random_frames(24, 56, 84, seed=6), budget=10, chunk_frames=4)
    bb, refolded = engine.backbone, 0
    assert len(calls) == 6
    for before, after in calls:
        b, a = before[1], after[1]  # the deep layer
        assert a.n == 10 and a.is_summary.tolist() == [False] * 9 + [True]  # budget - 1 kept, then the summary
        m = int(a.pos[:, :-1].max()) + 1
        assert a.pos[:, -1].tolist() == [m, m, m]  # newest position: max kept position + 1
        kept = set(hl.token_ids(a.block[:-1], a.cell[:-1]).tolist())
        gone = torch.tensor([i for i, t in enumerate(hl.token_ids(b.block, b.cell).tolist()) if t not in kept])
        keys = bb.rotate_keys(b.keys[..., gone, :], torch.full((3, len(gone)), m) - b.pos[:, gone])
        assert torch.allclose(a.keys[..., -1:, :], keys.double().mean(-2, keepdim=True).float(), atol=1e-6)
        assert torch.allclose(a.values[..., -1:, :], b.values[..., gone, :].double().mean(-2, keepdim=True).float(),
                              atol=1e-6)
        refolded += int(b.is_summary[gone].sum())
        assert after[0].n_summaries == 0 and after[0].n == 10  # the middle layer keeps budget, no summary
    assert refolded == 5  # every earlier summary was scored lowest and folded into the next one
    assert stream.stats()["summary_tokens"] == [0, 1]


def test_earlier_summaries_are_scored_and_kept_like_any_token(engine, monkeypatch):
    monkeypatch.setattr(HermesMemory, "_pseudo_attention", lambda self, layers: [
        s.is_summary.float() * 10 + s.block.float() / 100 for s in layers])
    stream = hermes_stream(engine, random_frames(24, 56, 84, seed=7), budget=10, chunk_frames=4)
    deep = stream.memory.layers[1]
    assert deep.n == 10 and deep.n_summaries == 6  # every round's summary, most attended, was kept
    assert stream.stats()["summary_tokens"] == [0, 6]
    # held in cache order: each summary right after the block that completed its chunk
    where = deep.is_summary.nonzero().flatten()
    assert deep.block[where].tolist() == [1, 3, 5, 7, 9, 11]
    assert torch.equal(deep.block, torch.sort(deep.block, stable=True).values)


def test_budget_holds_with_round_summaries_and_stats_add_up(engine):
    stream = hermes_stream(engine, random_frames(40, 56, 112, seed=8), tokens_per_frame=16, budget=40, chunk_frames=4)
    mem = stream.memory
    assert all(s.n == 40 for s in mem.layers) and mem.layers[1].n_summaries >= 1
    stats = stream.stats()
    assert stats["tokens_per_layer"] == [40, 40] and stats["layer_roles"] == ["middle", "deep"]
    assert stats["summary_tokens"] == [0, mem.layers[1].n_summaries]
    trace = stream.ask("What is there?", max_new_tokens=2).trace
    assert trace.kept.sum(1).tolist() == stats["tokens_per_layer"]  # a summary counts for the block it follows
    deep = mem.layers[1]
    last = int(deep.block[deep.is_summary][-1])  # the newest summary follows the block that completed its chunk
    assert int(trace.kept[1, last]) == int((deep.block == last).sum())


# ---- smoothing and compaction ----------------------------------------------------------------------


def test_index_smoothing_interpolates_unequal_lengths():
    upper = torch.arange(6.0)  # a deep layer holding two more tokens (summaries)
    out = hl.smooth_by_index([torch.zeros(4), upper], [0.5, 0.4])
    # align_corners=False: output i reads input (i + 0.5) * 6 / 4 - 0.5 = 0.25, 1.75, 3.25, 4.75
    assert torch.allclose(out[0], 0.5 * torch.tensor([0.25, 1.75, 3.25, 4.75]))
    assert torch.equal(out[1], upper)
    # equal lengths pair by index, cascading from the top: layer 0 blends the already smoothed layer 1
    out = hl.smooth_by_index([torch.zeros(3), torch.ones(3), torch.full((3,), 4.0)], [0.5, 0.25, 0.0])
    assert torch.allclose(out[1], torch.full((3,), 0.75 + 1.0)) and torch.allclose(out[0], 0.5 * out[1])


def test_ranked_positions_remap_each_component_on_its_own():
    pos = torch.tensor([[20, 20, 28, 36], [20, 21, 20, 23], [22, 20, 21, 22]])
    assert hl.ranked_positions(pos, 20).tolist() == [[20, 20, 21, 22], [20, 21, 20, 22], [22, 20, 21, 22]]


def test_eager_rank_compaction_rerotates_keys_exactly(engine, monkeypatch):
    """positions 'eager': after every compression each position component of the kept tokens is
    consecutive from the video start, the round's summary comes after them, and every held key equals
    its ingest-time key rotated by the exact position delta."""
    ingested: dict[int, tuple[list, torch.Tensor]] = {}
    real = HermesMemory.run_forward

    def record(self, cache, embeds, pos):
        real(self, cache, embeds, pos)
        if self.positions.video_start is not None and pos.shape[1] == embeds.shape[0]:
            ingested[len(self.blocks)] = ([k for k, _ in cache.new], pos.clone())

    monkeypatch.setattr(HermesMemory, "run_forward", record)
    calls = spy_compressions(monkeypatch)
    stream = hermes_stream(engine, random_frames(24, 56, 112, seed=9), budget=20, chunk_frames=4, positions="eager")
    mem, bb = stream.memory, engine.backbone
    start = mem.positions.video_start
    assert mem.compactions == len(calls) == 6
    for _, after in calls:
        for state in after:
            ordinary = state.pos[:, ~state.is_summary]
            for d in range(3):
                values = sorted(set(ordinary[d].tolist()))
                assert values == list(range(start, start + len(values)))
            if state.n_summaries:  # the new summary follows the compacted tokens
                m = int(ordinary.max()) + 1
                assert state.pos[:, -1].tolist() == [m, m, m]
    for layer, state in enumerate(mem.layers):
        for i in (~state.is_summary).nonzero().flatten().tolist():
            keys, pos = ingested[int(state.block[i])]
            cell = int(state.cell[i])
            moved = bb.rotate_keys(keys[layer][..., cell:cell + 1, :], state.pos[:, i:i + 1] - pos[:, cell:cell + 1])
            assert torch.allclose(moved, state.keys[..., i:i + 1, :], atol=1e-5)
    assert mem.question_start() > max(int(s.pos.max()) for s in mem.layers)
    assert len(stream.ask("What is there?", max_new_tokens=2).token_ids) >= 1


def test_our_former_choices_remain_as_options(engine):
    """The pre-fidelity behaviour, every option at once: ceil roles, averaged chat-layout pseudo questions
    through a real forward, a running summary at the video start, identity smoothing, slot compaction."""
    ours = dict(role_rounding="ceil", recency="block", pseudo_queries="averaged", pseudo_forward="model",
                summary="running", smoothing="identity", compaction="slots")
    stream = hermes_stream(engine, random_frames(24, 56, 84, seed=10), budget=10, chunk_frames=4,
                           positions="eager", **ours)
    mem = stream.memory
    assert stream.stats()["layer_roles"] == ["shallow", "deep"]
    assert all(s.n == 10 and s.n_summaries == 0 for s in mem.layers)
    assert mem.layers[1].count == sum(b.n_tokens for b in mem.blocks) - 10 and mem.layers[0].count == 0
    start, interval = mem.positions.video_start, mem.positions.interval
    for s in mem.layers:  # held blocks in consecutive temporal slots, h and w untouched
        blocks, slot = torch.unique(s.block, return_inverse=True)
        assert torch.equal(s.pos[0], torch.tensor([start + int(j * interval) for j in range(len(blocks))])[slot])
    assert len(stream.ask("What is there?", max_new_tokens=2).token_ids) >= 1
