"""Tables and the filled-in formulas, from estimator output, without Streamlit."""

from __future__ import annotations

import csv
import io

import estimator
import pytest

from app import compute, state, tables

SPEC = estimator.load_preset("llama-3.2-3b")


def test_quant_table_has_one_row_per_quant_with_fits():
    rows = compute.quant_rows("llama-3.2-3b", 8192, 1, "auto", "sdpa", "rtx-3060-12gb", None)
    t = tables.quant_table(rows, SPEC)
    assert [r["Quantization"] for r in t] == [estimator.QUANTS[q].label for q in estimator.TRANSFORMERS_QUANTS]
    bf16 = t[[r["quant"] for r in rows].index("bf16")]
    assert bf16["Bits/weight"] == 16 and bf16["Stored bits/param"] == pytest.approx(16.0, abs=0.01)
    fp32 = t[0]
    assert fp32["Fits"] is False  # 12.85 GB of fp32 weights on a 12 GB card
    assert all(isinstance(r["Largest context"], int) for r in t)


def test_gpu_table_lists_every_catalog_gpu():
    rows = compute.gpu_rows("llama-3.2-3b", "bf16", 8192, 1, "auto", "sdpa")
    t = tables.gpu_table(rows, ["bf16", "nf4"])
    assert len(t) == len(estimator.gpu_catalog())
    small = next(r for r in t if "1650" in r["GPU"])
    assert small["Fits"] is False and small["bf16"] == 0 and small["nf4"] > 0


def test_sweep_csv_round_trips():
    rows = estimator.sweep("llama-3.2-3b", quants=["bf16"], contexts=[1024, 2048], gpu="t4-16gb")
    text = tables.sweep_csv(rows)
    back = list(csv.DictReader(io.StringIO(text)))
    assert len(back) == 2 and back[0]["quant"] == "bf16" and int(back[1]["context"]) == 2048
    assert int(back[0]["device_used_bytes"]) == rows[0]["device_used_bytes"]


def test_formula_rows_fill_in_this_model():
    est = estimator.estimate(context=8192, gpu="rtx-4090-24gb").to_dict()
    rows = {r["Term"]: r for r in tables.formula_rows(SPEC, est)}
    assert "28 layers × 8 KV heads × 128 head_dim" in rows["KV cache"]["Formula"]
    assert "114,688 B/token" in rows["KV cache"]["Formula"]
    assert "3,212,749,824 params" in rows["Weights"]["Formula"]
    assert rows["Device used"]["Value"].endswith("GiB")


def test_sweep_contexts_are_log_spaced_1k_to_128k():
    c = state.SWEEP_CONTEXTS
    assert c[0] == 1024 and c[-1] == 131072 and len(c) == 64 and list(c) == sorted(c)


def test_phases_table_peak_matches_headline():
    est = estimator.estimate(gpu="rtx-4090-24gb").to_dict()
    rows = tables.phases_table(est)
    assert [r["Phase"].split()[0] for r in rows] == ["Load", "Prefill", "Decode"]
    assert max(r["Device used"] for r in rows) == pytest.approx(est["device_used_bytes"] / (1 << 30))
