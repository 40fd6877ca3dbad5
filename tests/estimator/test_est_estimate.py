"""estimate(): the replay's golden values, invariants (hypothesis), solvers and sweep."""

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from estimator import (
    InvalidSpecError,
    UnknownNameError,
    best_quant,
    estimate,
    from_hf_config,
    get_gpu,
    load_model,
    make_settings,
    max_batch,
    max_context,
    smallest_gpu,
    sweep,
)
from estimator.estimate import estimate_settings
from estimator.model import preset_config
from estimator.overhead import CUBLAS_WORKSPACE_LARGE_BYTES
from estimator.quant import TRANSFORMERS_QUANTS

SPEC = load_model("llama-3.2-3b")
H, I, D, V = 3072, 8192, 128, 128256
N = 32  # default new_tokens: a context (window) of T + N holds a T-token prompt


def prefill_live_bytes(e):
    """Live tensor bytes at the prefill peak minus the weights and the cuBLAS workspace."""
    p = e.phases["prefill"]
    return p["activations_bytes"] + p["kv_cache_bytes"]


@pytest.mark.parametrize("T", [1000, 8192, 32768])
def test_prefill_peak_per_token_matches_derivation(T):
    """bf16 + SDPA, b=1: the peak is in the last layer's MLP with every layer's KV present.

    memory-model.md 4.1 (validated there against fake-tensor traces of transformers 5.23):
    KV 114,688 + MLP temporaries 6*I + four hidden-size tensors 8*H + cos/sin 4*d = 188,928 B per
    token, plus the int64 input_ids and position_ids that generate() passes (8 B per token each).
    """
    e = estimate("llama-3.2-3b", "bf16", T + N, gpu="h100-sxm-80gb")
    assert e.peak_phase == "prefill" and e.peak_at == "mlp"
    assert prefill_live_bytes(e) == T * (114_688 + 6 * I + 8 * H + 4 * D + 2 * 8)


def test_prefill_near_the_transformers_5_23_reference_traces():
    """Fake-tensor traces of transformers 5.23 quoted in memory-model.md 4.1: peak minus weights at
    T=8192 is 1,547,763,712 B, at T=32768 6,191,055,360 B. The estimate follows transformers 5.24,
    whose generate() also passes int64 position_ids (8 B per prompt token), so it is above them by
    about that; the byte-exact check is against the 5.24 trace itself (tests/runtime/test_trace.py)."""
    for T, traced in ((8192, 1_547_763_712), (32768, 6_191_055_360)):
        extra = prefill_live_bytes(estimate(context=T + N)) - traced
        assert 8 * T - 1024 <= extra <= 8 * T, (T, extra)


def test_components_and_counters():
    e = estimate("llama-3.2-3b", "bf16", 8192, gpu="h100-sxm-80gb")
    d = e.to_dict()
    assert d["weights_bytes"] == 6_425_500_160
    assert d["kv_cache_bytes"] == 114_688 * 8192  # the context is the window: 8,160 prompt + 32 new tokens
    # the overhead is its named parts, each non-negative (allocator rounding and reserved slack are
    # what the replay adds on top of the live tensors; none may be negative)
    assert d["overhead_bytes"] == sum(d["breakdown"]["overhead"].values())
    assert all(v >= 0 for v in d["breakdown"]["overhead"].values())
    assert d["device_used_bytes"] >= d["peak_reserved_bytes"] >= d["peak_allocated_bytes"]
    assert d["breakdown"]["overhead"]["cublas_workspace"] == CUBLAS_WORKSPACE_LARGE_BYTES  # Hopper: 32 MiB
    assert d["fits"] is True and d["headroom_bytes"] == get_gpu("h100-sxm-80gb").memory_bytes - d["total_bytes"]
    assert set(d["phases"]) == {"load", "prefill", "decode"}
    assert all(isinstance(v, int) for k, v in d.items() if k.endswith("_bytes") and v is not None)


def test_eager_materialises_scores():
    """eager: softmax holds the bf16 scores, the fp32 probabilities and their bf16 cast: 8 B x heads x T^2."""
    T = 4096
    sdpa = estimate(context=T + N).activations_bytes
    eager = estimate(context=T + N, attn="eager").activations_bytes
    assert eager >= 8 * 24 * T * T > 10 * sdpa


