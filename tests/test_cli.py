"""`python -m memstream ask ...`: the happy path in text and JSON, one `error: <sentence>` line and
exit status 2 for each bad input, warnings for damaged files, and good-but-odd videos that just work.

The bad-input cases only check the exit status and the one error line, so they call
`memstream.cli.main` in-process (capturing stdout and stderr). The other cases, and one bad input,
run as real subprocesses: they prove that `python -m memstream` works end to end and that the
process prints no traceback. Each subprocess spends most of its time importing torch and
transformers, so the runs are started together (as many at a time as there are cores) when the
first subprocess test needs its result; only the cases of the tests selected in this session are run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import videos

from memstream.cli import main

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "assets" / "sample.mp4"
Q = "What is moving?"
FAST = ["--model", "tiny", "--tokens-per-frame", "16", "--max-new-tokens", "4"]
TIMEOUT_S = 240


# Inputs, written once per module; a case names them as "{key}" in its arguments.
INPUTS = {
    "empty": lambda d: videos.make_empty_file(d / "empty.mp4"),
    "text": lambda d: videos.make_text_file(d / "text.mp4"),
    "corrupt_mp4": lambda d: videos.make_corrupt_video(d / "noise.mp4", start=0.2),
    "corrupt_mkv": lambda d: videos.make_corrupt_video(d / "noise.mkv"),
    "truncated": lambda d: videos.make_truncated_video(d / "cut.mkv"),
    "audio": lambda d: videos.make_audio_only(d / "tone.m4a"),
    "undecodable": lambda d: videos.make_undecodable_video(d / "halfkey.mp4"),
    "missing": lambda d: d / "missing.mp4",
    "dir": lambda d: d / "a-folder",
    "no_model": lambda d: d / "no-such-model",
    "one_frame": lambda d: videos.make_one_frame_video(d / "one.mp4"),
    "portrait": lambda d: videos.make_portrait_video(d / "portrait.mp4"),
    "odd_size": lambda d: videos.make_odd_size_video(d / "odd.avi"),
    "png": lambda d: videos.make_png_file(d / "still.png"),
    "sample": lambda d: SAMPLE,
}

# Bad input: (arguments after `ask`, words the one error line must contain).
BAD = {
    "empty-file": (["{empty}", Q], "empty"),
    "text-named-mp4": (["{text}", Q], "not a readable video"),
    "corrupt-mp4": (["{corrupt_mp4}", Q], "not a readable video"),
    "audio-only": (["{audio}", Q], "no video stream"),
    "undecodable": (["{undecodable}", Q], "no decodable video frames"),
    "missing-file": (["{missing}", Q], "does not exist"),
    "directory": (["{dir}", Q], "directory"),
    "fps-0": (["{sample}", Q, "--fps", "0"], "fps"),
    "fps-nan": (["{sample}", Q, "--fps", "nan"], "fps"),
    "tokens-per-frame-3": (["{sample}", Q, "--tokens-per-frame", "3"], "tokens_per_frame"),
    "topk-0": (["{sample}", Q, "--topk", "0"], "topk"),
    "unknown-policy": (["{sample}", Q, "--policy", "magic"], "policy"),
    "unknown-positions": (["{sample}", Q, "--positions", "middle"], "positions"),
    "empty-question": (["{sample}", "   "], "question is empty"),
    "max-new-tokens-0": (["{sample}", Q, "--max-new-tokens", "0"], "max_new_tokens"),
    "model-dir-missing": (["{sample}", Q, "--model", "{no_model}"], "--model tiny"),
    "device-cuda": (["{sample}", Q, "--device", "cuda"], "GPU"),
}

# Damaged but partly usable: exit 0 with a warning.
DAMAGED = {
    "truncated": ["{truncated}", Q],
    "corrupt-mkv": ["{corrupt_mkv}", Q],
}

# Good but odd (all --json): (arguments, blocks expected).
ODD = {
    "one-frame": (["{one_frame}", Q], 1),
    "portrait-1080x1920": (["{portrait}", Q], 1),
    "odd-size-101x37": (["{odd_size}", Q], 1),
    "still-png": (["{png}", Q], 1),
    "fps-above-native": (["{sample}", Q, "--fps", "30"], 40),  # 80 native frames at 10 fps
}

HAPPY = {
    "text": ["{sample}", Q, "--model", "tiny", "--tokens-per-frame", "16", "--device", "cpu"],  # as the engine
    "json": ["{sample}", Q, "--model", "tiny", "--tokens-per-frame", "16", "--json"],
}


def case_argv(case: str) -> list[str]:
    """The whole argument list after `python -m memstream` for a case id "<group>/<name>"."""
    group, name = case.split("/", 1)
    if group == "bad":
        args = FAST + BAD[name][0]  # later options win, so a case may override FAST
    elif group == "damaged":
        args = FAST + DAMAGED[name]
    elif group == "odd":
        args = FAST + ODD[name][0] + ["--json"]
    else:
        args = HAPPY[name]
    return ["ask", *args]


class CliRuns:
    """Runs the selected cases concurrently; `result(case)` waits for one."""

    def __init__(self, cases: list[str], inputs: dict[str, Path], env: dict[str, str]):
        self.inputs, self.env = inputs, env
        self.pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
        self.futures: dict[str, Future] = {case: self.pool.submit(self._run, case) for case in cases}

    def _run(self, case: str) -> subprocess.CompletedProcess:
        argv = [a.format(**self.inputs) for a in case_argv(case)]
        return subprocess.run([sys.executable, "-m", "memstream", *argv], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)

    def result(self, case: str) -> subprocess.CompletedProcess:
        if case not in self.futures:  # a case not known at setup (should not happen): run it now
            self.futures[case] = self.pool.submit(self._run, case)
        return self.futures[case].result()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("cli-inputs")
    (folder / "a-folder").mkdir()
    return {key: str(make(folder)) for key, make in INPUTS.items()}


@pytest.fixture(scope="module")
def cli(request, engine, tiny_cache, inputs):
    """Subprocess runs of the selected tests that use this fixture.
    Depends on `engine` so that the tiny checkpoint is built once before the subprocesses start."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and "cli" in item.fixturenames
                and hasattr(item, "callspec") and "case" in item.callspec.params]
    env = {k: v for k, v in os.environ.items() if k != "MEMSTREAM_DEBUG"}
    env["MEMSTREAM_CACHE"] = str(tiny_cache)
    runs = CliRuns(list(dict.fromkeys(selected)), inputs, env)
    yield runs
    runs.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def in_process(inputs, tiny_cache, monkeypatch, capsys):
    """Runs `memstream.cli.main` on a case's arguments as the subprocesses do (same model cache, no
    MEMSTREAM_DEBUG); returns (exit status, stdout, stderr)."""
    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    monkeypatch.delenv("MEMSTREAM_DEBUG", raising=False)

    def run(case: str) -> tuple[int, str, str]:
        code = main([a.format(**inputs) for a in case_argv(case)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def no_traceback(stdout: str, stderr: str) -> None:
    assert "Traceback" not in stdout and "Traceback" not in stderr, stderr[-3000:]
    assert "internal error" not in stderr, stderr


# ---------------------------------------------------------------- happy path


@pytest.mark.slow
@pytest.mark.parametrize("case", ["happy/text"])
def test_happy_path_text(cli, case, engine):
    proc = cli.result(case)
    no_traceback(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    # the only line on stderr says that the tiny model's answer is noise
    assert proc.stderr == ("note: model 'tiny' has random weights, so its answer is noise; the memory, retrieval "
                           "and timings are real.\n")
    # the answer comes first and is the library's answer for the same settings (CLI defaults)
    stream = engine.stream(policy="rekv", fps=1.0, tokens_per_frame=16)
    stream.add_video(str(SAMPLE))
    expected = stream.ask(Q, max_new_tokens=64).text
    assert proc.stdout.startswith(expected + "\n"), (proc.stdout[:200], expected[:200])
    stamp, retrieved, bias, end = proc.stdout[len(expected) + 1:].split("\n")
    assert re.match(r"-- asked at 8\.0 s .*8 frames .*4 blocks .*TTFT .*policy rekv$", stamp), stamp
    assert retrieved.startswith("retrieved ") and " of 4 blocks: " in retrieved, retrieved
    assert bias.startswith("temporal bias") and end == ""


def json_result(cli, case: str) -> dict:
    """A --json run that succeeded quietly: its single stdout line, parsed."""
    proc = cli.result(case)
    no_traceback(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["happy/json"])
def test_happy_path_json(cli, case):
    out = json_result(cli, case)
    assert {"answer", "ttft_s", "blocks", "trace", "stats"} <= set(out)
    assert isinstance(out["answer"], str) and out["ttft_s"] > 0 and out["blocks"] == 4
    assert {"block_times", "selected", "bias"} <= set(out["trace"])
    assert out["trace"]["block_times"] == [0.0, 2.0, 4.0, 6.0]
    assert all(sel == sorted(sel) and set(sel) <= {0, 1, 2, 3} for sel in out["trace"]["selected"])
    assert "internal" in out["trace"]["bias"]
    stats = out["stats"]
    assert {"frames", "blocks", "tokens_stored", "bytes_cpu", "bytes_gpu"} <= set(stats)
    assert stats["frames"] == 8 and stats["blocks"] == 4 and stats["tokens_stored"] > 0
    assert stats["bytes_cpu"] > 0 and stats["bytes_gpu"] >= 0
    assert out["warnings"] == [] and out["random_weights"] is True


# ---------------------------------------------------------------- bad input


def check_one_error_line(case: str, code: int, stdout: str, stderr: str) -> None:
    """Exit status 2, nothing on stdout, and one `error: <one sentence>.` line on stderr."""
    no_traceback(stdout, stderr)
    assert code == 2, (code, stderr)
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    line = lines[0]
    assert line.startswith("error: ") and line.endswith("."), line
    assert not re.search(r"[.!?]\s+[A-Z]", line[len("error: "):]), f"more than one sentence: {line}"
    assert BAD[case.split("/", 1)[1]][1] in line, line


@pytest.mark.parametrize("case", [f"bad/{name}" for name in BAD])
def test_bad_input_is_one_error_line(in_process, case):
    if case == "bad/device-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    check_one_error_line(case, *in_process(case))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad/missing-file"])
def test_bad_input_in_a_real_process(cli, case):
    """The same contract through `python -m memstream`: the exit status reaches the shell, no traceback."""
    proc = cli.result(case)
    check_one_error_line(case, proc.returncode, proc.stdout, proc.stderr)


# ---------------------------------------------------------------- damaged and odd videos


@pytest.mark.slow
@pytest.mark.parametrize("case", [f"damaged/{name}" for name in DAMAGED])
def test_damaged_video_answers_with_a_warning(cli, case):
    proc = cli.result(case)
    no_traceback(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("note: model 'tiny' has random weights")  # the tiny model's answer is noise
    lines = lines[:-1]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "damaged or truncated" in lines[0], lines
    stamp = next(line for line in proc.stdout.split("\n") if line.startswith("-- asked at"))
    frames = int(re.search(r"(\d+) frames", stamp).group(1))
    assert 2 <= frames < 6, stamp  # the seconds before the damage, at 1 fps


@pytest.mark.slow
@pytest.mark.parametrize("case", [f"odd/{name}" for name in ODD])
def test_good_but_odd_video_just_works(cli, case):
    out = json_result(cli, case)
    blocks = ODD[case.split("/", 1)[1]][1]
    assert out["blocks"] == out["stats"]["blocks"] == blocks
    assert len(out["trace"]["block_times"]) == blocks and out["warnings"] == []


def test_ask_help_shows_every_default(capsys):
    from memstream.cli import main

    with pytest.raises(SystemExit):
        main(["ask", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: rekv)" in text and "answer length limit, tokens (default: 64)" in text
    assert "(default: tiny)" in text and "(default rekv: 16;" in text  # --model, and a policy option
