"""The temporal-bias view (pure: traces in, Plotly figures out; no gradio here).

`session_figure`: ρ(score, time) of the internal and of the fused scores for every answer of the
session, per policy: does retrieval keep preferring late blocks, question after question?

`drift_figure`: one question asked at several stream times (the probe, `probe.py`). Top: ρ against
the time asked. Below, one panel per score: a row per time asked, each block's score normalised within
the row; as the stream grows, a recency-biased ranking keeps its bright cells at the row's right end,
the picture MemStream draws for temporal bias.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .heatmap import COLORSCALE, normalise

COLORS = {"internal": "#4f6bed", "fused": "#e4572e"}


def _rho(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def session_points(answers: list) -> dict[str, dict[str, list]]:
    """{policy: {"n": answer numbers, "internal": ρ, "fused": ρ or None (no fused score)}} of `answers`:
    (number, policy, trace) triples in the order asked."""
    out: dict[str, dict[str, list]] = {}
    for n, policy, trace in answers:
        d = out.setdefault(policy, {"n": [], "internal": [], "fused": []})
        d["n"].append(n)
        d["internal"].append(_rho(trace.bias.get("internal")))
        d["fused"].append(_rho(trace.bias.get("fused")) if trace.ranking in ("fused", "external") else None)
    return out


def session_figure(answers: list, height: int = 300) -> go.Figure:
    """ρ of internal (solid) and fused (dashed) scores for every answer; `answers` as in `session_points`."""
    fig = go.Figure()
    dashes = ["solid", "dot", "dash", "longdash"]
    for i, (policy, d) in enumerate(session_points(answers).items()):
        for score in ("internal", "fused"):
            if all(v is None for v in d[score]):
                continue
            fig.add_trace(go.Scatter(
                x=d["n"], y=d[score], mode="lines+markers", name=f"{policy} · {score}",
                line=dict(color=COLORS[score], dash=dashes[i % len(dashes)]),
                hovertemplate=f"answer #%{{x}}<br>{policy} {score} ρ = %{{y:+.2f}}<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="#999", width=1))
    fig.update_layout(
        title=dict(text="temporal bias of every answer: ρ(score, time) > 0 = later blocks score higher",
                   font=dict(size=13), x=0.01, xanchor="left"),
        xaxis=dict(title="answer #", dtick=1), yaxis=dict(title="ρ", range=[-1.05, 1.05]),
        height=height, margin=dict(l=60, r=20, t=50, b=40), template="plotly_white",
        legend=dict(orientation="h", y=-0.25))
    return fig


def drift_figure(points: list, question: str = "", height: int = 560) -> go.Figure:
    """The probe's picture; `points`: (time asked in s, trace) pairs in time order."""
    has_fused = any(tr.ranking in ("fused", "external") for _, tr in points)
    scores = ["internal"] + (["fused"] if has_fused else [])
    fig = make_subplots(rows=1 + len(scores), cols=1, vertical_spacing=0.14,
                        row_heights=[0.3] + [0.7 / len(scores)] * len(scores),
                        subplot_titles=[""] + [f"{s} score per block, one row per time asked (rows normalised)"
                                               for s in scores])
    asked = [t for t, _ in points]
    for score in scores:
        fig.add_trace(go.Scatter(
            x=asked, y=[_rho(tr.bias.get(score)) for _, tr in points], mode="lines+markers", name=f"ρ {score}",
            line=dict(color=COLORS[score]), hovertemplate=f"asked at %{{x:.1f}} s<br>ρ {score} = %{{y:+.2f}}"
                                                          "<extra></extra>"), row=1, col=1)
    fig.add_hline(y=0, line=dict(color="#999", width=1), row=1, col=1)
    times = np.unique(np.concatenate([np.asarray(tr.block_times, dtype=np.float64) for _, tr in points])) \
        if points else np.zeros(0)
    for r, score in enumerate(scores, start=2):
        z = np.full((len(points), len(times)), np.nan)
        for i, (_, tr) in enumerate(points):
            row = normalise(tr.fused if score == "fused" else tr.internal_agg)
            cols = np.searchsorted(times, np.asarray(tr.block_times, dtype=np.float64))
            z[i, cols] = row
        fig.add_trace(go.Heatmap(x=times, y=asked, z=z, coloraxis="coloraxis", name=score,
                                 hovertemplate="block at %{x:.1f} s<br>asked at %{y:.1f} s<br>"
                                               + score + " %{z:.2f}<extra></extra>"), row=r, col=1)
        fig.update_yaxes(title_text="asked at (s)", row=r, col=1)
    fig.update_xaxes(title_text="time asked (s)", row=1, col=1)
    fig.update_xaxes(title_text="block time (s)", row=1 + len(scores), col=1)
    fig.update_yaxes(title_text="ρ", range=[-1.05, 1.05], row=1, col=1)
    q = question if len(question) <= 50 else question[:49] + "…"
    fig.update_annotations(font_size=12)
    fig.update_layout(title=dict(text=f"bias drift · “{q}”<br><span style='font-size:11px'>top: ρ(score, time) "
                                      "at each time asked (> 0 = later blocks score higher)</span>",
                                 font=dict(size=13), x=0.01, xanchor="left"),
                      coloraxis=dict(colorscale=COLORSCALE, cmin=0, cmax=1,
                                     colorbar=dict(title="score", thickness=12, len=0.5, y=0.3)),
                      height=height, margin=dict(l=60, r=20, t=80, b=40), template="plotly_white",
                      showlegend=True, legend=dict(orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom"))
    return fig
