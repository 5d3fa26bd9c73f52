"""`python -m memstream eval`: ReKV annotations in, one JSON line per question out, a summary.

Runs `memstream.cli.main` in-process on the tiny model and assets/sample.mp4 (8 s; at 1 fps that
is 8 frames = 4 blocks, block k covering seconds 2k..2k+2), with one real subprocess for the
bad-input contract (exit 2, one line, no traceback). The OpenAI-compatible judge talks to a fake
server on 127.0.0.1 started by the test.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from memstream.cli import main
from memstream.evaluate import JudgeError, MatchJudge, OpenAIJudge
from memstream.evaluate.prompts import ANSWER_PREFIX, answer_index, mc_prompt, strip_choice_labels

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"
FAST = ["--tokens-per-frame", "16", "--max-new-tokens", "3", "--no-progress"]

# Offline multiple choice: answers as text, letter, "(B)", index and labelled VideoMME-style choices.
MC_VIDEO = {"video_id": "mc", "video_path": "sample.mp4", "duration": 8.0, "conversations": [
    {"question": "What moves?", "choices": ["a ball", "a car", "a bird", "nothing"], "answer": "a car",
     "question_type": "action"},
    {"question": "Which colour?", "choices": ["A. red", "B. blue", "C. green"], "answer": "C",
     "question_type": "colour"},
    {"question": "How many shapes?", "choices": ["1", "2", "3"], "answer": 0, "question_type": "count"},
    {"question": "Where does it go?", "choices": ["left", "right"], "answer": "(B)", "question_type": "action"},
    {"question": "Describe the scene.", "answer": "a square"},
]}
MC_LETTERS = ["B", "C", "A", "B"]  # the correct letters of the four MC questions, by hand
# Streaming (RVS-style): asked at end_time, out of time order on purpose; the MC one checks memory content.
RVS_VIDEO = {"video_id": "rvs", "video_path": "sample.mp4", "duration": 8.0, "conversations": [
    {"question": "What is there now?", "answer": "a square", "start_time": 0, "end_time": 6.5},
    {"question": "What came first?", "answer": "nothing", "start_time": 0.0, "end_time": 2.0},
    {"question": "Which side?", "choices": ["left", "right"], "answer": "left", "end_time": 5.0,
     "question_type": "streaming-mc"},
    {"question": "And at the end?", "answer": "gone", "end_time": 100},
]}
# blocks seen: the frames with t < end_time, in complete pairs (a frame at exactly end_time is not
# seen: 5.0 gives frames 0..4 = 2 blocks + 1 pending); past the end of the file the last frame is padded
RVS_BLOCKS = {0: 3, 1: 1, 2: 2, 3: 4}


@pytest.fixture(scope="module")
def env(tiny_cache):
    """Point the CLI's model cache at the session's tiny checkpoint, for in-process runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMSTREAM_CACHE", str(tiny_cache))
        mp.delenv("MEMSTREAM_DEBUG", raising=False)
        yield


def write_annotations(folder: Path, videos: list, name: str = "ann.json") -> str:
    path = folder / name
    path.write_text(json.dumps(videos))
    return str(path)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def summary_of(out: str) -> dict:
    """The --json summary: the last stdout line, without this run's own counts."""
    summary = json.loads(out.splitlines()[-1])
    return {k: v for k, v in summary.items() if k not in ("answered", "resumed", "warnings")}


# ---------------------------------------------------------------- offline multiple choice + resume


@pytest.fixture(scope="module")
def mc_run(env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-mc")
    ann = write_annotations(folder, [MC_VIDEO])
    out = folder / "run.jsonl"
    args = [ann, "--video-root", str(ASSETS), "--out", str(out), "--json", *FAST]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["eval", *args])
    return args, out, code, printed.getvalue()


