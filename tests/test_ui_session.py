"""Per-browser-session state of the demo (no browser): ingestion thread, questions, settings,
compare mode, webcam frames, caps and the idle reaper, on the tiny model."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from memstream.errors import EmptyMemoryError, InputError
from memstream_demo.manager import SessionManager
from memstream_demo.render import render_status
from memstream_demo.state import Limits, SessionLimitError, Settings

SAMPLE = str(Path(__file__).resolve().parents[1] / "assets" / "sample.mp4")
FAST = Settings(policy="rekv", tokens_per_frame=16, fps=2.0, max_new_tokens=4).with_options(topk=3)


def wait_for(cond, timeout=30.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    raise AssertionError("timed out")


@pytest.fixture
def manager(engine):
    m = SessionManager(engine, FAST, Limits(max_sessions=3, max_thumbnails=2))
    yield m
    m.shutdown()


def answer(session, question="What is moving?"):
    finals, partials = [], 0
    for _i, policy, part in session.ask(question):
        partials += 1
        if part.done:
            finals.append((policy, part))
    return finals, partials


def test_file_ingestion_question_and_record(manager):
    s = manager.get("tab-1")
    assert s.start_file(SAMPLE, "sample.mp4")
    wait_for(lambda: s.status()["state"] == "done")
    st = s.status()
    assert st["blocks"] == 8 and st["frames"] == 16 and st["progress"] == 1.0
    assert st["compression_ratio"] == 1.0 and st["mb_cpu"] > 0 and st["mb_gpu"] == 0
    assert "in memory" in s.notice.text
    finals, partials = answer(s)
    assert [p for p, _ in finals] == ["rekv"] and partials >= 2
    idx = s.record("What is moving?", finals)
    res = s.records[idx].results[0]
    assert 1 <= len(res.thumbnails) <= 2  # capped by max_thumbnails
    th = res.thumbnails[0]
    tr = finals[0][1].trace
    used = {float(tr.block_times[b]) for sel in tr.selected for b in sel.tolist()}
    assert th["caption"].endswith("layers") and th["t"] in used
    # the demo keeps every frame of every block (JPEG, Limits.thumbnail_height px high)
    assert len(s.thumbs) == st["blocks"] and all(len(uris) == 2 for uris in s.thumbs.images)
    assert len(th["uris"]) == 2 and all(u.startswith("data:image/jpeg;base64,") for u in th["uris"])
    import base64
    import io

    from PIL import Image
    img = Image.open(io.BytesIO(base64.b64decode(th["uris"][0].split(",", 1)[1])))
    assert img.height == manager.limits.thumbnail_height
    assert res.model == "tiny" and res.settings["policy"] == "rekv" and res.settings["topk"] == 3


def test_bad_inputs_keep_the_session_working(manager, tmp_path):
    s = manager.get("tab-2")
    with pytest.raises(EmptyMemoryError):  # a question before any video
        answer(s)
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n" * 20)
    assert not s.start_file(str(bad), "notes.mp4")
    assert s.notice.level == "error" and "notes.mp4" in s.notice.text and str(tmp_path) not in s.notice.text
    assert s.start_file(SAMPLE, "sample.mp4")
    wait_for(lambda: s.status()["state"] == "done")
    assert not s.start_file(str(bad), "notes.mp4")  # a bad upload later keeps the memory
    assert "keeps sample.mp4" in s.notice.text
    assert s.status()["blocks"] == 8
    with pytest.raises(InputError):
        answer(s, "   ")
    finals, _ = answer(s)
    assert finals


def test_settings_change_reingests_and_compare_answers_twice(manager):
    s = manager.get("tab-3")
    s.start_file(SAMPLE, "sample.mp4")
    wait_for(lambda: s.status()["state"] == "done")
    s.apply_settings(Settings(**{**FAST.__dict__, "pace": "real time"}))
    assert "unchanged" in s.notice.text and s.status()["blocks"] == 8
    streams = list(s.streams)
    s.apply_settings(FAST.with_options(pace="real time", topk=2))  # read at question time
    assert "nothing re-ingested" in s.notice.text and "topk 3 → 2" in s.notice.text
    assert s.streams == streams and s.status()["blocks"] == 8  # the same memory, not rebuilt
    finals, _ = answer(s)
    assert all(len(sel) == 2 for sel in finals[0][1].trace.selected)
    s.apply_settings(Settings(**{**FAST.__dict__, "fps": 1.0, "compare": "full"}))
    assert "fps 2 → 1" in s.notice.text and "compare none → full" in s.notice.text
    s.settings.pace = "as fast as possible"
    wait_for(lambda: s.status()["state"] == "done")
    st = s.status()
    assert st["blocks"] == 4 and st["policies"] == ["rekv", "full"]
    finals, _ = answer(s)
    assert [p for p, _ in finals] == ["rekv", "full"]
    assert s.apply_settings(Settings(**{**FAST.__dict__, "policy": "nope"})).startswith("Settings not applied")


def test_webcam_frames_fill_memory_and_a_stop_is_reported(engine):
    m = SessionManager(engine, Settings(policy="memstream-internal", tokens_per_frame=16, fps=8.0),
                       Limits(webcam_gap_s=0.4))
    try:
        s = m.get("cam")
        rng = np.random.default_rng(0)
        for _ in range(8):
            s.push_webcam(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
            time.sleep(0.13)
        wait_for(lambda: s.status().get("blocks", 0) >= 3)
        assert s.status()["kind"] == "webcam"
        wait_for(lambda: s.status()["state"] == "paused")  # no frames for longer than webcam_gap_s
        finals, _ = answer(s)
        assert finals  # what was ingested keeps working
    finally:
        m.shutdown()


def test_caps_and_idle_reaper(engine):
    m = SessionManager(engine, FAST, Limits(max_sessions=1, session_memory_mb=0.05, idle_timeout_s=3600))
    try:
        s = m.get("one")
        with pytest.raises(SessionLimitError, match="limit of 1"):
            m.get("two")
        s.start_file(SAMPLE, "sample.mp4")
        wait_for(lambda: s.status()["state"] == "capped")
        assert s.notice.level == "warning" and "Memory cap" in s.notice.text
        assert 0 < s.status()["blocks"] < 8
        assert answer(s)[0]  # questions still work on what is stored
        s.last_active -= 7200
        assert m.reap() == ["one"] and m.expired("one") and len(m) == 0
        assert s.closed
        m.get("two")  # the slot is free again
    finally:
        m.shutdown()


def test_stream_options_are_valid_library_options(engine):
    from memstream.errors import ConfigError

    settings = Settings(expert="none").with_options(fusion_c=30.0, budget=128)
    for policy in ("rekv", "memstream-internal", "hermes"):
        cfg = engine.stream_config(policy=policy, **settings.stream_options(policy))
        assert cfg.expert is None  # each policy gets the options it takes, and only those
    cfg = engine.stream_config(policy="memstream-internal", **settings.stream_options("memstream-internal"))
    assert cfg.fusion_c == 30.0
    assert engine.stream_config(policy="hermes", **settings.stream_options("hermes")).budget == 128
    for policy in ("external", "memstream"):  # no expert loaded: refused before any ingest
        with pytest.raises(ConfigError, match="external expert"):
            engine.stream_config(policy=policy, **settings.stream_options(policy))
    assert Settings(compare="rekv", policy="rekv").policies() == ["rekv"]  # a policy compared with itself: one


def test_status_never_claims_more_than_was_ingested(manager, tmp_path):
    import videos

    s = manager.get("tab-status")
    s.start_file(SAMPLE, "sample.mp4")
    wait_for(lambda: s.status()["state"] == "done")
    st = s.status()
    assert st["position_s"] == 8.0 and st["progress"] == 1.0 and not st["cut"]
    assert "ingested 8.0 s of 8.0 s" in render_status(st)
    cut = tmp_path / "cut.mp4"  # the index up front announces 10 s; the frames stop near 3 s
    videos.write_video(cut, videos.counter_frames(100), fps=10, options={"movflags": "faststart"})
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.35)])
    assert s.start_file(str(cut), "cut.mp4")
    wait_for(lambda: s.status()["state"] == "done")
    st = s.status()
    assert st["cut"] and st["position_s"] < st["duration_s"] and st["progress"] < 1.0
    html = render_status(st)
    assert f"ingested {st['position_s']:.1f} s of {st['duration_s']:.1f} s (the file ends early)" in html
    assert f"width:{100 * st['progress']:.1f}%" in html and "width:100.0%" not in html
    assert s.notice.level == "warning" and "cut or damaged" in s.notice.text


def test_compare_status_shows_both_policies_and_the_model(manager):
    s = manager.get("tab-compare")
    s.apply_settings(Settings(**{**FAST.__dict__, "compare": "hermes"}).with_options(budget=32))
    s.start_file(SAMPLE, "sample.mp4")
    wait_for(lambda: s.status()["state"] == "done")
    st = s.status()
    assert [p["policy"] for p in st["per_policy"]] == ["rekv", "hermes"]
    assert st["per_policy"][1]["compression_ratio"] > 1.0  # hermes' small budget compressed
    html = render_status(st)
    assert "rekv " in html and "hermes " in html and f"{st['per_policy'][1]['compression_ratio']:.2f}×" in html
    assert st["model"] == "tiny" and st["noise"] and "random weights" in html


def test_apply_message_survives_the_reingestion(manager):
    s = manager.get("tab-apply")
    s.start_file(SAMPLE, "sample.mp4")
    wait_for(lambda: s.status()["state"] == "done")
    s.apply_settings(Settings(**{**FAST.__dict__, "fps": 1.0}))
    wait_for(lambda: s.status()["state"] == "done")
    assert "in memory (settings changed: fps 2 → 1)" in s.notice.text


def test_removing_the_video_empties_the_memory_and_keeps_answers(manager):
    s = manager.get("tab-remove")
    s.start_file(SAMPLE, "sample.mp4")
    wait_for(lambda: s.status()["state"] == "done")
    s.record("q", answer(s)[0])
    s.clear_source()
    st = s.status()
    assert st["source"] is None and "blocks" not in st and s.streams == [] and len(s.records) == 1
    assert "removed" in s.notice.text
    with pytest.raises(EmptyMemoryError):
        answer(s)


def test_a_reloaded_tab_finds_its_session_and_a_gone_one_is_freed(engine):
    m = SessionManager(engine, FAST, Limits(reattach_s=0.5, idle_timeout_s=3600))
    try:
        s = m.get("first-hash")
        s.history = [{"role": "user", "content": "kept"}]
        m.detach("first-hash")  # the tab reloads
        assert m.attach("second-hash", "first-hash") is s and m.get("second-hash") is s
        assert m.key("second-hash") == "first-hash" and s.detached_at is None
        assert m.reap() == []
        m.detach("second-hash")  # the tab closes for good
        time.sleep(0.6)
        assert m.reap() == ["first-hash"] and len(m) == 0 and s.closed
        assert m.attach("third-hash", "first-hash") is None  # too late: a new session
    finally:
        m.shutdown()


DEMO_SAMPLE = str(Path(__file__).resolve().parents[1] / "assets" / "demo_sample.mp4")


def test_the_demo_sample_streams_in_real_time_and_hermes_compresses_it(engine):
    """`python app.py --model tiny`'s defaults on the built-in three-minute sample."""
    import app

    defaults = app.demo_defaults(engine, tiny=True)
    assert defaults.pace == "real time" and defaults.option("hermes", "budget") == 1024
    m = SessionManager(engine, defaults, Limits())
    try:
        s = m.get("live")
        assert s.start_file(DEMO_SAMPLE, "demo_sample.mp4")
        time.sleep(3.0)
        st = s.status()  # real time: about 3 s of the 180 s in, not all of it
        assert st["state"] == "ingesting" and 1.0 <= st["position_s"] <= 6.0 and st["duration_s"] == 180.0
        s.settings.pace = "as fast as possible"
        s.apply_settings(dataclasses.replace(s.settings, policy="hermes"))
        wait_for(lambda: s.status()["state"] == "done", timeout=180)
        st = s.status()
        assert st["blocks"] == 180 and st["compression_ratio"] > 2  # the default budget is exceeded many times
    finally:
        m.shutdown()


def test_only_the_newest_answers_keep_their_traces(engine):
    m = SessionManager(engine, FAST, Limits(max_sessions=1, max_answers=2))
    try:
        s = m.get("tab-1")
        assert s.start_file(SAMPLE, "sample.mp4")
        wait_for(lambda: s.status()["state"] == "done")
        for i in range(5):
            finals, _ = answer(s, f"Question {i}?")
            s.record(f"Question {i}?", finals)
        # every question stays listed; only the last two answers keep their traces and thumbnails
        assert [r.question for r in s.records] == [f"Question {i}?" for i in range(5)]
        assert [bool(r.results) for r in s.records] == [False, False, False, True, True]
    finally:
        m.shutdown()
