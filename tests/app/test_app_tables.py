"""Tables and the filled-in formulas, from estimator output, without Streamlit."""

from __future__ import annotations

import csv
import io

import pytest

import estimator
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
    cards = {g.key for g in estimator.gpu_catalog() if not g.memory_source.startswith("Alias of")}
    assert [r["gpu"] for r in rows] == compute.gpu_keys() and set(compute.gpu_keys()) == cards
    assert len(t) == len(cards) and any("Laptop" in r["GPU"] for r in t)
    small = next(r for r in t if "1650" in r["GPU"])
    assert small["GPU"] == "GTX 1650 · 4 GB (4 GiB)"  # the sidebar's name for it (inputs.gpu_label)
    assert small["Fits"] is False and small["bf16"] == 0 and small["nf4"] > 0


def test_sweep_csv_round_trips():
    rows = estimator.sweep("llama-3.2-3b", quants=["bf16"], contexts=[1024, 2048], gpu="t4-16gb")
    text = tables.sweep_csv(rows)
    back = list(csv.DictReader(io.StringIO(text)))
    assert len(back) == 2 and back[0]["quant"] == "bf16" and int(back[1]["context"]) == 2048
    assert int(back[0]["device_used_bytes"]) == rows[0]["device_used_bytes"]


def test_formula_rows_fill_in_this_model():
    est = estimator.estimate(context=8192, gpu="rtx-4090-24gb")
    rows = {r["Term"]: r for r in tables.formula_rows(SPEC, est)}
    assert "28 layers × 8 KV heads × 128 head_dim" in rows["KV cache"]["Formula"]
    assert "114,688 B/token" in rows["KV cache"]["Formula"]
    assert "3,212,749,824 params" in rows["Weights"]["Formula"]
    assert rows["Device used"]["Value"].endswith("GiB")


def test_sweep_contexts_are_log_spaced_1k_to_128k():
    c = state.SWEEP_CONTEXTS
    assert c[0] == 1024 and c[-1] == 131072 and len(c) == 64 and list(c) == sorted(c)


def test_phases_table_peak_matches_headline():
    est = estimator.estimate(gpu="rtx-4090-24gb")
    rows = tables.phases_table(est)
    assert [r["Phase"].split()[0] for r in rows] == ["Load", "Prefill", "Decode"]
    assert max(r["Device used"] for r in rows) == pytest.approx(est.device_used_bytes / (1 << 30))


@pytest.mark.parametrize("batch", [1, 3])
def test_kv_formula_says_the_window(batch):
    """The context is the window: KV bytes = per-token bytes x context x batch (no '+ new tokens')."""
    est = estimator.estimate(context=8192, batch=batch, gpu="rtx-4090-24gb")
    formula = {r["Term"]: r for r in tables.formula_rows(SPEC, est)}["KV cache"]["Formula"]
    per_tok = estimator.kv_bytes_per_token(SPEC, "auto", 2)
    assert per_tok * 8192 * batch == est.kv_cache_bytes
    assert f"{per_tok:,} B/token per sequence; × 8,192 tokens of context" in formula
    assert f"× batch {batch}" in formula and "window" in formula
    assert "context +" not in formula and "window the cache holds: 8,160 prompt + 32 new tokens" in formula


def test_activations_formula_counts_prompt_tokens():
    est = estimator.estimate(context=8192, gpu="rtx-4090-24gb")
    rows = {r["Term"]: r for r in tables.formula_rows(SPEC, est)}
    assert "per prompt token × 8,160 prompt tokens × batch 1" in rows["Activations"]["Formula"]


@pytest.mark.parametrize(
    "max_ctx,window,value,note",
    [
        (131072, 131072, "131,072 tokens", "the whole window fits"),
        (4096, 4096, "4,096 tokens", "the whole window fits"),
        (100_000, 131072, "100,000 tokens", "of a 131,072-token window"),
        (0, 131072, "none", None),
    ],
)
def test_largest_context_text(max_ctx, window, value, note):
    assert tables.largest_context_text(max_ctx, window) == (value, note)


def test_headline_caption_escapes_the_model_label():
    est = estimator.estimate(gpu="rtx-4090-24gb")
    cap = tables.headline_caption("[x](javascript:alert(1))", est)
    assert "](javascript" not in cap and cap.startswith("\\[x\\]\\(javascript\\:alert\\(1\\)\\)")
    assert "8K context (window)" in cap


