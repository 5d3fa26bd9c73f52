"""Print BENCHMARKS.md's tables (Markdown) from `bench ... --json` result lines.

    python scripts/benchmarks/tables.py scripts/benchmarks/results.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def ingest_table(rows: list[dict]) -> list[str]:
    out = ["| policy | tokens/block | blocks | first 10%: median ms/block (min-max) "
           "| last 10%: median ms/block (min-max) | ratio last/first | ratio in probe units "
           "| window tokens at end | load avg | measured |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, lst = r["first_block_minmax_s"], r["last_block_minmax_s"]
        tpb = r["tokens_per_block"]
        tpb = f"{tpb:.0f}" if isinstance(tpb, float) else tpb
        out.append(f"| {r['policy']} | {tpb} | {r['blocks']} "
                   f"| {ms(r['first_block_s'])} ({ms(f[0])}-{ms(f[1])}) "
                   f"| {ms(r['last_block_s'])} ({ms(lst[0])}-{ms(lst[1])}) | {r['ratio']:.3f} "
                   f"| {r.get('ratio_normalised', float('nan')):.3f} | {r['window_tokens']} | {r.get('loadavg', '')} "
                   f"| {r.get('measured', '')} |")
    return out


def label(r: dict) -> str:
    """The policy, with hermes' budget or a retrieval policy's topk when not the default."""
    if r.get("budget") not in (None, 6000):
        return f"{r['policy']} (budget {r['budget']})"
    if r.get("topk") not in (None, 16):
        return f"{r['policy']} (topk {r['topk']})"
    return r["policy"]


def ttft_table(rows: list[dict]) -> list[str]:
    # one table line per run: rows of one interleaved command share a line (their ratios are fair)
    groups: list[dict[str, dict]] = []
    for r in rows:
        run = r.get("interleaved") or [r["policy"]]
        if (not groups or r["policy"] == run[0] or label(r) in groups[-1]
                or next(iter(groups[-1].values()))["minutes"] != r["minutes"]):
            groups.append({})
        groups[-1][label(r)] = r
    policies = sorted({label(r) for r in rows}, key=lambda p: (p == "offline", p))
    head = " | ".join(f"{p}: median ms (min-max) · tokens held" for p in policies)
    others = [p for p in policies if p != "offline"]
    ratio_head = " | ".join(f"offline / {p}" for p in others)
    out = [f"| minutes | blocks | video tokens | {head} | {ratio_head} | load avg | measured |",
           "|---|---|---|" + "---|" * len(policies) + "---|" * len(others) + "---|---|"]
    for cells in sorted(groups, key=lambda g: next(iter(g.values()))["minutes"]):
        minutes = next(iter(cells.values()))["minutes"]
        any_row = cells.get("full") or cells.get("offline") or next(iter(cells.values()))
        vals = []
        for p in policies:
            r = cells.get(p)
            lo, hi = r["ttft_minmax_s"] if r else (0, 0)
            vals.append("" if r is None else f"{ms(r['ttft_s'])} ({ms(lo)}-{ms(hi)}) · {r['video_tokens']} tok")
        ratios = []
        for p in others:
            if "offline" in cells and p in cells:
                ratios.append(f"{cells['offline']['ttft_s'] / cells[p]['ttft_s']:.0f}x")
            else:
                ratios.append("")
        out.append(f"| {minutes:g} | {any_row['blocks']} | {any_row['video_tokens']} | " + " | ".join(vals)
                   + " | " + " | ".join(ratios) + f" | {any_row.get('loadavg', '')} | {any_row.get('measured', '')} |")
    return out


def efficiency_table(rows: list[dict]) -> list[str]:
    out = ["| model | device | threads | blocks/call | GFLOP/block | ms/block median (min-max) | achieved TFLOP/s "
           "| matmul peak TFLOP/s | **MFU** (per call vs probe) | MFU (global) | vision MFU | decoder MFU | load avg "
           "| measured |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for d in r["devices"]:
            b = d["block_minmax_s"]
            out.append(f"| {r['model']} | {d['device']} | {r['machine']['torch_threads']} | {d['blocks_per_call']} "
                       f"| {d['gflop_per_block']:.1f} | {ms(d['block_s'])} ({ms(b[0])}-{ms(b[1])}) "
                       f"| {d['achieved_tflops']:.3f} | {d['peak_tflops']:.3f} | **{d['mfu']:.0%}** "
                       f"| {d['mfu_global']:.0%} | {d['mfu_vision']:.0%} | {d['mfu_decoder']:.0%} "
                       f"| {r.get('loadavg', '')} | {r.get('measured', '')} |")
    return out


def memory_table(rows: list[dict]) -> list[str]:
    out = ["| model | policy | tokens/frame | tokens/block | KV bytes/block (analytic) | host bytes/block at "
           "each length | device bytes/block | marginal host bytes/block | peak GPU bytes at each length | measured |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for row in r["rows"]:
            at = row["at"]
            host = " / ".join(f"{a['bytes_cpu_per_block']:.0f} @{a['blocks']}" for a in at)
            dev = " / ".join(f"{a['bytes_gpu_per_block']:.0f}" for a in at)
            peak = " / ".join("n/a (CPU)" if a["peak_gpu_bytes"] is None else str(a["peak_gpu_bytes"]) for a in at)
            tpb, kv = row["tokens_per_block"], row["kv_bytes_per_block"]
            out.append(f"| {r['model']} | {row['policy']} | {row['tokens_per_frame']} | {tpb:.4g} "
                       f"| {kv:.0f} | {host} | {dev} | {row['marginal_cpu_bytes_per_block']:.0f} "
                       f"| {peak} | {r.get('measured', '')} |")
    return out


def compression_table(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        window = r["options"].get("n_local", "15000 (default)")
        out += [f"{r['model']}, {Path(r['video']).name} at {r['fps']:g} fps, {r['blocks']} blocks, window {window}, "
                f"threshold {r['compress_threshold']}, load avg {r.get('loadavg', '')}"
                + (f", measured {r['measured']}" if r.get("measured") else "") + ":", "", r["markdown"], ""]
    return out


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path("scripts/benchmarks/results.jsonl")
    results = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    for title, bench, make in (("Ingest", "ingest", ingest_table), ("TTFT", "ttft", ttft_table),
                               ("Efficiency", "efficiency", efficiency_table), ("Memory", "memory", memory_table),
                               ("Compression", "compression", compression_table)):
        rows = [r for r in results if r.get("bench") == bench]
        if rows:
            print(f"### {title}\n")
            print("\n".join(make(rows)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