def test_full_logits_and_fp32_copy():
    """Plain forward keeps [T, V] logits in bf16; the caller's fp32 upcast adds 4 B per element, after
    the forward has returned and freed its last hidden state (as the fake-tensor trace shows)."""
    T = 4096
    last = estimate(context=T, new_tokens=0)
    full = estimate(context=T, logits="full", new_tokens=0)
    full32 = estimate(context=T, logits="full-fp32", new_tokens=0)
    assert full.peak_at == "logits"
    assert full32.activations_bytes - full.activations_bytes == 4 * T * V - 2 * T * H
    assert full.activations_bytes > last.activations_bytes


def test_padding_mask_and_chunked_prefill():
    """A padding mask forces repeat_kv (3x this layer's KV for 24:8 heads) and a float mask."""
    T = 8192
    base = estimate(context=T, new_tokens=0).activations_bytes
    padded = estimate(context=T, padding=True, new_tokens=0).activations_bytes
    assert padded > base
    chunked = estimate(context=T, prefill_chunk=1024, new_tokens=0).activations_bytes
    assert chunked < base


def test_bnb_4bit_fp32_compute_costs_more():
    T = 8192
    assert (
        estimate(quant="nf4", context=T, bnb_compute_dtype="fp32").activations_bytes
        > estimate(quant="nf4", context=T).activations_bytes
    )


def test_static_cache_holds_max_length_from_the_start():
    e = estimate(context=4096, cache="static", max_cache_len=8192, new_tokens=32)
    assert e.kv_cache_bytes == 114_688 * 8192
    with pytest.raises(InvalidSpecError, match="max_cache_len"):
        estimate(context=4096, cache="static", max_cache_len=4095)


def test_gpu_memory_bytes_custom():
    # fits exactly when the GPU holds the total (device used): at the total, not one byte below
    total = estimate(context=8192).total_bytes
    e = estimate(context=8192, gpu_memory_bytes=total)
    assert e.gpu_memory_bytes == total and e.fits is True and e.headroom_bytes == 0
    assert estimate(context=8192, gpu_memory_bytes=total - 1).fits is False


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"context": 0}, "context"),
        ({"batch": 0}, "batch"),
        ({"context": "8k"}, "context"),
        ({"attn": "flash"}, "attn"),
        ({"kv_dtype": "int3"}, "kv_dtype"),
        ({"quant": "q4"}, "quant"),
        ({"new_tokens": -1}, "new_tokens"),
        ({"logits": "all"}, "logits"),
        ({"gpu": "tpu-v5"}, "gpu"),
        ({"batch": True}, "batch"),
        ({"cache": "paged"}, "cache"),
        ({"context": 131073}, "window"),
        ({"context": 32, "new_tokens": 32}, "new_tokens"),
        ({"quant": "NF4"}, "quant"),
    ],
)
def test_bad_settings_name_the_field(kw, field):
    with pytest.raises((InvalidSpecError, UnknownNameError), match=field):
        estimate(**{"context": 8192, **kw})


# ---- properties ------------------------------------------------------------------------------

specs = st.builds(
    lambda layers, kv, group, d, inter_mult, vocab, tied: from_hf_config(
        {
            "model_type": "llama",
            "hidden_size": kv * group * d,
            "num_hidden_layers": layers,
            "num_attention_heads": kv * group,
            "num_key_value_heads": kv,
            "head_dim": d,
            "intermediate_size": kv * group * d * inter_mult // 2,
            "vocab_size": vocab,
            "tie_word_embeddings": tied,
            "max_position_embeddings": 131072,
        }
    ),
    st.integers(1, 8),
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from([32, 64, 128]),
    st.integers(2, 8),
    st.integers(256, 50_000),
    st.booleans(),
)
quants = st.sampled_from(TRANSFORMERS_QUANTS)


@given(
    spec=specs,
    quant=quants,
    T=st.integers(33, 40_000),
    extra=st.integers(1, 5_000),
    b=st.integers(1, 4),
    attn=st.sampled_from(["sdpa", "eager"]),
)
def test_memory_never_decreases_with_context_or_batch(spec, quant, T, extra, b, attn):
    """Adding context or batch never lowers allocated memory or the KV cache.

    Reserved segments (and so device used) may drop by less than the shared pools' round-up
    (a 2 MiB small segment plus a 20 MiB medium one) when a tensor moves to the next pool, as the
    real caching allocator does; never by more (estimator.solve.POOL_ROUNDING_BYTES).
    """
    from estimator.solve import POOL_ROUNDING_BYTES

    s = make_settings(spec, quant=quant, context=T, batch=b, attn=attn)
    a = estimate_settings(s)
    for more in (estimate_settings(replace(s, context=T + extra)), estimate_settings(replace(s, batch=b + 1))):
        assert more.peak_allocated_bytes >= a.peak_allocated_bytes
        assert more.activations_bytes + more.kv_cache_bytes >= a.activations_bytes + a.kv_cache_bytes
        assert more.peak_reserved_bytes >= a.peak_reserved_bytes - POOL_ROUNDING_BYTES
        assert more.device_used_bytes >= a.device_used_bytes - POOL_ROUNDING_BYTES
        assert more.kv_cache_bytes >= a.kv_cache_bytes


