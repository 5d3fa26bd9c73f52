"""The demo's heatmap figure shows exactly the trace: rows, times, retrieved marks, bias numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memstream.trace import RetrievalTrace
from memstream_demo import heatmap


def minmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x - x.min()) / max(x.max() - x.min(), 1e-12)


def make_trace(n=10, layers=4, external=False, seed=0) -> RetrievalTrace:
    g = torch.Generator().manual_seed(seed)
    times = torch.arange(n, dtype=torch.float32) * 2.0 + 0.5
    internal = torch.randn(layers, n, generator=g)
    selected = [torch.sort(torch.randperm(n, generator=g)[:3]).values for _ in range(layers)]
    ext = torch.rand(n, generator=g) if external else None
    fused = torch.rand(n, generator=g) if external else None
    return RetrievalTrace.build(times, internal, selected, external=ext, fused=fused, policy="rekv")


def test_internal_only_figure_equals_trace():
    tr = make_trace()
    data = heatmap.figure_data(heatmap.figure(tr, title="What moved?"))
    np.testing.assert_allclose(data["times"], tr.block_times.numpy())
    assert list(data["rows"]) == ["internal"]  # no expert: no external / fused rows
    np.testing.assert_allclose(data["rows"]["internal"], minmax(tr.internal_agg.numpy()), atol=1e-6)
    np.testing.assert_allclose(data["raw"]["internal"], tr.internal_agg.numpy(), atol=1e-6)
    # per-layer panel: each layer's raw scores, normalised per layer
    np.testing.assert_allclose(data["layers"], np.stack([minmax(r) for r in tr.internal.numpy()]), atol=1e-6)
    # marks: every block some layer retrieved, and each (layer, block) pair
    picked = sorted({int(b) for sel in tr.selected for b in sel})
    np.testing.assert_allclose(sorted(data["marks"]), tr.block_times.numpy()[picked])
    want = sorted((float(tr.block_times[b]), layer) for layer, sel in enumerate(tr.selected) for b in sel.tolist())
    assert sorted((float(x), int(y)) for x, y in data["layer_marks"]) == want
    # bias numbers in the title
    assert "What moved?" in data["title"]
    assert f"internal {tr.bias['internal']:+.2f}" in data["title"]
    assert "fused" not in data["title"]  # fused == internal without an expert


def test_external_and_fused_rows_appear_with_an_expert():
    tr = make_trace(external=True, seed=1)
    fig = heatmap.figure(tr)
    data = heatmap.figure_data(fig)
    assert list(data["rows"]) == ["internal", "external", "fused"]
    np.testing.assert_allclose(data["rows"]["external"], minmax(tr.external.numpy()), atol=1e-6)
    np.testing.assert_allclose(data["rows"]["fused"], minmax(tr.fused.numpy()), atol=1e-6)
    assert f"fused {tr.bias['fused']:+.2f}" in data["title"]
    assert f"internal {tr.bias['internal']:+.2f}" in data["title"]
    # the top row drawn is internal (y ticks top to bottom: marks row, internal, external, fused)
    ticks = dict(zip(fig.layout.yaxis.ticktext, fig.layout.yaxis.tickvals))
    assert ticks["retrieved"] > ticks["internal"] > ticks["external"] > ticks["fused"]


def test_hover_carries_time_score_and_rank():
    tr = make_trace(n=6, layers=2, seed=2)
    fig = heatmap.figure(tr)
    top = fig.data[0]
    assert "t = %{x" in top.hovertemplate and "rank" in top.hovertemplate
    custom = np.asarray(top.customdata)[0]  # internal row: [N, (raw, rank)]
    ranks = custom[:, 1].astype(int)
    assert ranks[int(np.argmax(tr.internal_agg.numpy()))] == 1
    assert sorted(ranks.tolist()) == list(range(1, 7))
    layer_custom = np.asarray(fig.data[2].customdata)
    np.testing.assert_allclose(layer_custom[..., 0], tr.internal.numpy(), atol=1e-6)


def test_edge_cases_one_block_nan_bias_and_constant_scores():
    tr = RetrievalTrace.build(torch.tensor([0.0]), torch.ones(2, 1), [torch.tensor([0]), torch.tensor([0])],
                              policy="full")
    assert math.isnan(tr.bias["internal"])
    data = heatmap.figure_data(heatmap.figure(tr))
    assert "internal n/a" in data["title"]
    assert data["rows"]["internal"].tolist() == [0.0]
    assert len(data["marks"]) == 1


@pytest.mark.parametrize("layers", [1, 28])
def test_many_or_one_layer(layers):
    tr = make_trace(n=40, layers=layers, seed=3)
    fig = heatmap.figure(tr)
    assert np.asarray(fig.data[2].z).shape == (layers, 40)


def test_hermes_kept_counts_fill_the_lower_panel():
    tr = make_trace(n=6, layers=3)
    kept = torch.tensor([[0, 0, 2, 4, 8, 8], [1, 0, 0, 3, 6, 8], [8, 8, 8, 8, 8, 8]])
    tr.kept = kept
    data = heatmap.figure_data(heatmap.figure(tr))
    # each layer's counts scaled by its largest count; raw counts in the hover data
    np.testing.assert_allclose(data["layers"], kept.numpy() / kept.numpy().max(axis=1, keepdims=True))
    fig = heatmap.figure(tr)
    np.testing.assert_allclose(np.asarray(fig.data[2].customdata)[..., 0], kept.numpy())
    assert "holds" in fig.layout.annotations[1].text
