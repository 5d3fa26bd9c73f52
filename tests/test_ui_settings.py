"""The demo's settings form is derived from the library's dataclasses: one field per option, labelled
by name, explained by the field's comment, of a kind read from the annotation; a policy registered
before the page is built gets its form too (in a subprocess: tests/demo_policy.py). Apply: a bad
value gives one sentence and keeps the memory."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_ui_session import FAST, SAMPLE, wait_for  # one set of demo-test helpers

import memstream
from memstream.config import StreamConfig
from memstream.engine import Engine
from memstream.experts import build_tiny_expert
from memstream.options import field_docs
from memstream.policies import policy_names, policy_spec
from memstream_demo import build
from memstream_demo.fields import STREAM_FORM, form_fields, stream_form
from memstream_demo.manager import SessionManager
from memstream_demo.state import Limits, Settings


def components(demo) -> dict:
    """The page's components by elem_id."""
    return {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}


@pytest.fixture
def page(engine):
    """The page built for an engine with an external expert, as app.py builds it for the tiny model."""
    demo = build(Engine(engine.backbone, build_tiny_expert()), defaults=Settings(expert="tiny"), sample=None)
    yield components(demo)
    demo.sessions.shutdown()


def test_every_option_of_every_policy_is_a_field_with_its_comment():
    for policy in policy_names():
        config = policy_spec(policy).config
        docs = field_docs(config)
        fields = form_fields(policy)
        assert [f.name for f in fields] == [f.name for f in dataclasses.fields(config)]
        for f in fields:
            assert f.info.startswith(docs[f.name][1]), (policy, f.name)
    kinds = {f.name: f for f in form_fields("memstream")}
    assert kinds["topk"].kind == "int" and kinds["n_local"].kind == "int" and kinds["n_local"].optional
    assert kinds["positions"].choices == ("original", "compact")  # read from validate()'s sentence
    assert kinds["score"].choices == ("dot", "cosine") and kinds["aks_scope"].choices == ("layer", "head")
    assert kinds["question_window"].kind == "bool" and kinds["fusion_c"].kind == "float"
    assert kinds["fusion_weights"].kind == "text" and kinds["fusion_weights"].shown((1.0, 2.0)) == "1,2"
    assert kinds["fusion_weights"].parse("1, 0.5") == (1.0, 0.5)
    # a count or a fraction: typed text keeps which one it is
    assert kinds["aks_keep"].parse("64") == 64 and kinds["aks_keep"].parse("1.0") == 1.0
    assert isinstance(kinds["aks_keep"].parse("1.0"), float) and kinds["aks_keep"].shown(1.0) == "1.0"
    assert kinds["compress_threshold"].parse("") is None  # an empty box is None
    with pytest.raises(memstream.ConfigError, match="^fusion_weights: expected numbers"):
        kinds["fusion_weights"].parse("heavy")
    hermes = {f.name: f for f in form_fields("hermes")}
    assert hermes["positions"].choices == ("lazy", "eager") and hermes["summary"].choices == ("round", "running", "off")
    assert hermes["pseudo_questions"].parse("a|b") == ("a", "b")
    assert [f.name for f in stream_form()] == list(STREAM_FORM) == ["fps", "tokens_per_frame"]
    assert stream_form()[0].info == field_docs(StreamConfig)["fps"][1]


def test_the_page_lists_every_policy_and_shows_each_field_with_its_comment(page):
    assert [v for _, v in page["policy"].choices] == list(policy_names())  # with an expert: all of them
    assert "sink-window" in policy_names()
    assert page["opt-sink-window-n_local"].info == field_docs(policy_spec("sink-window").config)["n_local"][1]
    assert page["opt-sink-window-n_local"].value == 4096  # the dataclass default
    topk = page["opt-rekv-topk"]
    assert topk.label == "topk" and topk.info == "blocks each layer retrieves for a question"
    assert page["opt-memstream-positions"].choices == [("original", "original"), ("compact", "compact")]
    assert page["opt-memstream-question_window"].value is False
    assert page["opt-memstream-fusion_weights"].value == "1,1"
    assert page["opt-fps"].value == 2.0 and page["opt-tokens_per_frame"].value == 256  # the demo's defaults
    # only the policy in use shows its options
    # the demo's default policy is the library's (and the CLI's): rekv, needing no expert
    assert page["policy"].value == StreamConfig().policy == "rekv"
    assert page["options-rekv"].visible and not page["options-memstream"].visible
    assert not page["options-sink-window"].visible


