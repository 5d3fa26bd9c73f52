"""The GPU check's Python part (`bench device`, run by scripts/device_check.sh) in its CPU dry-run mode:
the same oracles, ingest and TTFT code on the tiny presets of both families, in fp32."""

from __future__ import annotations

import argparse
import json


def test_device_check_dry_run_writes_its_tables(tmp_path, tiny_cache, monkeypatch):
    from memstream.bench import device

    monkeypatch.setenv("MEMSTREAM_CACHE", str(tiny_cache))
    args = argparse.Namespace(out=str(tmp_path), tiny=True, blocks=2, minutes="0.1,0.2", json=True)
    assert device.run(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "device_check.jsonl").read_text().splitlines()]
    oracles = {r["model"]: r for r in rows if r["check"] == "oracles"}
    assert set(oracles) == {"tiny-qwen2.5-vl", "tiny-smolvlm2"}
    for r in oracles.values():  # fp32: the suite's own oracle bound holds
        assert r["ok"] and r["full_vs_forward"] <= 1e-4 and r["rekv_vs_full"] <= 1e-4 and r["same_token"]
    ttft = [r for r in rows if r["check"] == "ttft"]
    assert {(r["model"], r["policy"], r["minutes"]) for r in ttft} == {
        (m, p, t) for m in oracles for p in device.TINY_POLICIES for t in (0.1, 0.2)}
    assert all(r["ttft_s"] > 0 for r in ttft)
    synthetic = [r for r in ttft if r["memory"] == "synthetic" and r["model"] == "tiny-smolvlm2"]
    assert {r["blocks"] for r in synthetic if r["minutes"] == 0.2} == {1 + 12}  # 12 s of 1-frame blocks + the first
    table = (tmp_path / "device_check.md").read_text()
    assert "| tiny-smolvlm2 | hermes |" in table and "TTFT 0.2 min (s)" in table
