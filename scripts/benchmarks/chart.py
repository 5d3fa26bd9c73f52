"""Draw BENCHMARKS.md's chart from `bench ... --json` result lines: ingest cost and TTFT against
stream length, one line per policy.

    python scripts/benchmarks/chart.py scripts/benchmarks/results.jsonl scripts/benchmarks/chart.png

Plotly draws it; kaleido (requirements-dev.txt) renders the static PNG through a headless
Chrome/Chromium (on Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from tables import label

COLOURS = {"full": "#d62728", "rekv": "#1f77b4", "offline": "#7f7f7f", "memstream": "#2ca02c", "hermes": "#9467bd",
           "sink-window": "#ff7f0e"}


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def block_minutes(block: float, fps: float = 1.0) -> float:
    """Stream time (minutes) at the end of block `block`: two frames per block."""
    return (block + 1) * 2 / fps / 60


def figure(results: list[dict]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "Ingest: cost per block as the stream grows", "Time to first token after M minutes"))
    for r in (r for r in results if r.get("bench") == "ingest"):
        xs = [block_minutes(b) for b, _ in r["curve"]]
        ys = [s * 1000 for _, s in r["curve"]]
        name = (f"ingest {r['policy']}, {r['tokens_per_block']} tokens/block, window {r['window_tokens']} "
                f"(last/first {r['ratio']:.2f})")
        # runs of one policy with another budget or window stay apart
        dash = "dot" if r["window_tokens"] < 15000 else "solid" if r["tokens_per_block"] < 200 else "dash"
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name,
                                 line={"color": COLOURS.get(r["policy"]), "dash": dash}), row=1, col=1)
    ttft: dict[str, list[dict]] = defaultdict(list)
    for r in (r for r in results if r.get("bench") == "ttft"):
        name = label(r)
        if all(other["minutes"] != r["minutes"] for other in ttft[name]):  # a policy in two runs: the first
            ttft[name].append(r)
    for policy, rows in ttft.items():
        rows.sort(key=lambda r: r["minutes"])
        ys = [r["ttft_s"] * 1000 for r in rows]
        fig.add_trace(go.Scatter(
            x=[r["minutes"] for r in rows], y=ys, mode="lines+markers", name=f"TTFT {policy}",
            line={"color": COLOURS.get(policy.split()[0]),
                  "dash": "dot" if policy == "offline" or policy not in COLOURS else "solid"},
            error_y={"type": "data", "symmetric": False,
                     "array": [r["ttft_minmax_s"][1] * 1000 - y for r, y in zip(rows, ys)],
                     "arrayminus": [y - r["ttft_minmax_s"][0] * 1000 for r, y in zip(rows, ys)]}), row=1, col=2)
    fig.update_xaxes(title_text="stream length (minutes at 1 fps)", row=1, col=1)
    fig.update_xaxes(title_text="stream length (minutes at 1 fps)", row=1, col=2)
    fig.update_yaxes(title_text="ms per block (median of each 5% of the stream)", row=1, col=1)
    fig.update_yaxes(title_text="ms to first token (median, min-max bars)", type="log", row=1, col=2)
    fig.update_layout(template="plotly_white", width=1200, height=520, legend={"orientation": "h", "y": -0.22})
    return fig


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path("scripts/benchmarks/results.jsonl")
    dst = Path(argv[1]) if len(argv) > 1 else src.with_name("chart.png")
    figure(load(src)).write_image(str(dst))
    print(dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
