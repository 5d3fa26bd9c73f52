"""`bench device`: the GPU check (`scripts/device_check.sh` runs it): real 7B-class shapes, every family.

For each model, a random-weight model at the real checkpoint's full depth is built directly on the device in
bf16 (no checkpoint is written), then:

1. Oracles in bf16: a `full` stream's first logits against one stock forward over the same sequence
   (`Engine.reference_answer`), and `rekv` retrieving everything against `full`, on an odd number of frames.
   bf16 rounds every layer's output to 8 bits of mantissa, and streaming adds in a different order than one
   forward, so the check is relative: max |Δlogit| <= TOLERANCE x max |logit| and the same greedy token.
2. Ingest blocks/s (vision tower + decoder) for rekv, memstream-internal (memstream's AKS without an
   external expert) and hermes, from the start of a stream.
3. TTFT after 10 and 60 minutes. rekv and memstream-internal: a synthetic memory of that length (what
   their ingestion leaves, random keys and values, built through the memory's own `commit`), then real
   questions. hermes holds at most `budget` tokens per layer whatever the length, so its TTFT is measured
   once its budget is full, after real ingestion, and stands for both lengths.

`--tiny` runs the same code on the tiny presets on the CPU in fp32 (the test suite does), in seconds.

    python -m memstream bench device --out DIR        # on a CUDA machine; writes DIR/device_check.md and .jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones import FAMILIES, PRESETS
from ..engine import Engine
from ..policies.base import BlockInfo, IngestCache
from .common import SyntheticVideo, emit, machine

TOLERANCE = 2e-2  # bf16: relative max |Δlogit| (fp32 --tiny runs meet 1e-4 as the suite's oracles do)
POLICIES = {"rekv": {}, "memstream-internal": {}, "hermes": {}}  # policy -> options (defaults: the papers')
TINY_POLICIES = {"rekv": {}, "memstream-internal": {}, "hermes": {"budget": 64, "chunk_frames": 4}}
# name -> (preset of the real shapes, real decoder layers, real vision layers)
MODELS = {"qwen2.5-vl-7b": ("small-7b", 28, 32), "smolvlm2-2.2b": ("small-smolvlm2-2.2b", 24, 27)}
# Layer shapes that differ from a preset's (Qwen3-VL-8B's from qwen3_vl.REAL_SHAPES: small-qwen3-vl is 2B).
SHAPES = {"small-qwen3-vl": ("8B", dict(hidden_size=4096, intermediate_size=12288, num_attention_heads=32,
                                        num_key_value_heads=8),
                             dict(hidden_size=1152, intermediate_size=4304, out_hidden_size=4096,
                                  deepstack_visual_indexes=[8, 16, 24]))}
TINY_MODELS = {"tiny-qwen2.5-vl": ("tiny", 2, 2), "tiny-smolvlm2": ("tiny-smolvlm2", 2, 2)}
QUESTION = "What happened just before the end?"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("device", help="GPU check: oracles in bf16, ingest blocks/s, TTFT at 10/60 min, 7B shapes")
    p.add_argument("--out", default="device_results", help="directory for device_check.md and device_check.jsonl")
    p.add_argument("--tiny", action="store_true", help="tiny presets on the CPU in fp32 (a dry run of the code)")
    p.add_argument("--blocks", type=int, default=16, help="blocks timed for ingest blocks/s")
    p.add_argument("--minutes", default="10,60", help="stream lengths for TTFT, comma separated")
    p.add_argument("--json", action="store_true", help="print one JSON object per figure")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = check_all(tiny=args.tiny, blocks=args.blocks, minutes=[float(m) for m in args.minutes.split(",")],
                     log=print)
    (out / "device_check.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "device_check.md").write_text(markdown(rows))
    print(markdown(rows))
    return emit({"bench": "device", "rows": len(rows), "out": str(out)}, args.json)


def models(tiny: bool, log=print) -> dict[str, tuple[str, int, int]]:
    """The models to check; Qwen3-VL-8B when its family is registered with an 8B-shaped preset."""
    chosen = dict(TINY_MODELS if tiny else MODELS)
    if tiny:
        return chosen
    if "qwen3_vl" in FAMILIES and "small-qwen3-vl" in PRESETS:
        chosen["qwen3-vl-8b"] = ("small-qwen3-vl", 36, 27)
    else:
        log("skipped Qwen3-VL-8B: the qwen3_vl family (preset small-qwen3-vl) is not registered")
    return chosen


def build_engine(preset_name: str, layers: int, vision_layers: int, device: str, dtype: torch.dtype) -> Engine:
    """A random-weight model of `preset_name`'s shapes at the given depths, built on `device` in `dtype`."""
    family = PRESETS[preset_name]
    preset = family.presets[preset_name]
    depth_key = "depth" if "depth" in preset.vision else "num_hidden_layers"
    _, text, vision = SHAPES.get(preset_name, ("", {}, {}))
    full = dataclasses.replace(preset, text=dict(preset.text, **text, num_hidden_layers=layers),
                               vision=dict(preset.vision, **vision, **{depth_key: vision_layers}))
    tokenizer = family.make_tokenizer()
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = family.build_model(full, tokenizer)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype)
    return Engine(family.backbone(model, tokenizer, torch.device(device), preset_name))


