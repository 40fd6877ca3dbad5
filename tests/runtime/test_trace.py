"""Trace mode against cpu mode, and the estimator against the trace of the full Llama 3.2 3B."""

from __future__ import annotations

import pytest

from estimator import estimate
from runtime import measure


@pytest.mark.parametrize("quant,attn", [("bf16", "sdpa"), ("fp32", "sdpa"), ("bf16", "eager"), ("fp16", "sdpa")])
def test_trace_and_cpu_agree_on_peak(model_dirs, quant, attn):
    kw = dict(model=model_dirs["narrow"], quant=quant, attn=attn, context=48, new_tokens=5, batch=2)
    cpu, tr = measure(device="cpu", **kw), measure(device="trace", **kw)
    assert cpu["status"] == tr["status"] == "ok", (cpu["error"], tr["error"])
    assert cpu["details"]["peak_live_bytes"] == tr["details"]["peak_live_bytes"]
    # The live peaks are the same. The trace's allocated/reserved
    # counters come from the allocator simulation; the 512-B-rounded live peak (cpu mode's
    # peak_allocated) moves to details.peak_live_rounded_bytes.
    for phase in ("prefill", "decode"):
        for f in ("weights_bytes", "kv_cache_bytes", "activations_bytes"):
            assert cpu["phases"][phase][f] == tr["phases"][phase][f]
        assert cpu["phases"][phase]["peak_allocated_bytes"] == tr["details"]["peak_live_rounded_bytes"][phase]
        assert tr["phases"][phase]["peak_allocated_bytes"] >= cpu["phases"][phase]["peak_allocated_bytes"]


def test_trace_chunked_prefill_and_full_logits(model_dirs):
    kw = dict(model=model_dirs["narrow"], context=64, new_tokens=2)
    base = measure(device="trace", **kw)
    chunked = measure(device="trace", prefill_chunk=16, **kw)
    full = measure(device="trace", logits="full-fp32", **kw)
    cpu_full = measure(device="cpu", logits="full-fp32", **kw)
    assert chunked["peak_allocated_bytes"] < base["peak_allocated_bytes"] < full["peak_allocated_bytes"]
    assert full["details"]["peak_live_bytes"] == cpu_full["details"]["peak_live_bytes"]
    assert chunked["kv_cache_bytes"] == base["kv_cache_bytes"]


@pytest.mark.parametrize("context", [8192, 32768])
def test_full_3b_trace_vs_estimator_exact(context):
    """bf16, SDPA, batch 1: the estimator's weights, KV, activations and unrounded peak (weights +
    KV + activations) equal the live tensors of the real transformers forward to the byte, in the
    prefill and in the decode phase (validation/trace has the same on 76 points)."""
    r = measure(device="trace", model="llama-3.2-3b", quant="bf16", attn="sdpa", context=context, batch=1)
    e = estimate("llama-3.2-3b", quant="bf16", attn="sdpa", context=context, batch=1)
    assert r["status"] == "ok", r["error"]
    assert (r["weights_bytes"], r["kv_cache_bytes"], r["activations_bytes"]) == (
        e.weights_bytes,
        e.kv_cache_bytes,
        e.activations_bytes,
    )
    assert r["details"]["peak_live_bytes"] == e.weights_bytes + e.kv_cache_bytes + e.activations_bytes
    for ph in ("prefill", "decode"):
        assert r["phases"][ph]["activations_bytes"] == e.phases[ph]["activations_bytes"], ph
    assert r["details"]["peak_phase"] == "prefill"


def test_fp16_softmax_to_fp32_takes_the_cuda_fused_path():
    """ATen's softmax (SoftMax.cpp) on CUDA calls _softmax(half_to_float=True) for a Half input
    with dtype=float32: only the fp32 output is allocated. On meta/CPU it converts first (an fp32
    copy, then the output). The trace's eager stand-in follows CUDA; bf16 keeps the copy there too."""
    import torch

    from runtime import trace
    from runtime.track import LiveBytes

    def allocated(dtype, cuda_path):
        x = torch.empty(4, 1000, dtype=dtype, device="meta")
        with LiveBytes() as t:
            f = trace.cuda_softmax if cuda_path else torch.nn.functional.softmax
            y = f(x, dim=-1, dtype=torch.float32)
            assert y.dtype == torch.float32
            return t.peak

    n = 4 * 1000 * 4  # fp32 bytes of the probabilities
    assert allocated(torch.float16, cuda_path=True) == n
    assert allocated(torch.float16, cuda_path=False) == 2 * n
    assert allocated(torch.bfloat16, cuda_path=True) == 2 * n