def test_mc_accuracy_matches_a_hand_check_of_the_letters(mc_run, capsys, engine):
    args, out, code, _ = mc_run
    assert code == 0
    records = read_jsonl(out)
    assert [(r["video_id"], r["index"]) for r in records] == [("mc", i) for i in range(5)]
    mc = [r for r in records if r["kind"] == "mc"]
    assert [r["reference"] for r in mc] == MC_LETTERS
    for r in mc:  # the letter is the argmax among the option letters only, so always valid
        assert r["prediction"] == max(r["letter_logits"], key=r["letter_logits"].get)
        assert r["correct"] == (r["prediction"] == r["reference"]) and r["score"] == float(r["correct"])
        assert r["blocks_seen"] == 4 and r["asked_at_s"] == 8.0 and r["mode"] == "offline"
    assert mc[1]["choices"] == ["red", "blue", "green"]  # "A. red" labels stripped
    # the recorded logits are the engine's own: same prompt, same memory, same first-token logits
    stream = engine.stream(policy="rekv", tokens_per_frame=16)
    stream.add_video(str(ASSETS / "sample.mp4"))
    first = stream.ask(mc_prompt("What moves?", ["a ball", "a car", "a bird", "nothing"]), max_new_tokens=1,
                       query="What moves?", answer_prefix=ANSWER_PREFIX)
    ids = [engine.backbone.tokenize(letter)[0] for letter in "ABCD"]
    assert list(mc[0]["letter_logits"].values()) == pytest.approx(first.first_logits[ids].tolist(), abs=1e-5)
    # the summary, by hand: open-ended "Describe the scene." scores by the default contains judge
    code, stdout, _ = run_cli(capsys, *args)  # a resumed run prints the same summary
    summary = json.loads(stdout.splitlines()[-1])
    scores = [float(r["prediction"] == r["reference"]) for r in mc] + [records[4]["score"]]
    assert records[4]["score"] == float(records[4]["contains"]) and records[4]["judge"] == "match-contains"
    assert summary["accuracy"] == pytest.approx(sum(scores) / 5)
    by_type = summary["by_question_type"]
    assert set(by_type) == {"action", "colour", "count", "untyped"}
    assert by_type["action"]["n"] == 2
    assert by_type["action"]["accuracy"] == pytest.approx((scores[0] + scores[3]) / 2)
    assert by_type["colour"]["accuracy"] == scores[1] and by_type["count"]["accuracy"] == scores[2]
    assert summary["multiple_choice"]["accuracy"] == pytest.approx(sum(scores[:4]) / 4)
    assert summary["mean_ttft_s"] == pytest.approx(sum(r["ttft_s"] for r in records) / 5)


def test_rerun_answers_nothing_new_and_recovers_a_cut_last_line(mc_run, capsys, monkeypatch):
    args, out, _, printed = mc_run
    first = summary_of(printed)
    with monkeypatch.context() as mp:  # nothing left to answer: the model is not even loaded
        mp.setattr("memstream.evaluate.command.load", lambda **kw: pytest.fail("loaded a model"))
        code, stdout, stderr = run_cli(capsys, *args)
    assert code == 0 and summary_of(stdout) == first  # the same summary, ttft included
    assert json.loads(stdout.splitlines()[-1])["answered"] == 0
    assert json.loads(stdout.splitlines()[-1])["resumed"] == 5 and len(read_jsonl(out)) == 5
    # a crash in the middle of writing the last line: it is dropped and only that question is redone
    text = out.read_text()
    out.write_text(text[: len(text) - 40])
    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 0 and "incomplete last line" in stderr
    again = json.loads(stdout.splitlines()[-1])
    assert again["answered"] == 1 and again["resumed"] == 4
    same = {k: v for k, v in first.items() if k != "mean_ttft_s"}  # the redone question's TTFT differs
    assert {k: v for k, v in summary_of(stdout).items() if k != "mean_ttft_s"} == same
    assert len(read_jsonl(out)) == 5
    # other settings into the same file are refused in one sentence, before anything runs
    code, stdout, stderr = run_cli(capsys, *args, "--topk", "2")
    assert code == 2 and stdout == "" and stderr.count("\n") == 1
    assert stderr.startswith("error: ") and "topk=16" in stderr and "--out" in stderr


def test_text_summary_and_progress_bar(env, tmp_path, capsys):
    ann = write_annotations(tmp_path, [dict(MC_VIDEO, conversations=MC_VIDEO["conversations"][:2])])
    code, stdout, stderr = run_cli(capsys, ann, "--video-root", str(ASSETS), "--tokens-per-frame", "16")
    assert code == 0
    assert "2/2" in stderr and "eval" in stderr and "<00:00" in stderr  # tqdm: count, elapsed<remaining
    lines = stdout.splitlines()
    assert lines[0].startswith("accuracy ") and "over 2 questions" in lines[0] and "mean TTFT" in lines[0]
    assert any(line.split()[0] == "colour" for line in lines[1:3])
    assert lines[-1] == "-- 2 answered now, 0 from earlier runs"


# ---------------------------------------------------------------- streaming