def check_all(tiny: bool, blocks: int, minutes: list[float], log=print) -> list[dict[str, Any]]:
    device, dtype = ("cpu", torch.float32) if tiny else ("cuda", torch.bfloat16)
    rows = []
    for label, (preset, layers, vision_layers) in models(tiny, log).items():
        t0 = time.perf_counter()
        engine = build_engine(preset, layers, vision_layers, device, dtype)
        log(f"{label}: built in {time.perf_counter() - t0:.1f} s")
        tpf = engine.backbone.spec.default_tokens_per_frame
        if tiny:
            tpf = 16
        rows.append({"model": label, "check": "oracles", **oracles(engine, tpf)})
        for policy, options in (TINY_POLICIES if tiny else POLICIES).items():
            rows.append({"model": label, "check": "ingest", "policy": policy,
                         **ingest_rate(engine, policy, options, tpf, blocks)})
            for m in minutes:
                rows.append({"model": label, "check": "ttft", "policy": policy, "minutes": m,
                             **ttft(engine, policy, options, tpf, m)})
        for r in rows:
            r.setdefault("device", device)
        log(json.dumps(rows[-1]))
        del engine
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def sync(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize()


def frames(n: int, start: int = 0) -> np.ndarray:
    return SyntheticVideo().frames(start, n)


def oracles(engine: Engine, tpf: int) -> dict[str, Any]:
    """Streaming `full` vs one stock forward, and `rekv` with everything retrieved vs `full` (relative)."""
    n = 5 if engine.backbone.spec.frames_per_block == 1 else 7  # odd either way; a 2-frame block pads the last
    video, times = frames(n), [float(i) for i in range(n)]
    full = engine.stream(policy="full", tokens_per_frame=tpf)
    full.add_frames(video, times)
    full.flush()
    got = full.ask(QUESTION, max_new_tokens=1)
    ref = engine.reference_answer(video, times, QUESTION, tokens_per_frame=tpf)
    rekv = engine.stream(policy="rekv", tokens_per_frame=tpf, topk=10**4, n_local=10**7)
    rekv.add_frames(video, times)
    rekv.flush()
    every = rekv.ask(QUESTION, max_new_tokens=1)
    scale = ref.first_logits.abs().max().item()
    d_full = (got.first_logits - ref.first_logits).abs().max().item()
    d_rekv = (every.first_logits - got.first_logits).abs().max().item()
    return {"full_vs_forward": d_full / scale, "rekv_vs_full": d_rekv / scale, "tolerance": TOLERANCE,
            "same_token": got.token_ids == ref.token_ids == every.token_ids,
            "ok": d_full / scale <= TOLERANCE and d_rekv / scale <= TOLERANCE}


def ingest_rate(engine: Engine, policy: str, options: dict, tpf: int, blocks: int) -> dict[str, Any]:
    """Blocks/s of real ingestion (vision + decoder) over `blocks` blocks after one warm-up block."""
    per = engine.backbone.spec.frames_per_block
    stream = engine.stream(policy=policy, tokens_per_frame=tpf, **options)
    stream.add_frames(frames(per), [float(i) for i in range(per)])
    sync(engine)
    video = frames(per * blocks, per)
    t0 = time.perf_counter()
    for i in range(blocks):
        stream.add_frames(video[per * i: per * (i + 1)], [float(per * (i + 1) + j) for j in range(per)])
    sync(engine)
    seconds = time.perf_counter() - t0
    return {"blocks": blocks, "blocks_per_s": blocks / seconds, "tokens_per_frame": tpf}


def ttft(engine: Engine, policy: str, options: dict, tpf: int, minutes: float, questions: int = 3) -> dict[str, Any]:
    """Median TTFT (one-token answers, after a warm-up question) after `minutes` of 1-fps video."""
    bb = engine.backbone
    per = bb.spec.frames_per_block
    stream = engine.stream(policy=policy, tokens_per_frame=tpf, **options)
    stream.add_frames(frames(per), [float(i) for i in range(per)])
    if policy == "hermes":  # bounded memory: fill the budget (and compress once) with real blocks
        budget = stream.memory.cfg.budget
        need = budget // stream.memory.blocks[0].n_tokens + stream.memory.chunk_blocks + 1
        for i in range(need):
            stream.add_frames(frames(per, per * (i + 1)), [float(per * (i + 1) + j) for j in range(per)])
        filled = "real, budget full"
    else:
        fill_synthetic(stream, int(minutes * 60) // per)
        filled = "synthetic"
    seconds = []
    for i in range(questions + 1):
        sync(engine)
        t0 = time.perf_counter()
        stream.ask(QUESTION, max_new_tokens=1)
        sync(engine)
        if i:
            seconds.append(time.perf_counter() - t0)
    return {"ttft_s": float(np.median(seconds)), "blocks": stream.stats()["blocks"], "memory": filled}


def fill_synthetic(stream, n_blocks: int) -> None:
    """Append `n_blocks` blocks through the memory's own `commit` (window, AKS, store, representative keys),
    with random keys and values in place of an ingest forward's."""
    mem, bb = stream.memory, stream.engine.backbone
    spec = bb.spec
    last = mem.blocks[-1]
    n = last.n_tokens
    for _ in range(n_blocks):
        _, t_off = mem.positions.block(*last.grid, *last.text_rows)  # positions advanced as an ingest would
        cache = IngestCache(spec.n_layers, lambda layer: None)
        for layer in range(spec.n_layers):
            k, v = (torch.randn(1, spec.n_kv_heads, n, spec.head_dim, device=bb.device, dtype=bb.dtype)
                    for _ in range(2))
            cache.new[layer] = (k, v)
            cache.keys_free[layer] = k[0].transpose(0, 1)  # [n, Hkv, d]
        t = mem.blocks[-1].times[-1] + spec.frames_per_block
        mem.commit(cache, BlockInfo(len(mem.blocks), (t,), n, t_off, last.grid, last.token_index, last.text_rows))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The figures as markdown tables, for BENCHMARKS.md."""
    lines = [f"Device: {machine().get('gpu') or machine().get('cpu', '')}", "",
             "| model | full vs one forward | rekv (all) vs full | same token | ok |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['full_vs_forward']:.2e} | {r['rekv_vs_full']:.2e} | {r['same_token']} | {r['ok']} |"
              for r in rows if r["check"] == "oracles"]
    lines += ["", "| model | policy | ingest blocks/s | " + " | ".join(
        f"TTFT {m:g} min (s)" for m in sorted({r['minutes'] for r in rows if r['check'] == 'ttft'})) + " |"]
    minutes = sorted({r["minutes"] for r in rows if r["check"] == "ttft"})
    lines.append("|---|---|---|" + "---|" * len(minutes))
    for r in rows:
        if r["check"] != "ingest":
            continue
        t = {x["minutes"]: x["ttft_s"] for x in rows if x["check"] == "ttft" and x["model"] == r["model"]
             and x["policy"] == r["policy"]}
        lines.append(f"| {r['model']} | {r['policy']} | {r['blocks_per_s']:.2f} | "
                     + " | ".join(f"{t.get(m, float('nan')):.3f}" for m in minutes) + " |")
    return "\n".join(lines) + "\n"
