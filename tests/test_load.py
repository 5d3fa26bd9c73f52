"""scripts/load.py, briefly: two concurrent sessions drive the demo (served in-process on the tiny model)
through its HTTP API for a few seconds; the report has its structure and no errors. The recorded run
(8 sessions x 10 minutes) is in BENCHMARKS.md."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from demo_server import SAMPLE, start_demo, stop_demo

LOAD = Path(__file__).resolve().parents[1] / "scripts" / "load.py"


@pytest.fixture(scope="module")
def load():
    spec = importlib.util.spec_from_file_location("memstream_load", LOAD)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_two_sessions_for_a_few_seconds(engine, load):
    demo = start_demo(engine, banner="tiny model", max_new_tokens=4)
    try:
        report = load.run_load(demo.url, sessions=2, seconds=6.0, video=SAMPLE, asks=2, server_pid=os.getpid(),
                               rss_every=1.0)
    finally:
        stop_demo(demo)
    assert report["errors"] == 0, report["error_lines"]
    assert report["sessions"] == 2 and report["uploads"] >= 2 and report["answers"] >= 2
    for key in ("ask_latency_s", "ingest_s"):
        lat = report[key]
        assert set(lat) == {"p50", "p90", "p99", "n"} and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert report["ask_latency_s"]["n"] == report["answers"]
    assert len(report["rss_mb"]) >= 3 and all(mb > 50 for _, mb in report["rss_mb"])
    assert [t for t, _ in report["rss_mb"]] == sorted(t for t, _ in report["rss_mb"])
    summary = report["rss_summary"]
    assert summary["peak_mb"] >= summary["end_mb"] > 0 and "growth_after_warmup_mb" in summary
    text = load.format_report(report)
    assert "0 errors" in text and "p50" in text and "server RSS" in text


def test_percentiles_by_nearest_rank(load):
    assert load.percentiles([]) == {"p50": None, "p90": None, "p99": None, "n": 0}
    xs = [float(i) for i in range(1, 101)]  # 1..100: the q-th percentile is q itself
    assert load.percentiles(xs) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "n": 100}
    assert load.percentiles([3.0]) == {"p50": 3.0, "p90": 3.0, "p99": 3.0, "n": 1}