def test_streaming_ingests_only_up_to_each_end_time(env, tmp_path, capsys, engine):
    ann = write_annotations(tmp_path, [RVS_VIDEO])
    out = tmp_path / "rvs.jsonl"
    code, stdout, _ = run_cli(capsys, ann, "--video-root", str(ASSETS), "--out", str(out), "--json", *FAST)
    assert code == 0
    records = read_jsonl(out)
    assert [r["index"] for r in records] == [1, 2, 0, 3]  # asked in time order
    for r in records:
        assert r["mode"] == "streaming" and r["blocks_seen"] == RVS_BLOCKS[r["index"]], r
        assert r["frames_seen"] == 2 * r["blocks_seen"] and r["asked_at_s"] == 2.0 * r["blocks_seen"]
    # the memory held exactly the frames before end_time: same logits as a stream fed seconds 0..3 only
    mc = next(r for r in records if r["kind"] == "mc")
    stream = engine.stream(policy="rekv", tokens_per_frame=16)
    stream.add_video(str(ASSETS / "sample.mp4"), max_seconds=3.5)
    ids = [engine.backbone.tokenize(letter)[0] for letter in "AB"]
    first = stream.ask(mc_prompt("Which side?", ["left", "right"]), max_new_tokens=1, query="Which side?",
                       answer_prefix=ANSWER_PREFIX).first_logits
    assert list(mc["letter_logits"].values()) == pytest.approx(first[ids].tolist(), abs=1e-5)
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["by_question_type"]["streaming-mc"]["accuracy"] == float(mc["prediction"] == "A")
    assert summary["open_ended"]["n"] == 3 and summary["errors"] == 0


# ---------------------------------------------------------------- judges


