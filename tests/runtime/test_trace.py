"""Trace mode against cpu mode, and the estimator against the trace of the full Llama 3.2 3B."""

from __future__ import annotations

import pytest

from estimator import estimate
from runtime import generate, measure


@pytest.mark.parametrize("quant,attn", [("bf16", "sdpa"), ("fp32", "sdpa"), ("bf16", "eager"), ("fp16", "sdpa")])
def test_trace_and_cpu_agree_on_peak(model_dirs, quant, attn):
    kw = dict(model=model_dirs["narrow"], quant=quant, attn=attn, context=48, new_tokens=5, batch=2)
    cpu, tr = measure(device="cpu", **kw), measure(device="trace", **kw)
    assert cpu["status"] == tr["status"] == "ok", (cpu["error"], tr["error"])
    assert cpu["details"]["peak_live_bytes"] == tr["details"]["peak_live_bytes"]
    for phase in ("prefill", "decode"):  # trace skips the middle decode steps; the peak is the same
        assert cpu["phases"][phase] == tr["phases"][phase]
    assert tr["details"]["decode_steps_traced"] == [0, 4]


def test_trace_chunked_prefill_and_full_logits(model_dirs):
    kw = dict(model=model_dirs["narrow"], context=64, new_tokens=2)
    base = measure(device="trace", **kw)
    chunked = measure(device="trace", prefill_chunk=16, **kw)
    full = measure(device="trace", logits="full-fp32", **kw)
    cpu_full = measure(device="cpu", logits="full-fp32", **kw)
    assert chunked["peak_allocated_bytes"] < base["peak_allocated_bytes"] < full["peak_allocated_bytes"]
    assert full["details"]["peak_live_bytes"] == cpu_full["details"]["peak_live_bytes"]
    assert chunked["kv_cache_bytes"] == base["kv_cache_bytes"]


RESIDUALS: dict[int, dict[str, int]] = {}


@pytest.mark.parametrize("context", [8192, 32768])
def test_full_3b_trace_vs_estimator_within_1pct(context):
    """bf16, SDPA, batch 1: the estimator's activations and its unrounded peak (weights + KV +
    activations, i.e. peak_allocated minus the cuBLAS workspace and allocator rounding) match
    the live-tensor peak of the real transformers forward within 1%."""
    r = measure(device="trace", model="llama-3.2-3b", quant="bf16", attn="sdpa", context=context, batch=1)
    e = estimate("llama-3.2-3b", quant="bf16", attn="sdpa", context=context, batch=1)
    assert r["status"] == "ok", r["error"]
    assert r["weights_bytes"] == e.weights_bytes
    assert r["kv_cache_bytes"] == e.kv_cache_bytes
    est_peak = e.weights_bytes + e.kv_cache_bytes + e.activations_bytes
    live = r["details"]["peak_live_bytes"]
    RESIDUALS[context] = {"trace_peak_live": live, "estimate_peak_raw": est_peak,
                          "trace_activations": r["activations_bytes"], "estimate_activations": e.activations_bytes}
    assert abs(est_peak - live) / live < 0.01, RESIDUALS[context]
    assert abs(e.activations_bytes - r["activations_bytes"]) / r["activations_bytes"] < 0.01, RESIDUALS[context]
    assert r["details"]["peak_phase"] == "prefill"


def test_jump_matches_stepwise_decode(model_dirs):
    """``skip_middle`` grows the cache to its final length; the decode peak equals stepping."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from runtime import trace
    from runtime.settings import make_settings
    from runtime.track import LiveBytes

    peaks = []
    for skip in (False, True):
        s = make_settings(model=model_dirs["narrow"], context=40, new_tokens=6, device="trace")
        model = trace.build(s)
        with FakeTensorMode(allow_non_fake_inputs=True):
            trace.materialise(model)
            t = LiveBytes()
            seen = {}

            def phase(name, cache, t=t, seen=seen):
                if name == "end":
                    seen["decode"] = t.peak
                t.reset_peak()

            with t:
                g = generate.run(model, s, trace.DEVICE, phase=phase, skip_middle=skip)
            peaks.append((seen["decode"], tuple(g["ids"].shape)))
    assert peaks[0] == peaks[1]
    # window 40 = prompt 34 + 6 new tokens; ids also hold the last sampled token, never cached
    assert torch.Size(peaks[0][1]) == (1, 41)
