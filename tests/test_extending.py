"""docs/extending.md: its plug-in example runs exactly as written, and a policy registered outside the
package works in the CLI (ask, bench, eval) like a built-in one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "extending.md"
SAMPLE = ROOT / "assets" / "sample.mp4"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """The doc's first block, saved as the file the doc names."""
    folder = tmp_path_factory.mktemp("plugin")
    path = folder / "every_other.py"
    path.write_text(python_blocks()[0])
    return path


def test_the_docs_example_runs_as_written(plugin, tiny_cache):
    script = python_blocks()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin.parent), str(ROOT)]),
           "MEMSTREAM_CACHE": str(tiny_cache)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    selected = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(selected) == 3 and all(b % 2 == 0 for b in selected)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from memstream import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_plugin_policy_in_ask_bench_and_eval(plugin, tiny_cache, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    code, out, err = run_cli(capsys, "ask", str(SAMPLE), "What is moving?", "--plugin", str(plugin),
                             "--policy", "every-other", "--stride", "3", "--topk", "2", "--tokens-per-frame", "16",
                             "--fps", "2", "--max-new-tokens", "2", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["policy"] == "every-other"
    assert all(b % 3 == 0 for layer in result["trace"]["selected"] for b in layer)
    # its option is a flag like any other, and belongs to it alone
    code, out, err = run_cli(capsys, "ask", str(SAMPLE), "q?", "--plugin", str(plugin), "--policy", "rekv",
                             "--stride", "3")
    assert code == 2 and "'every-other'" in err and "Traceback" not in err
    code, out, err = run_cli(capsys, "bench", "ttft", "--plugin", str(plugin), "--policy", "rekv,every-other",
                             "--stride", "2", "--minutes", "0.1", "--questions", "1", "--threads", "1", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["policy"] for r in rows] == ["rekv", "every-other"]
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps([{"video_id": "s", "video_path": str(SAMPLE), "duration": 8.0,
                                        "conversations": [{"question": "What moves?", "answer": "a square"}]}]))
    code, out, err = run_cli(capsys, "eval", str(annotations), "--plugin", str(plugin), "--policy", "every-other",
                             "--tokens-per-frame", "16", "--max-new-tokens", "2", "--no-progress", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["settings"]["stride"] == 2


def test_a_plugin_that_cannot_load_is_one_sentence(capsys, tmp_path):
    code, _, err = run_cli(capsys, "ask", "x.mp4", "q?", "--plugin", str(tmp_path / "missing.py"))
    assert code == 2 and err.startswith("error: Plug-in") and err.count("\n") == 1
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    code, _, err = run_cli(capsys, "ask", "x.mp4", "q?", "--plugin", str(broken))
    assert code == 2 and "boom" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_plugin_policy_runs_in_a_worker_process(plugin, tiny_cache):
    """The worker process loads the plug-ins this process loaded, so their policies unpickle there."""
    import numpy as np

    import memstream
    from memstream.plugins import load_plugin, loaded_plugins

    load_plugin(str(plugin))
    assert str(plugin.resolve()) in loaded_plugins()
    engine = memstream.load("tiny", device="cpu", cache_dir=str(tiny_cache), worker_process=True)
    try:
        stream = engine.stream(policy="every-other", stride=2, topk=2, tokens_per_frame=8, fps=1.0)
        stream.add_frames(np.zeros((6, 32, 32, 3), np.uint8), np.arange(6.0))
        assert stream.ask("What?", max_new_tokens=2).trace.selected
    finally:
        engine.close()