def test_without_an_expert_the_policies_that_need_one_are_left_out(engine):
    demo = build(engine, sample=None)
    try:
        listed = [v for _, v in components(demo)["policy"].choices]
        assert listed == [p for p in policy_names() if not policy_spec(p).needs_expert]
        # memstream and external rank with the expert (memstream-internal is the internal-only row)
        assert "external" not in listed and "memstream" not in listed
        assert "sink-window" in listed and "memstream-internal" in listed
    finally:
        demo.sessions.shutdown()


def test_a_policy_registered_before_build_gets_its_fields_and_runs(tiny_cache):
    # in a process of its own, as a user's script: a registration lasts for the process
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("demo_policy.py")), str(tiny_cache)],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["listed"][-1] == "demo-test-window"
    n_local, mode, strength = (out["fields"][k] for k in ("n_local", "mode", "strength"))
    assert n_local["label"] == "n_local" and n_local["value"] == 48
    assert n_local["info"] == "tokens of the newest blocks a question sees (a test policy's own help text)"
    assert mode["choices"] == ["keep", "drop"] and mode["info"] == 'what happens to old blocks: "keep" or "drop"'
    assert strength["value"] == 0.5 and strength["info"] == "a number the memory ignores"
    ran = out["ran"]
    assert "policy rekv → demo-test-window" in ran["notice"] and ran["policies"] == ["demo-test-window"]
    assert ran["mode"] == "drop" and ran["n_local"] == 32 and ran["blocks"] == 8  # its options reached the memory


def test_a_bad_value_gives_one_sentence_and_keeps_the_memory(engine, capfd):
    m = SessionManager(engine, FAST, Limits())
    try:
        s = m.get("tab")
        s.start_file(SAMPLE, "sample.mp4")
        wait_for(lambda: s.status()["state"] == "done")
        streams, before = list(s.streams), s.settings
        for bad in ({"n_local": -5}, {"topk": 0}, {"score": "loud"}, {"fps": -1.0}):
            text = s.apply_settings(FAST.with_options(**bad))
            assert text.startswith("Settings not applied (the memory is unchanged): ") and s.notice.level == "error"
            assert text.endswith(".") and text.count(". ") == 0, text  # one sentence
            assert str(next(iter(bad.values()))) in text
            assert s.streams == streams and s.settings is before  # the old memory, the old settings
        assert s.status()["blocks"] == 8 and s.status()["state"] == "done"
        assert "Traceback" not in capfd.readouterr().err
        # a question-time change still applies in place afterwards, and only what changed is passed on
        s.apply_settings(FAST.with_options(topk=2, score="cosine"))
        assert "nothing re-ingested" in s.notice.text and s.streams == streams
        assert s.streams[0].config.topk == 2 and s.streams[0].config.score == "cosine"
        # a change of what the memory holds re-ingests
        s.apply_settings(FAST.with_options(topk=2, score="cosine", n_local=64))
        assert "n_local 15000 → 64" in s.notice.text and "ingested again" in s.notice.text
        wait_for(lambda: s.status()["state"] == "done")
        assert s.streams[0].config.n_local == 64 and s.streams[0].config.topk == 2
    finally:
        m.shutdown()


def test_settings_hold_each_policys_options_and_compare_gets_what_each_takes(engine):
    st = Settings(policy="rekv", compare="hermes").with_options(topk=4, budget=1024)
    assert st.option("rekv", "topk") == st.option("memstream", "topk") == 4 and st.option("hermes", "budget") == 1024
    assert st.option("sink-window", "n_local") == 4096  # not set: the dataclass default
    assert "budget" not in st.stream_options("rekv") and "topk" not in st.stream_options("hermes")
    assert engine.stream_config(policy="hermes", **st.stream_options("hermes")).budget == 1024
    used = st.with_used_options(n_local=None)  # the API: only the policies in use, each what it takes
    assert used.option("rekv", "n_local") is None and used.option("sink-window", "n_local") == 4096
    with pytest.raises(memstream.ConfigError, match="belongs to policy"):
        st.with_used_options(aks_keep=0.5)  # neither rekv nor hermes takes it
    with pytest.raises(memstream.ConfigError, match="No policy takes"):
        st.with_options(nonsense=1)
