"""The demo's API with gradio_client, against the app started in-process on the tiny model:
upload, wait for blocks, ask, get an answer and a plot. Also app.py's startup and fallback."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
from demo_server import start_demo, stop_demo

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = str(ROOT / "assets" / "sample.mp4")


@pytest.fixture(scope="module")
def server(engine):
    demo = start_demo(engine, banner="tiny model", max_new_tokens=8)
    yield demo
    stop_demo(demo)


@pytest.fixture
def client(server):
    """A client of its own for each test, hence a new demo session: no test depends on what another
    left behind. The session is closed on the server afterwards (the demo caps concurrent sessions)."""
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    yield client
    server.sessions.close(client.session_hash)
    client.close()


def wait_status(client, cond, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = client.predict(api_name="/status")
        if cond(st):
            return st
        time.sleep(0.3)
    raise AssertionError(f"timed out; last status {st}")


def upload_sample(client):
    """This test's session uploads the sample and ingests it on the default settings."""
    from gradio_client import handle_file

    client.predict(handle_file(SAMPLE), api_name="/upload")
    wait_status(client, lambda s: s.get("state") == "done")


def test_upload_wait_ask_answer_and_plot(client):
    from gradio_client import handle_file

    notice, status_html, _player = client.predict(handle_file(SAMPLE), api_name="/upload")
    assert "Ingesting sample.mp4" in notice
    st = wait_status(client, lambda s: s.get("state") == "done")
    # the default policy is memstream: the sample's static background is stored once
    assert st["blocks"] == 8 and st["tokens_stored"] > 0 and st["compression_ratio"] > 1.5

    chat, question_box, notice, pick, plot, plot_b, gallery, gallery_b, bias_plot = client.predict(
        "What is moving?", api_name="/ask")
    assert chat[-2]["role"] == "user" and chat[-1]["role"] == "assistant"
    text = chat[-1]["content"][0]["text"] if isinstance(chat[-1]["content"], list) else chat[-1]["content"]
    assert "asked at 8.0 s" in text and "16 frames" in text and "policy memstream" in text
    assert "model tiny" in text and "answer is noise" in text and "by tiny" in notice
    assert not any(0 < ord(c) < 32 and c not in "\n\t" for c in text)  # raw control bytes shown as codes
    assert bias_plot["type"] == "plotly"
    names = {d["name"] for d in json.loads(bias_plot["plot"])["data"]}
    assert names == {"memstream · internal", "memstream · fused"}
    assert plot["type"] == "plotly"
    fig = json.loads(plot["plot"])
    assert "temporal bias" in fig["layout"]["title"]["text"] and "fused" in fig["layout"]["title"]["text"]
    assert fig["layout"]["yaxis"]["ticktext"] == ["internal", "external", "fused", "retrieved"]
    assert [d["type"] for d in fig["data"]] == ["heatmap", "scatter", "heatmap", "scatter"]
    assert "data:image/jpeg;base64," in gallery and "layers</figcaption>" in gallery  # the thumbnail strip
    assert "class='thumb' data-t=" in gallery and gallery.count("<img") == 2 * gallery.count("<figure")
    assert plot_b is None and "data-count='0'" in gallery_b


def test_bad_upload_and_empty_question_give_messages(client, tmp_path):
    from gradio_client import handle_file

    upload_sample(client)
    bad = tmp_path / "slides.mp4"
    bad.write_text("no video here\n" * 30)
    notice, _, _ = client.predict(handle_file(str(bad)), api_name="/upload")
    assert "cannot be used" in notice and "slides.mp4" in notice
    chat, q, notice, *_ = client.predict("   ", api_name="/ask")
    assert "question is empty" in notice
    st = client.predict(api_name="/status")
    assert st["source"] == "sample.mp4" and st["blocks"] == 8  # memory kept


def test_settings_endpoint_reingests(client):
    upload_sample(client)  # on the defaults: policy memstream, fps 2, expert tiny
    notice, _ = client.predict("full", 1.0, 16, "as fast as possible", "off", 8, "none", {}, api_name="/settings")
    assert "policy memstream → full" in notice and "fps 2 → 1" in notice and "expert tiny → none" in notice
    st = wait_status(client, lambda s: s.get("state") == "done" and s.get("policies") == ["full"])
    assert st["blocks"] == 4