WINDOWS = [33, 34, 100, 500, 1024, 1025, 4096, 5000, 8192, 131072, 1 << 20, 1 << 24]


@pytest.mark.parametrize("window", WINDOWS)
def test_sweep_contexts_stay_within_the_window(window):
    c = state.sweep_contexts(window)
    assert c and list(c) == sorted(set(c)) and len(c) <= 64
    assert c[-1] == window and c[0] > state.NEW_TOKENS


@pytest.mark.parametrize("window", WINDOWS)
def test_context_stops_stay_within_the_window(window):
    stops = state.context_stops(window)
    assert stops[-1] == window and stops[0] > state.NEW_TOKENS and list(stops) == sorted(set(stops))
    assert state.nearest_stop(1 << 30, stops) == window


def test_sweep_contexts_of_a_short_window_model():
    """The chart and CSV of a model with a 2K window list only contexts within it."""
    cfg = estimator.model.preset_config("llama-3.2-1b")
    spec = estimator.from_hf_config({**cfg, "max_position_embeddings": 2000})
    key = compute.model_key(spec)
    rows = compute.sweep_rows(key, 1, "auto", "sdpa", "rtx-4090-24gb", None)
    ctxs = {r["context"] for r in rows}
    assert max(ctxs) == 2000 and min(ctxs) > state.NEW_TOKENS
    assert compute.largest_context(key, "bf16", 1, "auto", "sdpa", "h100-sxm-80gb", None) == 2000
    assert (
        compute.sweep_rows(
            compute.model_key(estimator.from_hf_config({**cfg, "max_position_embeddings": 8})),
            1,
            "auto",
            "sdpa",
            "rtx-4090-24gb",
            None,
        )
        == []
    )


def test_naive_rule_rows_explain_the_whole_estimate():
    """Llama 3.2 3B nf4 at 8K: the simple rule (4 bits x 3,212,749,824 parameters + KV) and each term
    the estimate adds; the terms add up to the estimator's own device-used total (to the GiB digit)."""
    from app import tables

    est = estimator.estimate("llama-3.2-3b", "nf4", 8192, 1, gpu="rtx-4060-8gb")
    rows = tables.naive_rule_rows(est)
    assert rows[0]["GiB"] == f"{3_212_749_824 * 4 // 8 / 2**30:.2f}"  # 1.50 GiB
    # the tied embedding stays bf16 under bitsandbytes: parameters minus the naive 4-bit weights
    emb = est.breakdown["weights"]["parameters"] - 3_212_749_824 * 4 // 8
    assert rows[2]["GiB"] == f"{emb / 2**30:+.2f}" and emb > 0
    assert rows[-1]["GiB"] == f"{est.device_used_bytes / 2**30:.2f}"
    assert f"simple rule: {(3_212_749_824 // 2 + est.kv_cache_bytes) / 2**30:.2f} GiB" in rows[-1]["Term"]


def test_export_names_describe_their_content():
    est, sweep = tables.export_names("llama-3.2-3b", "nf4", 8192, 2, "auto", "sdpa", 1024, "t4-16gb")
    assert est == "vram-estimate-llama-3.2-3b-nf4-ctx8192-batch2-kv-auto-sdpa-chunk1024-t4-16gb.json"
    # the sweep holds every quantization and context: neither is in its name
    assert sweep == "vram-vs-context-all-quants-llama-3.2-3b-batch2-kv-auto-sdpa-chunk1024-t4-16gb.csv"


def test_one_gpu_name_everywhere():
    """Sidebar, GPU table, recommendation and Engines page all name a card by gpu_display_name."""
    assert tables.gpu_display_name("NVIDIA GeForce RTX 4090 24GB", 25_383_256_719) == "RTX 4090 · 24 GB (23.64 GiB)"
    assert tables.gpu_display_name("NVIDIA A10G 24GB", 24_146_608_128) == "A10G · 24 GB (22.49 GiB)"
    assert tables.gpu_display_name("NVIDIA B200 (180 GB usable)", 191_501_854_310) == "B200 · 180 GB (178.35 GiB)"
    assert tables.gpu_display_name("Custom GPU", 10 << 30) == "Custom GPU · 10 GiB"
