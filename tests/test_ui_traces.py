"""What a trace says and how the demo draws it, on real answers of the tiny model: each policy's
trace declares what its marks mean (retrieved / held / attended) and which score ranked; trace files
round-trip and bad ones get one sentence; the bias view and the probe; answers with unprintable bytes;
a preview the browser can play."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from memstream import tracefile
from memstream.engine import Engine
from memstream.experts import build_tiny_expert
from memstream.trace import RetrievalTrace
from memstream_demo import bias, heatmap, preview, probe
from memstream_demo.render import answer_message, visible_text

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = str(ROOT / "assets" / "sample.mp4")


@pytest.fixture(scope="module")
def expert_engine(engine):
    return Engine(engine.backbone, build_tiny_expert())


@pytest.fixture(scope="module")
def answers(expert_engine):
    """One final answer per policy on the 8 s sample (tiny model, tiny expert)."""
    out = {}
    for policy, opts in {"rekv": {"topk": 2}, "memstream": {"topk": 2}, "external": {"topk": 2},
                         "hermes": {"budget": 16, "chunk_frames": 2}, "sink-window": {"n_local": 64}}.items():
        stream = expert_engine.stream(policy=policy, fps=2.0, tokens_per_frame=16, **opts)
        stream.add_video(SAMPLE)
        out[policy] = stream.ask("What is moving?", max_new_tokens=2)
        stream.close()
    return out


def test_each_policy_declares_what_its_marks_mean(answers):
    want = {"rekv": ("retrieved", "internal"), "memstream": ("retrieved", "fused"),
            "external": ("retrieved", "external"), "hermes": ("held", "none"), "sink-window": ("attended", "none")}
    for policy, (selection, ranking) in want.items():
        tr = answers[policy].trace
        assert (tr.selection, tr.ranking) == (selection, ranking), policy


def test_hermes_heatmap_says_held_and_never_retrieved(answers):
    tr = answers["hermes"].trace
    assert tr.kept is not None and int(tr.kept.sum()) > 0
    fig = heatmap.figure(tr)
    text = json.dumps(fig.to_plotly_json(), default=str)
    assert "retrieved" not in text
    assert list(fig.layout.yaxis.ticktext)[-1] == "held" and "held by" in fig.data[1].hovertemplate
    assert "held in layer" in fig.data[3].hovertemplate


def test_external_has_no_fused_row_and_memstream_has_one(answers):
    ext = heatmap.figure_data(heatmap.figure(answers["external"].trace))
    assert list(ext["rows"]) == ["internal", "external"]  # fused == external: not drawn twice
    assert "external " in ext["title"].split("ρ")[-1] and "fused" not in ext["title"]
    mem = heatmap.figure_data(heatmap.figure(answers["memstream"].trace))
    assert list(mem["rows"]) == ["internal", "external", "fused"]
    rekv = heatmap.figure_data(heatmap.figure(answers["rekv"].trace))
    assert list(rekv["rows"]) == ["internal"]


def test_a_trace_file_round_trips_to_the_same_heatmap(answers, tmp_path):
    entries = [tracefile.answer_entry(a, model="tiny", settings={"topk": 2, "fusion_weights": (1.0, 1.0)},
                                      source="sample.mp4") for a in answers.values()]
    path = tmp_path / "session.json"
    path.write_text(tracefile.dumps(entries))
    back = tracefile.load(path)
    assert [e.policy for e in back] == list(answers)
    for e, a in zip(back, answers.values(), strict=True):
        assert e.answer == a.text and e.model == "tiny" and e.asked_at_s == a.asked_at_s
        assert e.settings["fusion_weights"] == [1.0, 1.0]
        assert (e.trace.selection, e.trace.ranking) == (a.trace.selection, a.trace.ranking)
        assert torch.equal(e.trace.internal, a.trace.internal)  # float32 -> JSON -> float32: exact
        assert [s.tolist() for s in e.trace.selected] == [s.tolist() for s in a.trace.selected]
        got, want = heatmap.figure_data(heatmap.figure(e.trace)), heatmap.figure_data(heatmap.figure(a.trace))
        assert got["title"] == want["title"] and list(got["rows"]) == list(want["rows"])
        for name in want["rows"]:
            np.testing.assert_allclose(got["rows"][name], want["rows"][name], atol=1e-6)
        np.testing.assert_allclose(got["layers"], want["layers"], atol=1e-6)
        assert json.loads(tracefile.dumps([e.to_dict()]))["answers"][0]["trace"]["selected"] == \
            [s.tolist() for s in a.trace.selected]


def _good(answers) -> dict:
    return json.loads(tracefile.dumps([tracefile.answer_entry(answers["rekv"], model="tiny")]))


@pytest.mark.parametrize("case, needle", [
    ("not json", "is not JSON"),
    ("other json", "not a memstream trace file"),
    ("version", "version 9"),
    ("no answers", "holds no answers"),
    ("short row", "'internal' that is not a list of numbers"),
    ("one block missing", "'internal' scores that are not one row"),
    ("selected out of range", "'selected' blocks outside"),
    ("fused length", "'fused'"),
    ("question", "'question'"),
    ("binary", "not a text file"),
    ("too big", "at most"),
])
def test_a_bad_trace_file_gets_one_sentence(answers, tmp_path, monkeypatch, case, needle):
    doc = _good(answers)
    tr = doc["answers"][0]["trace"]
    text = None
    if case == "not json":
        text = "{not json"
    elif case == "other json":
        text = json.dumps({"rows": [1, 2]})
    elif case == "version":
        doc["version"] = 9
    elif case == "no answers":
        doc["answers"] = []
    elif case == "short row":
        tr["internal"][0] = tr["internal"][0][:-1]
    elif case == "one block missing":
        tr["internal"] = [row[:-1] for row in tr["internal"]]
    elif case == "selected out of range":
        tr["selected"][0] = [len(tr["block_times"]) + 3]
    elif case == "fused length":
        tr["fused"] = tr["fused"][:1]
    elif case == "question":
        doc["answers"][0]["question"] = 5
    path = tmp_path / "bad.json"
    if case == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage\x9c")
    else:
        path.write_text(text if text is not None else json.dumps(doc))
    if case == "too big":
        monkeypatch.setattr(tracefile, "MAX_BYTES", 10)
    with pytest.raises(tracefile.TraceFileError) as info:
        tracefile.load(path)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg and msg.endswith(".") and msg.count(". ") == 0, msg
    assert str(tmp_path) not in msg  # the file's name, not the server's path


def test_unprintable_answer_bytes_are_shown_as_codes():
    raw = "a\x03b\ufffd\u200bc\n"
    shown = visible_text(raw)
    assert shown == "a⟨U+0003⟩b⟨U+FFFD⟩⟨U+200B⟩c\n"
    assert visible_text("Ein Ball rollt — 12 € ✓") == "Ein Ball rollt — 12 € ✓"
    msg = answer_message("rekv", raw, "asked at 1.0 s · model tiny", compare=False, final=True, noise=True)
    assert "\x03" not in msg and "\ufffd" not in msg and "noise" in msg and "model tiny" in msg
    assert "noise" not in answer_message("rekv", "a ball", "stamp", compare=False, final=True, noise=False)


def test_session_bias_points_follow_each_answer(answers):
    pts = bias.session_points([(1, "memstream", answers["memstream"].trace), (2, "rekv", answers["rekv"].trace),
                               (3, "memstream", answers["memstream"].trace)])
    assert pts["memstream"]["n"] == [1, 3] and pts["rekv"]["fused"] == [None]
    assert pts["memstream"]["fused"][0] == pytest.approx(answers["memstream"].trace.bias["fused"])
    fig = bias.session_figure([(1, "memstream", answers["memstream"].trace)])
    assert {d.name for d in fig.data} == {"memstream · internal", "memstream · fused"}


def test_probe_asks_at_several_stream_times(expert_engine):
    times = probe.probe_times(8.0, 4)
    assert times == pytest.approx([1.6, 3.73333, 5.86667, 8.0], abs=1e-4)
    out = probe.run_probe(expert_engine, "memstream", {"fps": 2.0, "tokens_per_frame": 16, "topk": 2}, SAMPLE,
                          "What is moving?", times)
    assert [t for t, _ in out] == times
    n_blocks = [len(tr.block_times) for _, tr in out]
    assert n_blocks == sorted(n_blocks) and n_blocks[0] < n_blocks[-1] == 8  # the memory grew between asks
    assert all(float(tr.block_times.max()) < t for t, tr in out)  # nothing from after the time asked
    fig = bias.drift_figure(out, "What is moving?")
    z = np.asarray(fig.data[-1].z, dtype=float)  # fused panel: a row per time, NaN where no block yet
    assert z.shape == (4, 8) and np.isnan(z[0, -1]) and not np.isnan(z[-1]).any()
    for bad in (1, 99):
        with pytest.raises(Exception, match="2 to"):
            probe.probe_times(8.0, bad)
    with pytest.raises(Exception, match="inside the video"):
        probe.probe_times(8.0, 3, 6.0, 2.0)


def test_an_avi_gets_a_playable_preview(video_factory, tmp_path):
    avi = video_factory.odd_size("clip.avi")
    assert not preview.browser_plays(str(avi))
    out = preview.playable(str(avi), tmp_path)
    assert out and out.endswith(".mp4") and preview.browser_plays(out)
    assert preview.playable(out, tmp_path) == out  # already playable: used as it is


def test_trace_build_checks_its_labels():
    with pytest.raises(ValueError):
        RetrievalTrace.build(torch.zeros(2), torch.zeros(1, 2), [torch.tensor([0])], selection="guessed")
