"""The retrieval heatmap: a `RetrievalTrace` drawn as a Plotly figure (pure: no gradio here).

Top panel, one row per score (each min-max normalised over the blocks so rows are comparable):
`internal` (the layer average of the KV-cache scores), `external` (the expert's, only when the
trace has one) and `fused` (drawn only when the trace says the fused score chose the blocks,
`trace.ranking`). Above the rows, a marker over every block the question was given, sized by how
many layers had it, and named by `trace.selection`: "retrieved", "held" (a memory that keeps tokens
and retrieves nothing) or "attended" (a fixed window). Bottom panel: the internal score of every
layer (layers x time, each layer normalised), with each layer's blocks marked; when the trace has
`kept` counts, it shows how many of each block's tokens every layer still holds instead, so the map
is what the memory retains over time. Nothing here knows a policy by name.

The x axis is each block's start time in seconds. The title carries the temporal bias: Spearman's
rho between block time and score, for the internal and the fused scores (positive = later blocks
score higher). Hover shows the time, the normalised and raw score and the rank (1 = best).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from memstream import fusion

COLORSCALE = "Viridis"
MARK_COLOR = "#e4572e"


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def normalise(x) -> np.ndarray:
    """Min-max scale a score vector to [0, 1]; a constant vector becomes all zeros."""
    x = _np(x)
    if x.size == 0:
        return x
    lo, hi = float(np.min(x)), float(np.max(x))
    return (x - lo) / max(hi - lo, 1e-12)


def ranks(x) -> np.ndarray:
    """1-based descending ranks (1 = highest score), ties sharing the better rank: the ranks rank
    fusion uses (`memstream.fusion.ranks`), so the hover shows what the fusion saw."""
    return fusion.ranks(torch.as_tensor(_np(x))).numpy()


@dataclass
class Row:
    name: str  # "internal" | "external" | "fused"
    raw: np.ndarray  # [N] the trace's scores
    norm: np.ndarray  # [N] min-max normalised
    rank: np.ndarray  # [N] 1 = best


def score_rows(trace) -> list[Row]:
    """The rows of the top panel, in drawing order (top to bottom): internal, external?, fused? (only
    when the fused score is what ranked the blocks)."""
    out = [("internal", trace.internal_agg)]
    if trace.external is not None:
        out.append(("external", trace.external))
    if getattr(trace, "ranking", "internal") == "fused":
        out.append(("fused", trace.fused))
    return [Row(name, _np(v), normalise(v), ranks(v)) for name, v in out]


def fmt_rho(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.2f}"


def bias_text(trace) -> str:
    """The bias numbers: ρ of the internal score, and of the score that ranked the blocks when that is
    another one (the fused, or the external alone)."""
    b = trace.bias or {}
    parts = [f"internal {fmt_rho(b.get('internal'))}"]
    ranking = getattr(trace, "ranking", "internal")
    if "fused" in b and ranking in ("fused", "external"):
        parts.append(f"{ranking} {fmt_rho(b.get('fused'))}")
    return "temporal bias ρ(score, time): " + " · ".join(parts)


def natural_height(trace) -> int:
    """The figure's height in px when none is given (compare mode draws both at the larger one)."""
    n_layers = max(1, len(trace.selected))
    return 36 * (len(score_rows(trace)) + 1) + int(np.clip(28 * n_layers, 70, 420)) + 190


