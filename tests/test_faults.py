"""Faults during a stream: a decoder forward that raises leaves the memory exactly as it was, for every
registered policy, with the model work in this process, through the pickled path (loopback) and in a
worker process; an external expert that raises mid-stream leaves the stream answering, internal-only,
with one sentence saying so (in the stats and on the answer's trace).

Oracles: the memory's whole state (every tensor it holds, its block store, positions, counters) and its
stats compare equal before and after a failed ingest; after the failures, one successful ingest gives
exactly the memory of a twin stream that never failed; the answer after a failure equals the one before.
A memstream stream whose expert failed answers exactly as memstream-internal on the same frames.
"""

from __future__ import annotations

import time

import fault_hook
import numpy as np
import pytest
import torch

import memstream
from memstream.backbones import Backbone
from memstream.engine import Engine
from memstream.experts import Expert, build_tiny_expert
from memstream.policies import unregister_policy
from memstream.runner import RemoteRunner, execute
from memstream.store import BlockStore, RowBuffer
from memstream.work import Models

Q = "What is there?"
FRAMES = np.random.default_rng(11).integers(0, 256, (16, 60, 100, 3), dtype=np.uint8)
# options that make each policy do its real work on a few blocks of 15 tokens: windows slide, retrieval
# leaves blocks out, hermes compresses (every 2 blocks) and so runs pseudo-query forwards while ingesting
OPTIONS = {"full": {}, "rekv": {"topk": 2, "n_local": 40}, "memstream": {"topk": 2, "n_local": 40},
           "memstream-internal": {"topk": 2, "n_local": 40}, "external": {"topk": 2, "n_local": 40},
           "hermes": {"budget": 20, "chunk_frames": 4}, "sink-window": {"n_local": 30}}
TIMING = ("ingest_s", "encode_s", "blocks_per_s")


class LoopbackRunner(RemoteRunner):
    """The remote path (pickled call, `execute`, pickled reply) without a second process."""

    def exchange(self, payload: bytes, op: str, work: float) -> bytes:
        return execute(self.models, payload)


@pytest.fixture(autouse=True)
def faults(tmp_path, monkeypatch):
    monkeypatch.setenv(fault_hook.ENV, str(tmp_path))
    yield
    fault_hook.disarm()


@pytest.fixture(scope="module")
def engines(engine):
    """name -> an engine with the tiny expert: model work in this process, or through the pickled path."""
    local = Engine(engine.backbone, build_tiny_expert())
    expert = build_tiny_expert()
    loop = Engine(engine.backbone, expert, LoopbackRunner(Models(engine.backbone, expert), spill_min_bytes=256))
    yield {"in-process": local, "loopback": loop}
    loop.close()


# ---- the memory's state, compared tensor by tensor -------------------------------------------------


def state(x):
    """A comparable copy of everything a memory holds (models and the backbone are referenced, not held)."""
    if isinstance(x, torch.Tensor):
        return ("tensor", x.detach().cpu().clone())
    if isinstance(x, RowBuffer):  # the rows only: spare capacity is uninitialised
        return ("rows", None if x.rows == 0 else x.view.detach().cpu().clone())
    if isinstance(x, BlockStore):  # every block's keys/values, read back from its files when file-backed
        return ("store", [x.block(i).clone() for i in range(len(x.shapes))], list(x.shapes), x.nbytes)
    if isinstance(x, (Backbone, Expert, torch.nn.Module)):
        return ("model",)
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [state(v) for v in x])
    if isinstance(x, dict):
        return ("dict", {k: state(v) for k, v in x.items()})
    if isinstance(x, (int, float, str, bool, type(None), torch.dtype, torch.device, np.generic)):
        return x
    if callable(x) and not hasattr(x, "__dict__"):
        return ("callable", repr(x))
    if hasattr(x, "__dict__"):  # not the model, and not memoised tokenisations (hermes' prompt ids, `*_cache`):
        # those are a function of the state, filled on first use and reset when it changes
        return (type(x).__name__, {k: state(v) for k, v in vars(x).items()
                                   if k not in ("bb", "spec") and not k.endswith("_cache")})
    return ("other", repr(x))