@given(spec=specs, quant=quants, T=st.integers(1, 60_000), b=st.integers(1, 8), n=st.integers(0, 64))
def test_parts_add_up_and_are_non_negative_ints(spec, quant, T, b, n):
    T = max(T, n + 1)
    e = estimate(spec, quant, T, b, new_tokens=n)
    parts = [e.weights_bytes, e.kv_cache_bytes, e.activations_bytes, e.overhead_bytes]
    assert all(isinstance(x, int) and x >= 0 for x in parts)
    assert all(v >= 0 for v in e.breakdown["overhead"].values())  # rounding and slack never negative
    assert e.peak_allocated_bytes <= e.peak_reserved_bytes <= e.device_used_bytes
    kv_elem = 4 if quant == "fp32" else 2
    # the context is the window: the cache holds exactly T tokens at the end, whatever n is
    assert e.kv_cache_bytes == 2 * spec.num_hidden_layers * b * T * spec.num_key_value_heads * spec.head_dim * kv_elem


def test_solvers():
    assert max_context(quant="bf16", gpu="gtx-1650-4gb") == 0  # 6 GiB of weights on 4 GiB
    q = best_quant(context=32768, gpu="rtx-4090-24gb")
    assert q in ("fp32", "bf16") and estimate(quant=q, context=32768, gpu="rtx-4090-24gb").fits
    g = smallest_gpu(quant="bf16", context=131072)
    assert estimate(quant="bf16", context=131072, gpu=g.key).fits
    b = max_batch(context=8192, gpu="h100-sxm-80gb")
    assert estimate(context=8192, batch=b, gpu="h100-sxm-80gb").fits
    assert not estimate(context=8192, batch=b + 1, gpu="h100-sxm-80gb").fits


def test_sweep_rows_equal_estimate():
    rows = sweep(quants=["bf16", "nf4"], contexts=[1024, 5000, 131072], gpu="rtx-4090-24gb")
    assert len(rows) == 6
    for r in rows:
        e = estimate(quant=r["quant"], context=r["context"], gpu="rtx-4090-24gb")
        assert r["total_bytes"] == e.total_bytes and r["peak_allocated_bytes"] == e.peak_allocated_bytes
        assert r["fits"] == e.fits


def test_import_is_pure():
    import subprocess
    import sys

    code = (
        "import sys, estimator; bad = [m for m in ('torch', 'numpy', 'streamlit', 'transformers', 'plotly')"
        " if m in sys.modules]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_presets_load_from_package_data():
    assert preset_config("llama-3.1-8b")["tie_word_embeddings"] is False


def test_pre_sm80_gpus_fall_back_to_math_sdpa():
    """On a T4 (sm75) enable_gqa=True leaves only SDPA's math kernel (transformers#48633), which
    materialises fp32 scores and probabilities: 2 x 4 B x heads x T^2 in the last layer."""
    T = 4096
    t4 = estimate(quant="fp16", context=T, gpu="t4-16gb")
    l4 = estimate(quant="fp16", context=T, gpu="l4-24gb")
    assert t4.peak_at == "attention" and l4.peak_at == "mlp"
    assert t4.activations_bytes >= 8 * 24 * T * T > 10 * l4.activations_bytes


def test_match_gpu_from_a_measurement_environment():
    """A measurement's recorded total memory and compute capability select its catalog GPU."""
    from estimator.gpus import match_gpu

    h100 = get_gpu("h100-sxm-80gb")
    assert match_gpu(h100.memory_bytes - 50 * 2**20, "sm90").key == "h100-sxm-80gb"
    odd = match_gpu(5 * 2**30, "sm90")
    assert odd.key == "custom" and odd.arch == "sm90" and odd.memory_bytes == 5 * 2**30