def test_compare_mode_answers_under_two_policies(client):
    upload_sample(client)
    client.predict("rekv", 2.0, 16, "as fast as possible", "full", 8, "none", {"topk": 3, "n_local": None},
                   api_name="/settings")
    wait_status(client, lambda s: s.get("state") == "done" and s.get("policies") == ["rekv", "full"])
    chat, _, notice, pick, plot, plot_b, gallery, gallery_b, _bias = client.predict("Which one?", api_name="/ask")
    texts = [m["content"][0]["text"] for m in chat[-2:]]
    assert texts[0].startswith("**rekv**") and texts[1].startswith("**full**")
    assert json.loads(plot["plot"])["layout"]["title"]["text"].count("rekv") == 1
    assert "full" in json.loads(plot_b["plot"])["layout"]["title"]["text"]
    assert "figcaption" in gallery_b
    fa, fb = json.loads(plot["plot"])["layout"], json.loads(plot_b["plot"])["layout"]
    assert fa["height"] == fb["height"]  # side by side at the same height
    st = client.predict(api_name="/status")
    assert [p["policy"] for p in st["per_policy"]] == ["rekv", "full"]


def test_hermes_shows_what_each_layer_holds(client):
    upload_sample(client)
    client.predict("hermes", 2.0, 16, "as fast as possible", "off", 8, "tiny", {"budget": 24}, api_name="/settings")
    st = wait_status(client, lambda s: s.get("state") == "done" and s.get("policies") == ["hermes"])
    assert st["blocks"] == 8 and st["compression_ratio"] > 1  # a 24-token budget per layer over 8 blocks
    chat, _, notice, pick, plot, *_ = client.predict("What is left?", api_name="/ask")
    assert "policy hermes" in chat[-1]["content"][0]["text"]
    fig = json.loads(plot["plot"])
    assert "holds" in fig["layout"]["annotations"][1]["text"]  # the lower panel: tokens held per layer
    assert "retrieved" not in plot["plot"] and fig["layout"]["yaxis"]["ticktext"][-1] == "held"
    held = fig["data"][2]["customdata"]  # [layers, blocks, (count, score)], plotly's typed-array JSON
    if isinstance(held, dict):
        held = np.frombuffer(base64.b64decode(held["bdata"]), dtype=held["dtype"]).reshape(
            [int(x) for x in str(held["shape"]).split(",")])
    counts = np.asarray(held)[..., 0]
    assert (counts.sum(axis=1) == 24).all()  # every layer holds exactly its budget


def test_app_falls_back_to_tiny_with_a_banner(monkeypatch, tiny_cache, tmp_path):
    import app

    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    engine, banner = app.load_engine(str(tmp_path / "no-such-model"), "none", "cpu")
    assert "could not be loaded" in banner and "random-weight" in banner
    assert "--model" not in banner and "no-such-model" not in banner  # for a web visitor, not an operator
    assert engine.backbone is not None and engine.expert is None
    # the default expert follows the model: the tiny expert next to the tiny fallback, no second attempt
    engine, banner = app.load_engine(str(tmp_path / "no-such-model"), "auto", "cpu")
    assert engine.expert_name == "tiny" and "expert could not" not in banner
    assert banner.count("could not be loaded") == 1
    monkeypatch.setattr("memstream.loading.hub_reachable", lambda: False)
    engine, banner = app.load_engine("tiny", "clip-b32", "cpu")  # an expert that cannot load: on without it
    assert engine.expert is None and "expert could not be loaded" in banner and "random-weight" in banner

    seen = {}
    monkeypatch.setenv("PORT", "7999")
    monkeypatch.setattr(app, "launch", lambda demo, **kw: seen.update(kw, demo=demo))
    app.main(["--model", "tiny", "--expert", "tiny"])
    assert seen["server_port"] == 7999 and seen["server_name"] == "0.0.0.0"
    seen["demo"].sessions.shutdown()


