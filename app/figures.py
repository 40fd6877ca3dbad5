"""Plotly figures as pure functions of estimator output (a ``MemoryReport``, rows from
``sweep``) and measurement records. No Streamlit here: tests inspect ``fig.data``
and ``fig.layout`` directly.

All byte values are plotted in GiB (2**30 B) and labelled "GiB"; hover text carries the exact
byte count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from estimator.report import MemoryReport
from estimator.units import GiB

# One colour per memory component, used by every figure and table.
COMPONENTS = (
    ("weights_bytes", "Weights", "#3b6fb6"),
    ("kv_cache_bytes", "KV cache", "#e8833a"),
    ("activations_bytes", "Activations", "#4c9f70"),
    ("overhead_bytes", "Overhead", "#9b7fc4"),
)
CAPACITY_COLOR = "#d64545"
COUNTER_LABELS = {
    "weights_bytes": "Weights",
    "kv_cache_bytes": "KV cache",
    "activations_bytes": "Activations",
    "peak_allocated_bytes": "Peak allocated",
    "peak_reserved_bytes": "Peak reserved",
    "device_used_bytes": "Device used",
    "peak_live_bytes": "Peak live tensors",
}
# Distinct colours for quantization lines (Tableau 10, reordered so neighbours differ).
QUANT_COLORS = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
    "#17becf",
    "#7f7f7f",
)

_FONT = dict(family="Inter, system-ui, -apple-system, Segoe UI, sans-serif", size=13)


def _layout(*, title: str, height: int, **extra: Any) -> dict[str, Any]:
    """Common layout. No plotly template: Streamlit's chart theme styles the figure, and skipping
    the template keeps a figure build in the low milliseconds (the calculator reruns often)."""
    layout: dict[str, Any] = dict(
        title=dict(text=title, x=0, xanchor="left", font=dict(size=15)),
        height=height,
        template={},
        font=_FONT,
        margin=dict(l=10, r=10, t=46, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
        hoverlabel=dict(font=dict(family=_FONT["family"])),
        shapes=[],
        annotations=[],
    )
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(layout.get(k), dict):
            layout[k] = {**layout[k], **v}
        else:
            layout[k] = v
    return layout


def _figure(data: list[dict[str, Any]], layout: dict[str, Any]) -> go.Figure:
    # The specs are built here and known valid; plotly's per-property validation costs ~50 ms
    # per figure, so it is skipped (tests check the resulting structure).
    return go.Figure({"data": data, "layout": layout}, _validate=False)


def _hline(layout: dict[str, Any], y: float, text: str, color: str) -> None:
    layout["shapes"].append(
        dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=y, y1=y, line=dict(color=color, width=2, dash="dash"))
    )
    layout["annotations"].append(
        dict(
            xref="paper",
            x=0,
            yref="y",
            y=y,
            text=text,
            showarrow=False,
            xanchor="left",
            yanchor="bottom",
            font=dict(color=color),
        )
    )


def _vline(
    layout: dict[str, Any], x: float, text: str, color: str, dash: str = "dash", width: float = 2, log: bool = False
) -> None:
    xv = math.log10(x) if log else x
    layout["shapes"].append(
        dict(
            type="line", yref="paper", y0=0, y1=1, xref="x", x0=x, x1=x, line=dict(color=color, width=width, dash=dash)
        )
    )
    layout["annotations"].append(
        dict(
            yref="paper",
            y=1,
            xref="x",
            x=xv,
            text=text,
            showarrow=False,
            xanchor="right",
            yanchor="bottom",
            font=dict(color=color),
        )
    )


def gib(n: int | None) -> float | None:
    """Bytes to GiB as a float for plotting (None stays None)."""
    return None if n is None else n / GiB


def tokens_label(tokens: int) -> str:
    """131072 -> '128K', 1536 -> '1.5K', 1000 -> '1,000'."""
    if tokens >= 1024 and tokens % 512 == 0:
        k = tokens / 1024
        return f"{k:g}K"
    return f"{tokens:,}"


def breakdown_figure(
    est: MemoryReport, capacity_bytes: int | None = None, capacity_label: str = "GPU memory"
) -> go.Figure:
    """Stacked horizontal bar of weights, KV cache, activations and overhead (sums to device used).

    ``est`` is an estimate (every part an int). With ``capacity_bytes`` a dashed vertical line
    marks the GPU's memory.
    """
    xmax = max(est.device_used_bytes or 0, capacity_bytes or 0)
    data = []
    for field, label, color in COMPONENTS:
        n = int(getattr(est, field) or 0)
        data.append(
            dict(
                # every part is named with its size in the legend; the bar itself has room for the big ones
                type="bar",
                name=f"{label} {n / GiB:.2f} GiB",
                y=["Device used"],
                x=[gib(n)],
                orientation="h",
                marker=dict(color=color),
                text=[f"{label} {n / GiB:.2f}"] if n >= 0.12 * max(1, xmax) else [""],
                textposition="inside",
                insidetextanchor="middle",
                textfont=dict(color="white", size=12),
                customdata=[[n]],
                hovertemplate=f"<b>{label}</b><br>%{{x:.3f}} GiB<br>%{{customdata[0]:,}} B<extra></extra>",
            )
        )
    layout = _layout(
        title="Where the memory goes",
        height=215,
        barmode="stack",
        bargap=0.35,
        margin=dict(t=40),
        legend=dict(traceorder="normal", orientation="h", y=-0.55, yanchor="top", x=0, xanchor="left"),
        xaxis=dict(title=dict(text="GiB"), range=[0, 1.04 * xmax / GiB]),
        yaxis=dict(showticklabels=False),
    )
    if capacity_bytes:
        _vline(layout, capacity_bytes / GiB, f"{capacity_label}: {capacity_bytes / GiB:.1f} GiB", CAPACITY_COLOR)
    return _figure(data, layout)


def context_figure(
    rows: Sequence[Mapping[str, Any]],
    *,
    capacity_bytes: int | None = None,
    capacity_label: str = "GPU memory",
    context: int | None = None,
    quant: str | None = None,
    counter: str = "device_used_bytes",
    labels: Mapping[str, str] | None = None,
) -> go.Figure:
    """Memory vs context, one line per quantization, log x axis (rows from ``estimator.sweep``).

    The selected ``quant`` is drawn thicker; ``capacity_bytes`` is a horizontal line and
    ``context`` a vertical marker. Hover shows exact GiB.
    """
    labels = labels or {}
    by_quant: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_quant.setdefault(r["quant"], []).append(r)
    data = []
    for i, (q, rs) in enumerate(by_quant.items()):
        rs = sorted(rs, key=lambda r: r["context"])
        chosen = q == quant
        name = labels.get(q, q)
        data.append(
            dict(
                type="scatter",
                x=[r["context"] for r in rs],
                y=[gib(r[counter]) for r in rs],
                mode="lines",
                name=name,
                legendgroup=q,
                line=dict(color=QUANT_COLORS[i % len(QUANT_COLORS)], width=4 if chosen else 1.8),
                opacity=1.0 if chosen or quant is None else 0.75,
                customdata=[[tokens_label(r["context"]), r[counter]] for r in rs],
                hovertemplate=(
                    f"<b>{name}</b><br>context %{{customdata[0]}} tokens"
                    "<br>%{y:.3f} GiB (%{customdata[1]:,} B)<extra></extra>"
                ),
            )
        )
    xs = [r["context"] for r in rows] or [1024, 131072]
    ticks = [2**e for e in range(5, 25) if min(xs) <= 2**e <= max(xs)] or sorted(set(xs))
    layout = _layout(
        title="Memory vs context",
        height=520,
        hovermode="closest",
        # legend under the plot: on a phone a legend beside it left the plot ~170 px wide
        legend=dict(orientation="h", y=-0.2, yanchor="top", x=0, xanchor="left"),
        xaxis=dict(
            type="log",
            title=dict(text="Context (tokens)"),
            tickvals=ticks,
            ticktext=[tokens_label(t) for t in ticks],
            showgrid=True,
        ),
        yaxis=dict(title=dict(text=f"{COUNTER_LABELS.get(counter, counter)} (GiB)"), rangemode="tozero"),
    )
    if capacity_bytes:
        _hline(layout, capacity_bytes / GiB, f"{capacity_label} ({capacity_bytes / GiB:.1f} GiB)", CAPACITY_COLOR)
    if context:
        _vline(layout, context, tokens_label(context), "#555", dash="dot", width=1, log=True)
    return _figure(data, layout)


def params_figure(groups: Mapping[str, int]) -> go.Figure:
    """Horizontal bar of parameter counts per group (embedding, attention, mlp, norms, lm_head)."""
    items = [(k, v) for k, v in groups.items() if v]
    total = sum(v for _, v in items) or 1
    data = [
        dict(
            type="bar",
            y=[k for k, _ in items],
            x=[v for _, v in items],
            orientation="h",
            marker=dict(color=["#3b6fb6", "#e8833a", "#4c9f70", "#9b7fc4", "#888"][: len(items)]),
            text=[f"{v:,} ({100 * v / total:.1f}%)" for _, v in items],
            textposition="auto",
            hovertemplate="%{y}: %{x:,} parameters<extra></extra>",
        )
    ]
    layout = _layout(
        title="Parameters by group",
        height=260,
        xaxis=dict(title=dict(text="Parameters")),
        yaxis=dict(autorange="reversed"),
    )
    return _figure(data, layout)


def parity_figure(points: Iterable[Mapping[str, Any]]) -> go.Figure:
    """Estimate vs measured per counter. ``points``: {counter, estimate_bytes, measured_bytes, label}.

    A perfect estimate lies on the dashed y = x line.
    """
    pts = [p for p in points if p.get("measured_bytes") is not None and p.get("estimate_bytes") is not None]
    colors = {
        "weights_bytes": "#3b6fb6",
        "kv_cache_bytes": "#e8833a",
        "activations_bytes": "#76b7b2",
        "peak_allocated_bytes": "#4c9f70",
        "peak_reserved_bytes": "#9b7fc4",
        "device_used_bytes": "#d64545",
    }
    data = []
    for c in dict.fromkeys(p["counter"] for p in pts):
        cp = [p for p in pts if p["counter"] == c]
        data.append(
            dict(
                type="scatter",
                x=[gib(p["measured_bytes"]) for p in cp],
                y=[gib(p["estimate_bytes"]) for p in cp],
                mode="markers",
                name=COUNTER_LABELS.get(c, c.replace("_bytes", "").replace("_", " ")),
                marker=dict(size=9, color=colors.get(c), line=dict(width=1, color="white")),
                customdata=[[p.get("label", ""), p["measured_bytes"], p["estimate_bytes"]] for p in cp],
                hovertemplate=(
                    "%{customdata[0]}<br>measured %{x:.3f} GiB (%{customdata[1]:,} B)"
                    "<br>estimate %{y:.3f} GiB (%{customdata[2]:,} B)<extra></extra>"
                ),
            )
        )
    hi = max([max(p["measured_bytes"], p["estimate_bytes"]) for p in pts] or [GiB]) / GiB * 1.05
    data.append(
        dict(
            type="scatter",
            x=[0, hi],
            y=[0, hi],
            mode="lines",
            name="estimate = measured",
            line=dict(color="#999", dash="dash", width=1),
            hoverinfo="skip",
        )
    )
    layout = _layout(
        title="Estimate vs measured",
        height=460,
        xaxis=dict(title=dict(text="Measured (GiB)"), range=[0, hi]),
        yaxis=dict(title=dict(text="Estimate (GiB)"), range=[0, hi], scaleanchor="x"),
    )
    return _figure(data, layout)


# One colour per engine in the speed figures.
ENGINE_COLORS = {"transformers": "#3b6fb6", "vLLM": "#e8833a", "llama.cpp": "#4c9f70"}


def concurrency_figure(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> go.Figure:
    """Tokens/s over all sequences vs concurrent sequences, one line per engine with its low-high
    band (``estimator.speed.concurrency_curve`` points), and per-sequence tok/s dotted. Each line
    stops at the engine's KV-capacity limit."""
    data: list[dict[str, Any]] = []
    xs: list[int] = []
    for i, (engine, points) in enumerate(curves.items()):
        if not points:
            continue
        color = ENGINE_COLORS.get(engine, QUANT_COLORS[i % len(QUANT_COLORS)])
        x = [p["concurrency"] for p in points]
        xs += x
        agg = [p["aggregate"] for p in points]
        per = [p["per_sequence"] for p in points]
        data.append(
            dict(
                type="scatter",
                x=x + x[::-1],
                y=[a["high"] for a in agg] + [a["low"] for a in agg][::-1],
                fill="toself",
                fillcolor=color,
                opacity=0.15,
                line=dict(width=0),
                name=f"{engine} range",
                legendgroup=engine,
                showlegend=False,
                hoverinfo="skip",
            )
        )
        data.append(
            dict(
                type="scatter",
                x=x,
                y=[a["point"] for a in agg],
                mode="lines+markers",
                name=f"{engine}: all sequences",
                legendgroup=engine,
                line=dict(color=color, width=3),
                customdata=[[a["low"], a["high"]] for a in agg],
                hovertemplate=(
                    f"<b>{engine}</b><br>%{{x}} sequences<br>%{{y:,.0f}} tok/s in all "
                    "(%{customdata[0]:,.0f} to %{customdata[1]:,.0f})<extra></extra>"
                ),
            )
        )
        data.append(
            dict(
                type="scatter",
                x=x,
                y=[p["point"] for p in per],
                mode="lines",
                name=f"{engine}: each sequence",
                legendgroup=engine,
                line=dict(color=color, width=1.5, dash="dot"),
                hovertemplate=f"<b>{engine}</b><br>%{{x}} sequences<br>%{{y:,.1f}} tok/s each<extra></extra>",
            )
        )
    ticks = sorted(set(xs)) or [1]
    layout = _layout(
        title="Speed vs concurrency",
        height=440,
        hovermode="closest",
        legend=dict(orientation="h", y=-0.2, yanchor="top", x=0, xanchor="left"),
        xaxis=dict(type="log", title=dict(text="Concurrent sequences"), tickvals=ticks, showgrid=True),
        yaxis=dict(title=dict(text="Decode speed (tokens/s)"), rangemode="tozero"),
    )
    return _figure(data, layout)
