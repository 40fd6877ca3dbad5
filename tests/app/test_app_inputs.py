"""Query-string parsing and the context helpers behind the sidebar (pure functions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import estimator
from app import state
from app.inputs import Inputs, parse_query, parse_typed_context, query_for, short_gpu_name

KEYS = ("model", "quant", "kv", "ctx", "batch", "attn", "gpu", "mem")


@given(st.dictionaries(st.sampled_from(KEYS), st.text(max_size=30)))
def test_parse_query_never_raises_and_keeps_only_valid_values(params):
    """Any query string gives a dict of valid session values (bad values are dropped)."""
    out = parse_query(params)
    assert set(out) <= set(state.QUERY_KEYS.values())
    if state.QUANT in out:
        assert out[state.QUANT] in estimator.TRANSFORMERS_QUANTS
    if state.CONTEXT in out:
        model = out.get(state.MODEL, state.DEFAULTS[state.MODEL])
        assert state.MIN_CONTEXT <= out[state.CONTEXT] <= estimator.load_preset(model).max_position_embeddings
    if state.BATCH in out:
        assert 1 <= out[state.BATCH] <= state.MAX_BATCH


def test_query_round_trip():
    inp = Inputs(
        model="llama-3.1-8b",
        model_key="llama-3.1-8b",
        model_label="Llama 3.1 8B",
        quant="nf4",
        kv_dtype="fp8",
        context=100_000,
        batch=3,
        attn="eager",
        gpu_key=None,
        capacity_bytes=48 << 30,
        capacity_label="48 GiB GPU",
    )
    q = query_for(inp, "llama-3.1-8b")
    assert q["mem"] == "48" and q["gpu"] == "custom"
    back = parse_query(q)
    assert back == {
        state.MODEL: "llama-3.1-8b",
        state.QUANT: "nf4",
        state.KV_DTYPE: "fp8",
        state.CONTEXT: 100_000,
        state.BATCH: 3,
        state.ATTN: "eager",
        state.GPU: state.CUSTOM_GPU,
        state.GPU_MEM_GIB: 48.0,
    }


def test_query_says_custom_for_uploaded_models():
    """An uploaded config cannot travel in a link: the link says model=custom (not a preset), and
    opening it selects "custom" again."""
    inp = Inputs(
        model=None,
        model_key="spec:{}",
        model_label="x",
        quant="bf16",
        kv_dtype="auto",
        context=8192,
        batch=1,
        attn="sdpa",
        gpu_key="t4-16gb",
        capacity_bytes=1,
        capacity_label="T4",
    )
    q = query_for(inp, state.CUSTOM_MODEL)
    assert q["model"] == state.CUSTOM_MODEL and parse_query(q)[state.MODEL] == state.CUSTOM_MODEL


@pytest.mark.parametrize(
    "tokens,stop", [(1, 1024), (8192, 8192), (10_000, 8192), (11_000, 12288), (100_000, 98304), (1 << 20, 131072)]
)
def test_nearest_stop_is_log_nearest(tokens, stop):
    assert state.nearest_stop(tokens) == stop


@pytest.mark.parametrize(
    "name,short",
    [
        ("NVIDIA GeForce RTX 4090 24GB", "RTX 4090"),
        ("NVIDIA H100 SXM 80GB", "H100 SXM"),
        ("AMD Instinct MI300X 192GB", "MI300X"),
        ("NVIDIA B200 (180 GB usable)", "B200"),
        ("AMD Instinct MI250X, one GCD (64 GB)", "MI250X, one GCD"),
        ("NVIDIA GeForce RTX 4060 Laptop GPU 8GB", "RTX 4060 Laptop"),
    ],
)
def test_short_gpu_name_drops_vendor_and_marketing_size(name, short):
    assert short_gpu_name(name) == short


@pytest.mark.parametrize(
    "key,label",
    [
        ("a10g-24gb", "A10G · 24 GB (22.49 GiB)"),
        ("rtx-3090-24gb", "RTX 3090 · 24 GB (24 GiB)"),
        ("rtx-4060-laptop-8gb", "RTX 4060 Laptop · 8 GB (8 GiB)"),
    ],
)
def test_gpu_label_says_the_size_cards_are_sold_in_and_the_usable_gib(key, label):
    from app.inputs import gpu_label

    assert gpu_label(key) == label


WINDOW = 131072


@pytest.mark.parametrize(
    "params",
    [
        {"ctx": "9" * 300},
        {"ctx": "²"},
        {"ctx": "٣"},
        {"ctx": "٣٢٧٦٨"},
        {"ctx": "１０２４"},
        {"ctx": "200k"},
        {"ctx": "131073"},
        {"ctx": "32"},
        {"ctx": "0"},
        {"ctx": "1e5"},
        {"batch": "٣"},
        {"batch": "²"},
        {"batch": "9" * 300},
        {"batch": "1025"},
        {"batch": "0"},
        {"batch": "3.0"},
        {"mem": "١٢"},
        {"mem": "nan"},
        {"mem": "inf"},
        {"mem": "1e400"},
        {"mem": "9" * 300},
        {"mem": "0.1"},
        {"mem": "5000"},
        {"model": "x" * 10_000},
        {"gpu": "x" * 10_000},
    ],
)
def test_parse_query_ignores_hostile_values(params):
    assert parse_query(params) == {}


def test_parse_query_bounds_context_by_the_models_window():
    assert parse_query({"ctx": "128k"}) == {state.CONTEXT: WINDOW}
    assert parse_query({"ctx": "33"}) == {state.CONTEXT: 33}
    assert parse_query({"model": "llama-3.2-1b", "ctx": "131072", "batch": " 7 ", "mem": "0.5"}) == {
        state.MODEL: "llama-3.2-1b",
        state.CONTEXT: 131072,
        state.BATCH: 7,
        state.GPU_MEM_GIB: 0.5,
    }


@pytest.mark.parametrize(
    "text,tokens", [("8k", 8192), ("128K", WINDOW), ("131072", WINDOW), ("33", 33), (" 100,000 ", 100_000)]
)
def test_parse_typed_context_accepts_the_window(text, tokens):
    assert parse_typed_context(text, WINDOW) == tokens


@pytest.mark.parametrize(
    "text,says",
    [
        ("131073", "window (max_position_embeddings 131,072 tokens)"),
        ("2M", "window"),
        ("32", "32 new tokens"),
        ("0", "context"),
        ("9" * 300, "context"),
        ("٣", "context"),
        ("²", "context"),
        ("", "context"),
    ],
)
def test_parse_typed_context_refuses_outside_the_window(text, says):
    with pytest.raises(estimator.InvalidSpecError, match="context") as e:
        parse_typed_context(text, WINDOW)
    assert says in str(e.value)