def assert_same_state(a, b, where="memory"):
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, where


def stats(stream) -> dict:
    return {k: v for k, v in stream.stats().items() if k not in TIMING}


def open_stream(engine, policy):
    return engine.stream(policy=policy, fps=1.0, tokens_per_frame=8, **OPTIONS.get(policy, {}))


def decoder_calls(stream, frames, times) -> int:
    """Decoder forwards the ingest of these frames makes (counted on a twin stream; arming far ahead)."""
    fault_hook.arm_decoder(10**6)
    stream.add_frames(frames, times)
    left = int((fault_hook._dir() / "decoder").read_text())
    fault_hook.disarm()
    return 10**6 - left


# ---- a decoder failure -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["in-process", "loopback"])
@pytest.mark.parametrize("policy", memstream.policy_names())
def test_a_failed_block_leaves_the_memory_as_it_was(engines, where, policy):
    """Every decoder forward of a block (hermes: the block's and its compression's pseudo queries) fails
    in turn; each failure leaves the memory's whole state and stats as they were, and the answer the same.
    Then the block goes in, and the memory equals a twin's that never failed."""
    engine = engines[where]
    main, twin = open_stream(engine, policy), open_stream(engine, policy)
    for s in (main, twin):
        s.add_frames(FRAMES[:6], np.arange(6.0))  # 3 blocks: hermes compressed once and holds half a chunk
    # (asked first: hermes conditions its next compression on the last exchange)
    answer, _ = main.ask(Q, max_new_tokens=3), twin.ask(Q, max_new_tokens=3)
    before, before_stats = state(main.memory), stats(main)
    last = 40.0
    n = decoder_calls(twin, FRAMES[6:8], [last, last + 1])  # the block that completes hermes' chunk
    assert n >= 1
    for k in range(n):
        fault_hook.arm_decoder(k)
        with pytest.raises(fault_hook.InjectedFault):
            main.add_frames(FRAMES[6:8], [10.0 + 2 * k, 11.0 + 2 * k])
        assert not fault_hook.decoder_armed()  # the fault fired
        assert_same_state(state(main.memory), before)
        assert stats(main) == before_stats
    again = main.ask(Q, max_new_tokens=3)  # the session still answers, exactly as before
    assert torch.equal(again.first_logits, answer.first_logits) and again.token_ids == answer.token_ids
    main.add_frames(FRAMES[6:8], [last, last + 1])
    assert_same_state(state(main.memory), state(twin.memory))
    assert stats(main) == stats(twin)


def test_a_failure_mid_batch_keeps_the_blocks_before_it(engines):
    """In this process a batch is appended block by block: blocks before the failing one stay, each whole.
    Through the pickled path the batch is one call, and all of it is rolled back."""
    for where, kept in (("in-process", 1), ("loopback", 0)):
        main, twin = open_stream(engines[where], "rekv"), open_stream(engines[where], "rekv")
        main.add_frames(FRAMES[:4], np.arange(4.0))
        twin.add_frames(FRAMES[:4], np.arange(4.0))
        fault_hook.arm_decoder(1)  # the second block of the next batch
        with pytest.raises(fault_hook.InjectedFault):
            main.add_frames(FRAMES[4:8], np.arange(4.0, 8.0))
        if kept:
            twin.add_frames(FRAMES[4:4 + 2 * kept], np.arange(4.0, 4.0 + 2 * kept))
        assert_same_state(state(main.memory), state(twin.memory), where)
        assert main.ask(Q, max_new_tokens=2).token_ids == twin.ask(Q, max_new_tokens=2).token_ids


