"""The process boundary of the model work (memstream.runner, transport, worker, zerogpu).

Oracles: every registered policy answers identically in a worker process and in this process (first
logits, tokens, trace, stats), the streaming-equals-offline and rekv-equals-full oracles hold across the
boundary, a dead worker costs nothing ingested, and ZeroGPU's wrapping asks for a duration sized to the work.
The loopback tests run the whole pickling path in this process (fast); the worker tests spawn a process.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import types

import numpy as np
import pytest
import torch

import memstream
from memstream.engine import Engine
from memstream.experts import build_tiny_expert
from memstream.policies import RekvConfig, RekvMemory, unregister_policy
from memstream.runner import RemoteRunner, execute
from memstream.work import Models
from memstream.zerogpu import GpuDurations, duration_s

Q = "What is there?"
FRAMES = np.random.default_rng(3).integers(0, 256, (13, 60, 100, 3), dtype=np.uint8)
TIMES = np.arange(13.0)

# options that make each policy do its real work on 7 blocks of 15 tokens: retrieval leaves blocks out,
# windows slide, hermes compresses
OPTIONS = {"full": {}, "rekv": {"topk": 2, "n_local": 40}, "memstream": {"topk": 2, "n_local": 40},
           "memstream-internal": {"topk": 2, "n_local": 40}, "external": {"topk": 2, "n_local": 40},
           "hermes": {"budget": 20, "chunk_frames": 4}, "sink-window": {"n_local": 30}}


class LoopbackRunner(RemoteRunner):
    """The remote path (pickled call, `execute`, pickled reply) without a second process."""

    def exchange(self, payload: bytes, op: str, work: float) -> bytes:
        return execute(self.models, payload)


def run(engine, policy: str, **options):
    """Ingest FRAMES in two calls + flush, ask twice (the second after the first exchange)."""
    stream = engine.stream(policy=policy, fps=1.0, tokens_per_frame=8, **{**OPTIONS[policy], **options})
    stream.add_frames(FRAMES[:8], TIMES[:8])
    stream.add_frames(FRAMES[8:], TIMES[8:])
    stream.flush()
    return stream, stream.ask(Q, max_new_tokens=4), stream.ask("And then?", max_new_tokens=3)


def assert_same(a, b) -> None:
    """Two answers are the same: first logits within 1e-5, tokens, text and the whole trace."""
    assert (a.first_logits - b.first_logits).abs().max().item() < 1e-5
    assert a.token_ids == b.token_ids and a.text == b.text
    ta, tb = a.trace, b.trace
    assert torch.equal(ta.block_times, tb.block_times) and torch.equal(ta.internal, tb.internal)
    assert [s.tolist() for s in ta.selected] == [s.tolist() for s in tb.selected]
    for name in ("external", "fused"):
        x, y = getattr(ta, name), getattr(tb, name)
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y))
    assert ta.bias == tb.bias


def comparable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("ingest_s", "encode_s", "blocks_per_s")}


@pytest.fixture(scope="module")
def local(engine):
    return Engine(engine.backbone, build_tiny_expert())


def loopback_engine(engine, spill_min_bytes: int) -> Engine:
    expert = build_tiny_expert()
    return Engine(engine.backbone, expert, LoopbackRunner(Models(engine.backbone, expert),
                                                          spill_min_bytes=spill_min_bytes))


@pytest.fixture(scope="module")
def loopback(engine):
    """Every tensor of 256 bytes or more crosses as a file: the file path carries nearly all the state."""
    eng = loopback_engine(engine, 256)
    yield eng
    eng.close()


@pytest.fixture
def by_value(engine):
    """Every tensor crosses by value (no files): exact byte accounting."""
    eng = loopback_engine(engine, 1 << 40)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def worker(tiny_cache):
    engine = memstream.load("tiny", expert="tiny", device="cpu", cache_dir=str(tiny_cache), worker_process=True)
    yield engine
    engine.close()


# ---- the pickled path, in this process ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("policy", memstream.policy_names())
def test_loopback_equals_in_process(local, loopback, policy):
    s1, a1, b1 = run(local, policy)
    s2, a2, b2 = run(loopback, policy)
    assert_same(a1, a2)
    assert_same(b1, b2)
    assert comparable(s1.stats()) == comparable(s2.stats())


def test_store_stays_in_files_and_unchanged_state_is_not_sent_back(by_value):
    stream = by_value.stream(policy="rekv", fps=1.0, tokens_per_frame=8, topk=2, n_local=20)
    stream.add_frames(FRAMES[:12], TIMES[:12])
    mem = stream.memory
    store = mem.store
    assert store.directory is not None and store.blocks == []  # this process never holds the blocks' data
    assert sorted(os.listdir(store.directory)) == [f"block_{i:06d}.kv" for i in range(6)]
    sinks = [kv[0] for kv in mem.sinks]
    stream.add_frames(FRAMES[12:], TIMES[12:])
    stream.flush()
    # the sinks did not change: the reply named them, so this process still holds the very same tensors
    assert all(kv[0] is k for kv, k in zip(mem.sinks, sinks))
    ingest = by_value.runner.calls[-1]
    window = sum(t.numel() * t.element_size() for kv in mem.window for t in kv)
    # what comes back of an ingest: the new window and the grown representative keys; no stored block
    assert ingest.op == "ingest" and ingest.tensor_bytes_received == window + sum(r.nbytes for r in mem.rep)
    stream.ask(Q, max_new_tokens=1)
    question = by_value.runner.calls[-1]
    # a question sends sinks, window and one key per block and layer, not the stored blocks
    sinks = sum(t.numel() * t.element_size() for kv in mem.sinks for t in kv)
    assert question.tensor_bytes_sent == sinks + window + sum(r.nbytes for r in mem.rep)
    assert question.tensor_bytes_sent < mem.store.nbytes


def test_large_tensors_cross_as_files_written_once_and_removed_with_the_memory(engine):
    eng = loopback_engine(engine, 256)
    stream = eng.stream(policy="rekv", fps=1.0, tokens_per_frame=8, topk=2, n_local=20)
    stream.add_frames(FRAMES[:12], TIMES[:12])
    ingest = eng.runner.calls[-1]
    assert ingest.file_bytes_received > 0 and ingest.file_bytes_sent == 0  # the worker wrote the new window
    stream.ask(Q, max_new_tokens=1)
    question = eng.runner.calls[-1]
    assert question.file_bytes_sent == 0  # every large tensor is already in a file: it is named, not sent
    assert question.tensor_bytes_sent < 256 * 3 * len(stream.memory.sinks) * 2  # small ones only
    directory = eng.runner.tensors
    assert os.listdir(directory)
    del stream, ingest, question
    gc.collect()
    assert os.listdir(directory) == []  # a file goes with the last tensor mapping it
    eng.close()


def test_a_remote_error_arrives_as_the_same_sentence(local, loopback):
    with pytest.raises(memstream.ConfigError) as here:
        local.stream(policy="hermes", compact_margin=10**9)
    with pytest.raises(memstream.ConfigError) as there:
        loopback.stream(policy="hermes", compact_margin=10**9)
    assert str(here.value) == str(there.value)


# ---- ZeroGPU, with a fake `spaces` package -------------------------------------------------------------


def fake_spaces(record: list) -> types.ModuleType:
    """`spaces.GPU(duration=callable)(fn)`: records the duration asked for each call, then runs `fn` with
    arguments that went through pickle (as ZeroGPU's queue does)."""
    import pickle

    spaces = types.ModuleType("spaces")
    spaces.registered = []  # the functions decorated, in order

    def GPU(fn=None, *, duration=60):  # noqa: N802 - the real package's name
        def wrap(f):
            spaces.registered.append(f.__name__)
            def call(*args):
                record.append(duration(*args) if callable(duration) else duration)
                return pickle.loads(pickle.dumps(f(*pickle.loads(pickle.dumps(args)))))
            return call
        return wrap if fn is None else wrap(fn)

    spaces.GPU = GPU
    return spaces


@pytest.mark.slow
def test_zerogpu_wraps_every_call_with_a_duration_sized_to_the_work(monkeypatch, tiny_cache, local):
    from memstream import zerogpu

    record: list = []
    spaces = fake_spaces(record)
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(zerogpu, "_GPU_CALL", None)  # registered afresh with this fake
    monkeypatch.setattr(zerogpu, "_ENGINE", None)
    engine = memstream.load("tiny", expert="tiny", device="cpu", cache_dir=str(tiny_cache))
    assert spaces.registered == ["run_on_gpu"] and record == []  # registered at load time; nothing ran yet
    assert isinstance(engine.runner, zerogpu.ZeroGPURunner) and engine.runner.blocks_per_call > 1
    stream, answer, _ = run(engine, "memstream")
    d = GpuDurations()
    # open, ingest 4 blocks, ingest 2 blocks, ingest the padded block, two answers
    assert record == [duration_s("open", 1), duration_s("ingest", 4), duration_s("ingest", 2),
                      duration_s("ingest", 1), duration_s("answer", 4), duration_s("answer", 3)]
    assert record[1] == int(d.base_s + 4 * d.per_block_s + 0.999)
    assert duration_s("ingest", 10**6) == d.max_s
    _, want, _ = run(local, "memstream")
    assert_same(answer, want)
    engine.close()


def test_without_zerogpu_spaces_is_not_imported(monkeypatch, tiny_cache):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.setitem(sys.modules, "spaces", None)  # importing it would raise
    engine = memstream.load("tiny", device="cpu", cache_dir=str(tiny_cache))
    assert type(engine.runner).__name__ == "InProcessRunner"


# ---- a real worker process -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("policy", memstream.policy_names())
def test_worker_process_equals_in_process(local, worker, policy):
    s1, a1, b1 = run(local, policy)
    s2, a2, b2 = run(worker, policy)
    assert_same(a1, a2)
    assert_same(b1, b2)
    assert comparable(s1.stats()) == comparable(s2.stats())


@pytest.mark.slow
def test_oracles_hold_across_the_boundary(worker):
    frames = FRAMES[:7]
    full = worker.stream(policy="full", fps=1.0, tokens_per_frame=8)
    full.add_frames(frames, TIMES[:7])
    full.flush()
    got = full.ask(Q, max_new_tokens=4)
    ref = worker.reference_answer(frames, TIMES[:7], Q, fps=1.0, tokens_per_frame=8, max_new_tokens=4)
    assert (got.first_logits - ref.first_logits).abs().max().item() < 1e-4
    assert got.token_ids == ref.token_ids
    rekv = worker.stream(policy="rekv", fps=1.0, tokens_per_frame=8, topk=100, n_local=10**6)  # retrieves all
    rekv.add_frames(frames, TIMES[:7])
    rekv.flush()
    again = rekv.ask(Q, max_new_tokens=4)
    assert (again.first_logits - got.first_logits).abs().max().item() < 1e-5
    assert again.token_ids == got.token_ids


class DyingMemory(RekvMemory):
    """rekv whose process exits (as a crashed worker would) on a block of frames at 100 s to 200 s."""

    def ingest_block(self, tokens, times, grid, frame_embeds=None, token_index=None):
        if 100 <= times[0] < 200:
            os._exit(3)
        return super().ingest_block(tokens, times, grid, frame_embeds, token_index)


@pytest.fixture
def dying_policy():
    memstream.register_policy("test-dies", DyingMemory, config=RekvConfig)
    yield "test-dies"
    unregister_policy("test-dies")


@pytest.mark.slow
def test_a_dead_worker_loses_nothing_ingested(worker, dying_policy):
    stream = worker.stream(policy=dying_policy, fps=1.0, tokens_per_frame=8, topk=2, n_local=40)
    stream.add_frames(FRAMES[:8], TIMES[:8])
    before = stream.ask(Q, max_new_tokens=3)
    stats = comparable(stream.stats())
    runner = worker.runner
    starts = runner.starts
    with pytest.raises(memstream.WorkerError) as err:  # the worker dies in the middle of the call
        stream.add_frames(FRAMES[8:12], TIMES[8:12] + 100)
    sentence = str(err.value)
    assert "stopped while ingesting" in sentence and "\n" not in sentence and sentence.endswith(".")
    assert comparable(stream.stats()) == stats  # the failed batch changed nothing
    after = stream.ask(Q, max_new_tokens=3)  # a new worker, the same memory
    assert runner.starts == starts + 1
    assert_same(before, after)
    stream.add_frames(FRAMES[8:12], TIMES[8:12] + 200)  # and ingestion goes on (later, as after any failed batch)
    assert stream.stats()["blocks"] == 6
    # a worker killed between two calls is replaced by the next call, silently
    os.kill(runner.process.pid, signal.SIGKILL)
    runner.process.join(10)
    assert_same(stream.ask(Q, max_new_tokens=3), stream.ask(Q, max_new_tokens=3))
    assert runner.starts == starts + 2


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["rekv", "memstream", "hermes"])
@pytest.mark.parametrize("preset", ["tiny-qwen3-vl", "tiny-smolvlm2"])
def test_loopback_equals_in_process_on_the_other_families(tiny_cache, preset, policy):
    """Blocks with their own text rows (timestamps), DeepStack rows (Qwen3-VL) and 1-D positions
    (SmolVLM2) cross the boundary as well as Qwen2.5-VL's."""
    backbone = memstream.load(preset, device="cpu", cache_dir=str(tiny_cache)).backbone
    local = Engine(backbone, build_tiny_expert())
    options = {"n_local": 400} if policy != "hermes" else {"budget": 200}
    s1, a1, b1 = run(local, policy, **options)
    remote = loopback_engine(local, 256)
    try:
        s2, a2, b2 = run(remote, policy, **options)
    finally:
        remote.close()
    assert_same(a1, a2)
    assert_same(b1, b2)
    assert comparable(s1.stats()) == comparable(s2.stats())