def figure(trace, title: str | None = None, height: int | None = None) -> go.Figure:
    """The heatmap of one trace. `title` (e.g. the question) goes before the bias numbers."""
    times = _np(trace.block_times)
    n = len(times)
    rows = score_rows(trace)
    internal = _np(trace.internal)
    if internal.ndim == 1:
        internal = internal[None]
    n_layers = internal.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    for sel in trace.selected:
        counts[_np(sel).astype(np.int64)] += 1

    top_px = 36 * (len(rows) + 1)  # + the row of marks
    layer_px = int(np.clip(28 * n_layers, 70, 420))
    total = height or natural_height(trace)
    kept = getattr(trace, "kept", None)
    word = {"held": "held", "attended": "attended"}.get(getattr(trace, "selection", "retrieved"), "retrieved")
    lower_title = ("tokens each layer holds per block (rows normalised)" if kept is not None
                   else "internal score per layer (rows normalised)")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=60 / total,
                        row_heights=[top_px, layer_px],
                        subplot_titles=("scores per block (rows normalised)", lower_title))
    fig.update_annotations(font_size=12)  # the subplot titles: fit a phone's width

    # -- top: internal / external / fused
    y_top = list(range(len(rows)))[::-1]  # first row drawn on top
    z = np.stack([r.norm for r in rows]) if n else np.zeros((len(rows), 0))
    custom = np.stack([np.stack([r.raw, r.rank], axis=-1) for r in rows]) if n else None
    fig.add_trace(go.Heatmap(
        x=times, y=y_top, z=z, customdata=custom, coloraxis="coloraxis", name="scores",
        text=[[r.name] * n for r in rows],
        hovertemplate="t = %{x:.1f} s<br>%{text}: %{z:.2f} (raw %{customdata[0]:.4g})"
                      "<br>rank %{customdata[1]:.0f} of " + str(n) + "<extra></extra>"), row=1, col=1)
    picked = np.nonzero(counts)[0]
    mark_y = len(rows)
    fig.add_trace(go.Scatter(
        x=times[picked], y=[mark_y] * len(picked), mode="markers", name=word,
        marker=dict(symbol="triangle-down", color=MARK_COLOR, size=8 + 10 * counts[picked] / max(1, n_layers),
                    line=dict(width=0)),
        customdata=np.stack([counts[picked]], axis=-1) if len(picked) else None,
        hovertemplate="t = %{x:.1f} s<br>" + word + " by %{customdata[0]} of " + str(n_layers)
                      + " layers<extra></extra>"), row=1, col=1)
    fig.update_yaxes(tickvals=[*y_top, mark_y], ticktext=[r.name for r in rows] + [word],
                     range=[-0.5, mark_y + 0.6], row=1, col=1)

    # -- bottom: layers x time
    if n and kept is not None:  # tokens held, scaled by each layer's largest count
        held = _np(kept)
        zl = held / np.maximum(held.max(axis=1, keepdims=True), 1)
        custom_l = np.stack([held, internal], axis=-1)
        hover = "t = %{x:.1f} s<br>layer %{y} holds %{customdata[0]:.0f} tokens<br>score %{customdata[1]:.4g}"
    elif n:
        zl = np.stack([normalise(row) for row in internal])
        rl = np.stack([ranks(row) for row in internal])
        custom_l = np.stack([internal, rl], axis=-1)
        hover = ("t = %{x:.1f} s<br>layer %{y}: %{z:.2f} (raw %{customdata[0]:.4g})"
                 "<br>rank %{customdata[1]:.0f} of " + str(n))
    else:
        zl, custom_l, hover = np.zeros((n_layers, 0)), None, ""
    fig.add_trace(go.Heatmap(
        x=times, y=list(range(n_layers)), z=zl, customdata=custom_l, coloraxis="coloraxis", name="layers",
        hovertemplate=hover + "<extra></extra>"), row=2, col=1)
    lx, ly = [], []
    for layer, sel in enumerate(trace.selected):
        idx = _np(sel).astype(np.int64)
        lx.extend(times[idx].tolist())
        ly.extend([layer] * len(idx))
    fig.add_trace(go.Scatter(
        x=lx, y=ly, mode="markers", name=f"{word} in layer",
        marker=dict(symbol="circle-open", color=MARK_COLOR, size=7 if n_layers <= 8 else 4, line=dict(width=2)),
        hovertemplate="t = %{x:.1f} s<br>" + word + " in layer %{y}<extra></extra>"), row=2, col=1)
    step = max(1, int(np.ceil(n_layers / 14)))
    fig.update_yaxes(title_text="layer", autorange="reversed", tickmode="array",
                     tickvals=list(range(0, n_layers, step)), row=2, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)

    # two short lines, so that a narrow plot (a phone, compare mode) does not cut them
    policy = getattr(trace, "policy", "") or ""
    first = " · ".join(x for x in (title, policy) if x)
    fig.update_layout(
        title=dict(text=(f"{first}<br>" if first else "") + f"<span style='font-size:11px'>{bias_text(trace)}</span>",
                   font=dict(size=13), x=0.01, xanchor="left", yref="container", y=1, yanchor="top",
                   pad=dict(t=8)),
        coloraxis=dict(colorscale=COLORSCALE, cmin=0, cmax=1, colorbar=dict(title="score", thickness=10, len=0.8)),
        showlegend=False, margin=dict(l=70, r=10, t=64, b=40),
        height=total,
        template="plotly_white",
    )
    return fig


def figure_data(fig: go.Figure) -> dict:
    """What the figure shows, in plain arrays (for tests and for the API): the normalised rows
    by name, the per-layer matrix, the times and the retrieved marks."""
    top, marks, layers, layer_marks = fig.data[:4]
    names = list(fig.layout.yaxis.ticktext)[:-1]
    return {
        "times": np.asarray(top.x, dtype=np.float64),
        "rows": {name: np.asarray(top.z[i], dtype=np.float64) for i, name in enumerate(names)},
        "raw": {name: np.asarray(top.customdata[i], dtype=np.float64)[:, 0] for i, name in enumerate(names)}
        if top.customdata is not None else {},
        "marks": np.asarray(marks.x, dtype=np.float64),
        "layers": np.asarray(layers.z, dtype=np.float64),
        "layer_marks": list(zip(layer_marks.x, layer_marks.y)),
        "title": fig.layout.title.text,
    }