# ---- a worker process --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hooked_policies():
    """Every registered policy as `<name>~hooked`: the worker then imports fault_hook, armed by the same files."""
    names = {name: fault_hook.hooked(name) for name in memstream.policy_names() if "~" not in name}
    yield names
    for hooked in names.values():
        unregister_policy(hooked)


@pytest.fixture(scope="module")
def worker(tiny_cache, tmp_path_factory):
    engine = memstream.load("tiny", expert="tiny", device="cpu", cache_dir=str(tiny_cache), worker_process=True)
    yield engine
    engine.close()


@pytest.mark.slow
def test_a_failed_block_in_a_worker_process_changes_nothing(worker, hooked_policies, tmp_path):
    """The worker (a spawned process) fails on the second block of a batch: the call fails as a whole and
    the memory in this process is exactly as before, for every policy; the worker lives on, the session
    answers as before and ingests again."""
    for base, policy in hooked_policies.items():
        stream = worker.stream(policy=policy, fps=1.0, tokens_per_frame=8, **OPTIONS.get(base, {}))
        stream.add_frames(FRAMES[:6], np.arange(6.0))
        answer = stream.ask(Q, max_new_tokens=3)  # first: hermes keeps the last exchange
        before, before_stats = state(stream.memory), stats(stream)
        starts = worker.runner.starts
        fault_hook.arm_decoder(1)
        with pytest.raises(fault_hook.InjectedFault):
            stream.add_frames(FRAMES[6:10], np.arange(6.0, 10.0))
        assert not fault_hook.decoder_armed(), base  # it fired in the worker
        assert_same_state(state(stream.memory), before, base)
        assert stats(stream) == before_stats, base
        again = stream.ask(Q, max_new_tokens=3)
        assert torch.equal(again.first_logits, answer.first_logits) and again.token_ids == answer.token_ids, base
        assert worker.runner.starts == starts  # a raised error is not a dead worker
        stream.add_frames(FRAMES[10:14], np.arange(10.0, 14.0))
        assert stats(stream)["blocks"] == before_stats["blocks"] + 2, base


# ---- an expert failure -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["in-process", "loopback"])
@pytest.mark.parametrize("policy", ["memstream", "external"])
def test_an_expert_that_fails_mid_stream_leaves_the_stream_answering_internal_only(engines, where, policy):
    engine = engines[where]
    stream, internal = open_stream(engine, policy), open_stream(engine, "memstream-internal")
    stream.add_frames(FRAMES[:4], np.arange(4.0))
    assert stream.stats()["expert_failure"] is None  # while the expert works, it ranks
    assert stream.ask(Q, max_new_tokens=2).trace.ranking == {"memstream": "fused", "external": "external"}[policy]
    fault_hook.break_expert()
    stream.add_frames(FRAMES[4:8], np.arange(4.0, 8.0))  # ingestion goes on without it
    fault_hook.heal_expert()  # dropped for good: a working expert is not asked again
    stream.add_frames(FRAMES[8:12], np.arange(8.0, 12.0))
    sentence = stream.stats()["expert_failure"]
    assert sentence.startswith("The external expert failed while embedding frames (InjectedFault)")
    assert "from now on" in sentence and "internal-only" in sentence and sentence.count(".") == 1
    assert stream.stats()["blocks"] == 6 and not stream.uses_expert
    answer = stream.ask(Q, max_new_tokens=3)
    assert answer.trace.ranking == "internal" and answer.trace.external is None
    assert answer.trace.notice == sentence and answer.trace.to_dict()["notice"] == sentence
    if policy == "memstream":  # the same ingest as memstream-internal: now the same answer, block for block
        internal.add_frames(FRAMES[:12], np.arange(12.0))
        ref = internal.ask(Q, max_new_tokens=3)
        assert torch.equal(answer.first_logits, ref.first_logits) and answer.token_ids == ref.token_ids
        assert [s.tolist() for s in answer.trace.selected] == [s.tolist() for s in ref.trace.selected]