def test_space_front_matter_and_spacefile_are_valid():
    import gradio
    import yaml

    readme = (ROOT / "README.md").read_text()
    assert readme.startswith("---\n")
    front = yaml.safe_load(readme.split("\n---\n", 1)[0][4:])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and (ROOT / front["app_file"]).exists()
    pinned = [line.split("==")[1].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.startswith("gradio==")]
    assert front["sdk_version"] == pinned[0] == gradio.__version__
    # ZeroGPU (free accounts can host Gradio Spaces only there), or a dedicated GPU
    assert front["suggested_hardware"] in {"zero-a10g", "t4-medium", "l4x1", "a10g-small", "a10g-large", "a100-large"}
    # ZeroGPU runs Python 3.10 or 3.12 and the pins need at least 3.11
    assert str(front["python_version"]) == "3.12"
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in front["preload_from_hub"]
    assert len(front["short_description"]) <= 60

    space = yaml.safe_load((ROOT / "Spacefile").read_text())
    assert space["v"] == 0
    (micro,) = space["micros"]
    assert micro["engine"] == "custom" and micro["primary"] is True
    assert micro["run"].startswith("python app.py") and "$PORT" in micro["run"]
    for path in micro["include"]:
        assert (ROOT / path).exists(), path


def test_refused_settings_get_one_sentence_in_the_page_s_words(client):
    upload_sample(client)
    notice, _ = client.predict("rekv", 2.0, 16, "as fast as possible", "off", 8, "tiny", {"n_local": -5},
                               api_name="/settings")
    assert "Settings not applied" in notice and "n_local must be a positive number" in notice
    notice, _ = client.predict("external", 2.0, 16, "as fast as possible", "off", 8, "none", {},
                               api_name="/settings")
    assert "expert box says none" in notice and "expert=" not in notice and "load the engine" not in notice
    st = client.predict(api_name="/status")
    assert st["policies"] == ["memstream"] and st["blocks"] == 8  # the memory kept its settings


def test_remove_empties_the_memory(client):
    upload_sample(client)
    notice, status_html, player = client.predict(api_name="/remove")
    assert "removed" in notice and player is None and "No video yet" in status_html
    assert "blocks" not in client.predict(api_name="/status")


def test_an_avi_upload_plays_as_a_converted_copy(client, video_factory):
    from gradio_client import handle_file

    avi = video_factory.odd_size("b.avi")
    notice, _, player = client.predict(handle_file(str(avi)), api_name="/upload")
    # a one-block file may be in memory already when the reply (which waits for the playable copy) leaves
    assert "Ingesting b.avi" in notice or "b.avi is in memory" in notice, notice
    path = player["video"] if isinstance(player, dict) else player  # gradio_client: the downloaded file
    path = path["path"] if isinstance(path, dict) else path
    assert path.endswith("b-preview.mp4")


def test_traces_export_and_open_without_a_model(client, tmp_path):
    from gradio_client import handle_file

    from memstream import tracefile

    upload_sample(client)
    client.predict("What is moving?", api_name="/ask")
    client.predict("And the box?", api_name="/ask")
    notice, path = client.predict(1, False, api_name="/export_answer")
    assert "1 answer written" in notice
    (one,) = tracefile.load(path)
    assert one.question == "And the box?" and one.model == "tiny" and one.policy == "memstream"
    assert one.settings["topk"] == 3 and one.trace.ranking == "fused" and len(one.trace.selected) == 2
    notice, path = client.predict(None, True, api_name="/export_session")
    assert [e.question for e in tracefile.load(path)] == ["What is moving?", "And the box?"]
    out = client.predict(handle_file(path), api_name="/open_trace")
    notice, pick, plot = out[0], out[1], out[2]
    assert "Opened" in notice and "2 answers" in notice
    assert pick["value"] == 3 and [c[1] for c in pick["choices"]][-2:] == [2, 3]  # after the two answered here
    assert json.loads(plot["plot"])["layout"]["yaxis"]["ticktext"] == ["internal", "external", "fused", "retrieved"]
    bad = tmp_path / "notes.json"
    bad.write_text('{"hello": 1}')
    assert "not a memstream trace file" in client.predict(handle_file(str(bad)), api_name="/open_trace")[0]


def test_the_probe_draws_the_drift(client):
    upload_sample(client)
    notice, fig = client.predict("What is moving?", 3, 3.0, 8.0, api_name="/probe")
    assert "asked at 3 times" in notice
    data = json.loads(fig["plot"])["data"]
    assert [d["name"] for d in data] == ["ρ internal", "ρ fused", "internal", "fused"]
    notice, _ = client.predict("What?", 1, None, None, api_name="/probe")
    assert "2 to 12 times" in notice
