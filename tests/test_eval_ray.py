"""`python -m memstream eval ... --ray`: the evaluation on a pool of Ray workers.

A local Ray cluster of 2 CPUs (small object store, no dashboard), started once for the module and
shut down after it; the CLI run in this process finds it initialised and uses it. The oracle is the
single-process run of the same annotations: the same records (timings aside) and the same summary.
A worker killed mid-video (MEMSTREAM_EVAL_CRASH_VIDEO) and a results file cut in half must both end
in the complete, duplicate-free set of records. The bad-input sentences and "without --ray, Ray is
not imported" run without the cluster.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memstream.cli import main

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"
FAST = ["--tokens-per-frame", "16", "--max-new-tokens", "3", "--no-progress", "--json"]
TIMINGS = {"ttft_s", "total_s"}  # the only fields that differ between two runs of the same question

MC = {"video_id": "mc", "video_path": "sample.mp4", "duration": 8.0, "conversations": [
    {"question": "What moves?", "choices": ["a ball", "a car", "a bird", "nothing"], "answer": "a car",
     "question_type": "action"},
    {"question": "Which colour?", "choices": ["A. red", "B. blue", "C. green"], "answer": "C",
     "question_type": "colour"},
    {"question": "Where does it go?", "choices": ["left", "right"], "answer": "(B)", "question_type": "action"},
    {"question": "Describe the scene.", "answer": "a square"},
]}
RVS = {"video_id": "rvs", "video_path": "sample.mp4", "duration": 8.0, "conversations": [
    {"question": "What is there now?", "answer": "a square", "start_time": 0, "end_time": 6.5},
    {"question": "Which side?", "choices": ["left", "right"], "answer": "left", "end_time": 5.0,
     "question_type": "streaming-mc"},
    {"question": "What came first?", "answer": "nothing", "end_time": 2.0},
]}
# four videos for two workers: offline and streaming ones, so that both kinds cross the process boundary
VIDEOS = [MC, RVS, dict(MC, video_id="mc2"), dict(RVS, video_id="rvs2")]
KEYS = sorted((v["video_id"], i) for v in VIDEOS for i in range(len(v["conversations"])))


@pytest.fixture(scope="module")
def env(tiny_cache, engine):
    """The CLI's model cache is the session's tiny checkpoint (already built by `engine`, so the
    workers only read it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMSTREAM_CACHE", str(tiny_cache))
        mp.delenv("MEMSTREAM_DEBUG", raising=False)
        mp.delenv("MEMSTREAM_EVAL_CRASH_VIDEO", raising=False)
        yield


@pytest.fixture(scope="module")
def cluster(env):
    """A local Ray cluster of 2 CPUs for this module (workers inherit the environment set above)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=120 * 2**20, log_to_driver=False,
             logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def annotations(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("eval-ray") / "ann.json"
    path.write_text(json.dumps(VIDEOS))
    return str(path)


@pytest.fixture(scope="module")
def single(env, annotations, tmp_path_factory):
    """The oracle: the same annotations answered in this process, one video after another."""
    out = tmp_path_factory.mktemp("eval-single") / "single.jsonl"
    code = main(["eval", annotations, "--video-root", str(ASSETS), "--out", str(out), *FAST])
    assert code == 0
    return out


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def by_key(path: Path) -> dict:
    """The records of a results file by (video_id, index), asserting that no key appears twice."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    records = {(r["video_id"], r["index"]): r for r in lines}
    assert len(records) == len(lines), "a question was written twice"
    return records


def assert_same_records(path: Path, oracle: Path) -> None:
    got, want = by_key(path), by_key(oracle)
    assert sorted(got) == KEYS == sorted(want)
    for key, record in want.items():
        mine = got[key]
        assert {k: v for k, v in mine.items() if k not in TIMINGS | {"letter_logits"}} == \
               {k: v for k, v in record.items() if k not in TIMINGS | {"letter_logits"}}, key
        if "letter_logits" in record:  # the same forward on another process: equal up to float noise
            assert list(mine["letter_logits"].values()) == pytest.approx(list(record["letter_logits"].values()),
                                                                         abs=1e-5)


def summary_of(stdout: str) -> dict:
    summary = json.loads(stdout.splitlines()[-1])
    return {k: v for k, v in summary.items() if k not in ("answered", "resumed", "out", "warnings", "mean_ttft_s")}


@pytest.mark.slow
def test_two_workers_give_the_records_and_accuracy_of_one_process(cluster, annotations, single, tmp_path, capsys):
    out = tmp_path / "ray.jsonl"
    code, stdout, stderr = run_cli(capsys, annotations, "--video-root", str(ASSETS), "--out", str(out), *FAST,
                                   "--ray", "--workers", "2")
    assert code == 0 and stderr == ""
    assert_same_records(out, single)
    code, oracle, _ = run_cli(capsys, annotations, "--video-root", str(ASSETS), "--out", str(single), *FAST)
    assert code == 0 and summary_of(stdout) == summary_of(oracle)
    assert json.loads(stdout.splitlines()[-1])["answered"] == len(KEYS)


@pytest.mark.slow
def test_resuming_a_half_written_file_on_ray_continues_it(cluster, annotations, single, tmp_path, capsys):
    out = tmp_path / "half.jsonl"
    lines = single.read_text().splitlines(keepends=True)
    half = len(lines) // 2
    out.write_text("".join(lines[:half]) + lines[half][:30])  # and a line cut by a crash mid-write
    code, stdout, stderr = run_cli(capsys, annotations, "--video-root", str(ASSETS), "--out", str(out), *FAST,
                                   "--ray", "--workers", "2")
    assert code == 0 and "incomplete last line" in stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["resumed"] == half and summary["answered"] == len(KEYS) - half
    assert out.read_text().startswith("".join(lines[:half]))  # the first half is kept as it was
    assert_same_records(out, single)


@pytest.mark.slow
def test_a_worker_killed_mid_video_still_gives_every_record_once(env, annotations, single, tmp_path):
    """In a subprocess, so that the CLI starts (and stops) its own local Ray cluster, and so that
    everything Ray might print reaches the captured stdout/stderr."""
    pytest.importorskip("ray")
    out = tmp_path / "crash.jsonl"
    environ = {**os.environ, "MEMSTREAM_EVAL_CRASH_VIDEO": "mc"}
    proc = subprocess.run([sys.executable, "-m", "memstream", "eval", annotations, "--video-root", str(ASSETS),
                           "--out", str(out), *FAST, "--ray", "--workers", "2"],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_same_records(out, single)
    # one warning of ours, nothing of Ray's: no log lines, no "(raylet)" report of the dead worker
    assert proc.stderr.splitlines() == [line for line in proc.stderr.splitlines() if line.startswith("warning: mc: ")]
    assert len(proc.stderr.splitlines()) == 1 and "a worker died" in proc.stderr and "retry 1 of 2" in proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and json.loads(proc.stdout)["n"] == len(KEYS)
    assert json.loads(proc.stdout)["warnings"] == [proc.stderr.strip().removeprefix("warning: ")]



@pytest.mark.slow
def test_a_plugin_policy_runs_on_the_workers(env, annotations, tmp_path):
    """--plugin FILE: the policy it registers reaches the workers (imported there, by absolute path,
    before the settings that name its config class arrive). The plug-in is docs/extending.md's."""
    pytest.importorskip("ray")
    import re

    doc = (REPO / "docs" / "extending.md").read_text()
    (tmp_path / "every_other.py").write_text(re.findall(r"```python\n(.*?)```", doc, flags=re.S)[0])
    out = tmp_path / "plugin.jsonl"
    proc = subprocess.run([sys.executable, "-m", "memstream", "eval", annotations, "--video-root", str(ASSETS),
                           "--out", str(out), *FAST, "--limit", "2", "--plugin", "every_other.py",
                           "--policy", "every-other", "--stride", "3", "--ray", "--workers", "2"],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = by_key(out)
    assert sorted(records) == [k for k in KEYS if k[0] in ("mc", "rvs")]
    assert {(r["settings"]["policy"], r["settings"]["stride"]) for r in records.values()} == {("every-other", 3)}

@pytest.mark.slow
def test_without_ray_flag_ray_is_not_imported(env, annotations, tmp_path):
    code = ("import sys; from memstream.cli import main; "
            f"rc = main(['eval', {annotations!r}, '--video-root', {str(ASSETS)!r}, '--limit', '1', "
            "'--tokens-per-frame', '16', '--max-new-tokens', '2', '--no-progress']); "
            "print('ray imported' if 'ray' in sys.modules else 'ray not imported'); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "ray not imported"


# ---------------------------------------------------------------- bad input: one sentence, exit 2


def assert_one_sentence(code: int, stdout: str, stderr: str, *words: str) -> None:
    assert code == 2 and stdout == "", stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and stderr.rstrip().endswith("."), stderr
    for word in words:
        assert word in stderr, stderr


@pytest.mark.parametrize("flags, words", [
    (["--ray", "--workers", "0"], ["--workers must be at least 1, got 0"]),
    (["--workers", "2"], ["--workers needs --ray"]),
    (["--ray", "127.0.0.1:1"], ["No Ray cluster answers at 127.0.0.1:1", "ray start --head"]),
    (["--ray", "headnode"], ["is not an address"]),
])
def test_bad_ray_flags_are_one_sentence(flags, words, env, annotations, tmp_path, capsys):
    pytest.importorskip("ray")
    code, stdout, stderr = run_cli(capsys, annotations, "--video-root", str(ASSETS), "--out",
                                   str(tmp_path / "x.jsonl"), *FAST, *flags)
    assert_one_sentence(code, stdout, stderr, *words)
    assert not (tmp_path / "x.jsonl").exists()


def test_ray_flag_without_ray_installed_is_one_sentence(env, annotations, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as if not installed
    code, stdout, stderr = run_cli(capsys, annotations, "--video-root", str(ASSETS), *FAST, "--ray")
    assert_one_sentence(code, stdout, stderr, "--ray needs Ray, which is not installed", "memstream[ray]")


@pytest.mark.slow
def test_more_workers_than_the_cluster_has_is_one_sentence(cluster, annotations, tmp_path, capsys):
    code, stdout, stderr = run_cli(capsys, annotations, "--video-root", str(ASSETS), "--out",
                                   str(tmp_path / "x.jsonl"), *FAST, "--ray", "--workers", "3")
    assert_one_sentence(code, stdout, stderr, "--workers 3 needs 3 CPUs but the Ray cluster has 2",
                        "--workers 2 or fewer")
    assert not (tmp_path / "x.jsonl").exists()
