"""Figure builders are pure functions of estimator output; checked without Streamlit."""

from __future__ import annotations

import pytest

import estimator
from app import figures, state
from estimator.units import GiB


@pytest.fixture(scope="module")
def est():
    return estimator.estimate(gpu="rtx-4090-24gb")


def test_breakdown_figure_stacks_the_four_components(est):
    """The four stacked bars add up to device_used_bytes, and the capacity line is drawn."""
    cap = estimator.get_gpu("rtx-4090-24gb").memory_bytes
    fig = figures.breakdown_figure(est, cap, "RTX 4090")
    parts = ("weights_bytes", "kv_cache_bytes", "activations_bytes", "overhead_bytes")
    # each part labelled with its size (the legend), so the small ones are named too
    assert [t.name for t in fig.data] == [
        f"{n} {getattr(est, f) / GiB:.2f} GiB"
        for n, f in zip(["Weights", "KV cache", "Activations", "Overhead"], parts)
    ]
    assert sum(t.x[0] for t in fig.data) == pytest.approx(est.device_used_bytes / GiB)
    assert fig.layout.barmode == "stack"
    assert [s.x0 for s in fig.layout.shapes] == [pytest.approx(cap / GiB)]
    assert fig.layout.xaxis.title.text == "GiB"


def test_breakdown_figure_without_gpu_has_no_capacity_line(est):
    assert len(figures.breakdown_figure(est).layout.shapes) == 0


def test_context_figure_one_line_per_quant_on_log_axis():
    """One trace per quantization, log x from 1K to 128K, capacity as a horizontal line."""
    rows = estimator.sweep("llama-3.2-3b", contexts=state.SWEEP_CONTEXTS, gpu="rtx-4090-24gb")
    fig = figures.context_figure(rows, capacity_bytes=24 * GiB, context=8192, quant="nf4")
    assert len(fig.data) == len(estimator.TRANSFORMERS_QUANTS)
    assert fig.layout.xaxis.type == "log"
    nf4 = next(t for t in fig.data if t.name == "nf4")
    assert nf4.line.width > next(t for t in fig.data if t.name == "bf16").line.width
    assert nf4.x[0] == 1024 and nf4.x[-1] == 131072 and len(nf4.x) == 64
    assert list(nf4.y) == pytest.approx([r["device_used_bytes"] / GiB for r in rows if r["quant"] == "nf4"])
    ys = [s.y0 for s in fig.layout.shapes if s.y0 == s.y1]
    assert ys == [pytest.approx(24.0)]
    assert "GiB" in fig.layout.yaxis.title.text and "GiB" in nf4.hovertemplate
    # the legend sits under the plot (a phone gives the plot the full width), not beside it
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0


def test_parity_figure_plots_estimate_against_measured():
    pts = [
        {"counter": "peak_allocated_bytes", "measured_bytes": 2 * GiB, "estimate_bytes": 2 * GiB + 1, "label": "x"},
        {"counter": "device_used_bytes", "measured_bytes": 3 * GiB, "estimate_bytes": None},
    ]
    fig = figures.parity_figure(pts)
    assert [t.name for t in fig.data] == ["Peak allocated", "estimate = measured"]
    assert figures.COUNTER_LABELS["kv_cache_bytes"] == "KV cache"
    assert fig.data[0].x[0] == pytest.approx(2.0)


def test_parity_figure_empty_is_valid():
    assert len(figures.parity_figure([]).data) == 1


def test_params_figure_shows_each_nonzero_group():
    from estimator.model import param_breakdown

    g = param_breakdown(estimator.load_preset("llama-3.2-3b"))
    fig = figures.params_figure(g)
    assert sum(fig.data[0].x) == 3_212_749_824
    assert "lm_head" not in fig.data[0].y  # tied


@pytest.mark.parametrize("tokens,label", [(131072, "128K"), (1536, "1.5K"), (8192, "8K"), (1000, "1,000")])
def test_tokens_label(tokens, label):
    assert figures.tokens_label(tokens) == label