class FakeOpenAI(BaseHTTPRequestHandler):
    """/v1/chat/completions: grade 5 when the prediction is judged against "a square", else 1;
    the first request of each server fails with HTTP 503 to exercise the retry."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        server.requests.append((self.path, dict(self.headers), body))
        if len(server.requests) == 1:
            self.send_error(503)
            return
        grade = 5 if "Correct answer: a square" in body["messages"][-1]["content"] else 1
        reply = json.dumps({"choices": [{"message": {"role": "assistant",
                                                     "content": f'Sure. {{"score": {grade}}}'}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def fake_openai():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopper = threading.Timer(120, server.shutdown)  # bounded even if the test hangs
    stopper.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", server
    stopper.cancel()
    server.shutdown()
    server.server_close()


def test_match_judge_and_answer_normalisation():
    contains, exact = MatchJudge(), MatchJudge("exact")
    assert contains.score("q", "A square.", "I see a square moving") == 1.0
    assert contains.score("q", "square", "squares") == 0.0  # whole words only
    assert exact.score("q", "The Square", "square!") == 1.0 and exact.score("q", "square", "a red square") == 0.0
    choices = ("red", "blue", "green")
    assert [answer_index(a, choices) for a in ("Blue.", "B", "(c)", "C.", 2, "0", "(B) blue")] == [1, 1, 2, 2, 2, 0, 1]
    assert [answer_index(a, choices) for a in ("D", 3, "(A) blue", "purple")] == [None] * 4
    assert strip_choice_labels(["A dog", "B cat"]) == ["A dog", "B cat"]  # not labels: kept whole


def test_openai_judge_against_a_fake_server(fake_openai, env, tmp_path, capsys, monkeypatch):
    url, server = fake_openai
    monkeypatch.setenv("EVAL_TEST_KEY", "sk-test")
    judge = OpenAIJudge(url, "grader", api_key_env="EVAL_TEST_KEY")
    assert judge.score("What is it?", "a square", "a box") == 1.0  # after one 503 and a retry
    path, headers, body = server.requests[-1]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "grader" and "Predicted answer: a box" in body["messages"][-1]["content"]
    # end to end: every open-ended answer graded by the server, grade / 5 recorded as the score
    ann = write_annotations(tmp_path, [RVS_VIDEO])
    out = tmp_path / "judged.jsonl"
    code, stdout, _ = run_cli(capsys, ann, "--video-root", str(ASSETS), "--out", str(out), "--json", *FAST,
                              "--judge", "openai", "--judge-url", url, "--judge-model", "grader")
    assert code == 0
    open_ = [r for r in read_jsonl(out) if r["kind"] == "open"]
    assert {r["judge"] for r in open_} == {"openai:grader"}
    assert [r["score"] for r in open_] == [1.0 if r["reference"] == "a square" else 0.2 for r in open_]
    assert json.loads(stdout.splitlines()[-1])["open_ended"]["score"] == pytest.approx(1.4 / 3)
    # an endpoint that is gone: one sentence, exit 2
    server.shutdown()
    server.server_close()  # refuse connections at once instead of leaving them unanswered
    code, stdout, stderr = run_cli(capsys, ann, "--video-root", str(ASSETS), "--out", str(tmp_path / "x.jsonl"),
                                   *FAST, "--judge", "openai", "--judge-url", url, "--judge-model", "grader")
    assert code == 2 and stderr.splitlines()[-1].startswith("error: The judge at ")


def test_unreadable_judge_replies_are_judge_errors():
    judge = OpenAIJudge("http://127.0.0.1:9/v1", "m", retries=0, timeout_s=2)
    with pytest.raises(JudgeError, match="could not be reached"):
        judge.score("q", "a", "b")
    from memstream.evaluate.judge import parse_grade
    assert parse_grade("4") == 0.8 and parse_grade('{"score": 0}') == 0.0
    with pytest.raises(JudgeError, match="no score"):
        parse_grade("I think it is right")


class LengthJudge:
    """A custom judge loaded by --judge test_eval:LengthJudge: full marks for any non-empty answer."""

    name = "length"

    def score(self, question: str, reference: str, prediction: str) -> float:
        return float(bool(prediction))


def test_custom_judge_missing_videos_skipped_and_limit(env, tmp_path, capsys):
    gone = dict(MC_VIDEO, video_id="gone", video_path="nope.mp4")
    extra = dict(MC_VIDEO, video_id="extra")
    ann = write_annotations(tmp_path, [gone, dict(MC_VIDEO, conversations=MC_VIDEO["conversations"][4:]), extra])
    code, stdout, stderr = run_cli(capsys, ann, "--video-root", str(ASSETS), "--json", *FAST,
                                   "--judge", "test_eval:LengthJudge", "--skip-missing", "--limit", "1")
    assert code == 0 and "skipped video 'gone'" in stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["open_ended"]["judges"] == ["length"] and summary["skipped_videos"] == ["gone"]
    assert summary["n"] == 1  # --limit 1: only the first existing video


# ---------------------------------------------------------------- bad annotations


def _with_question(**fields) -> list:
    return [dict(MC_VIDEO, conversations=[dict(MC_VIDEO["conversations"][0], **fields)])]


BAD = {  # name: (file content, words the error line must contain)
    "missing-file": (None, "not found"),
    "not-json": ("[{'video_id': 1}]", "not valid JSON"),
    "not-a-list": ({"video_id": "x"}, "non-empty JSON list"),
    "unknown-question-field": (_with_question(optionz=["a"]), "unknown field 'optionz'"),
    "unknown-video-field": ([dict(MC_VIDEO, fps=2)], "unknown field 'fps'"),
    "missing-video": ([dict(MC_VIDEO, video_path="nope.mp4")], "does not exist"),
    "answer-not-a-choice": (_with_question(answer="a plane"), "neither a letter"),
    "letter-out-of-range": (_with_question(answer="E"), "neither a letter"),
    "negative-end-time": (_with_question(end_time=-1), "end_time"),
    "ends-before-start": (_with_question(start_time=5, end_time=2), "before it starts"),
    "no-answer": ([dict(MC_VIDEO, conversations=[{"question": "q"}])], "no 'answer'"),
    "duplicate-id": ([MC_VIDEO, MC_VIDEO], "appears twice"),
    "no-conversations": ([dict(MC_VIDEO, conversations=[])], "conversations"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_annotations_exit_2_with_one_sentence(case, env, tmp_path, capsys):
    content, words = BAD[case]
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    code, stdout, stderr = run_cli(capsys, str(path), "--video-root", str(ASSETS), *FAST)
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and stderr.rstrip().endswith("."), stderr
    assert words in stderr, stderr


@pytest.mark.slow
def test_bad_annotations_in_a_subprocess_have_no_traceback(tmp_path, tiny_cache):
    path = write_annotations(tmp_path, _with_question(choises=["a", "b"]))
    env = {k: v for k, v in os.environ.items() if k != "MEMSTREAM_DEBUG"}
    env["MEMSTREAM_CACHE"] = str(tiny_cache)
    proc = subprocess.run([sys.executable, "-m", "memstream", "eval", path, "--video-root", str(ASSETS)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr == ("error: Video 'mc', question #0 has unknown field 'choises'; allowed fields are "
                           "answer, choices, end_time, question, question_type, start_time.\n")