@pytest.mark.parametrize("where", ["in-process", "loopback"])
def test_an_expert_that_fails_on_a_question_costs_that_answer_its_fusion_only(engines, where):
    stream = open_stream(engines[where], "memstream")
    stream.add_frames(FRAMES[:8], np.arange(8.0))
    before = state(stream.memory)
    fault_hook.break_expert()
    answer = stream.ask(Q, max_new_tokens=3)
    assert answer.trace.ranking == "internal" and answer.text is not None
    assert answer.trace.notice.startswith("The external expert failed while embedding the question (InjectedFault)")
    assert "for this answer" in answer.trace.notice
    assert_same_state(state(stream.memory), before)  # asking changes nothing, a failed expert included
    assert stream.stats()["expert_failure"] is None
    fault_hook.heal_expert()
    healed = stream.ask(Q, max_new_tokens=3)
    assert healed.trace.ranking == "fused" and healed.trace.notice == ""


# ---- the demo: the session goes on answering ---------------------------------------------------------


@pytest.fixture(scope="module")
def demo(engine):
    from demo_server import start_demo, stop_demo

    server = start_demo(engine, banner="tiny model", max_new_tokens=4)
    yield server
    stop_demo(server)


@pytest.fixture
def client(demo):
    from gradio_client import Client

    client = Client(demo.url, verbose=False)
    yield client
    demo.sessions.close(client.session_hash)
    client.close()


def ingest_sample(client) -> dict:
    from demo_server import SAMPLE
    from gradio_client import handle_file

    client.predict(handle_file(SAMPLE), api_name="/upload")
    for _ in range(600):
        st = client.predict(api_name="/status")
        if st.get("state") in ("done", "failed"):
            return st
        time.sleep(0.1)
    raise AssertionError(f"ingestion did not end: {st}")


def chat_text(message) -> str:
    content = message["content"]
    return content[0]["text"] if isinstance(content, list) else content


@pytest.mark.slow
def test_the_demo_answers_internal_only_when_the_expert_fails(client):
    """The demo's default policy (memstream, fused with the tiny expert) loses its expert mid-stream: the
    status and every answer say so in one sentence, and answers keep coming."""
    fault_hook.break_expert()
    st = ingest_sample(client)
    assert st["state"] == "done" and st["blocks"] == 8
    assert st["expert_failure"].startswith("The external expert failed while embedding frames")
    chat, _box, notice, *_ = client.predict("What is moving?", api_name="/ask")
    text = chat_text(chat[-1])
    assert chat[-1]["role"] == "assistant" and "internal-only" in text and "policy memstream" in text
    assert "internal-only" in notice and "Answered by tiny" in notice


@pytest.mark.slow
def test_the_demo_keeps_the_memory_when_a_block_fails(client, demo):
    """The decoder fails on the sample's fifth block: ingestion stops with one sentence, the four blocks
    before stay in memory, and questions are answered from them."""
    fault_hook.arm_decoder(5)  # the new memory's sinks and blocks 1-4 pass, the 5th block's forward fails
    st = ingest_sample(client)
    assert st["state"] == "failed" and st["blocks"] == 4
    said = demo.sessions.get(client.session_hash).notice.text
    assert said == ("Ingestion stopped by an internal error (InjectedFault); what was ingested before stays "
                    "usable.")
    chat, _box, notice, *_ = client.predict("What is moving?", api_name="/ask")
    assert chat[-1]["role"] == "assistant" and "Answered from 4 blocks" in notice


def test_the_cli_prints_the_expert_s_failure_as_a_warning(tiny_cache, monkeypatch, capsys):
    from demo_server import SAMPLE

    from memstream import cli

    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    fault_hook.break_expert()
    assert cli.main(["ask", SAMPLE, "What is moving?", "--model", "tiny", "--expert", "tiny", "--policy", "memstream",
                     "--device", "cpu", "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert "warning: The external expert failed while embedding frames (InjectedFault)" in err
    assert "Traceback" not in err
