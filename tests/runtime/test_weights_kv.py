"""Weights and KV bytes measured on real CPU tensors equal the estimator's bytes exactly."""

from __future__ import annotations

import pytest

from estimator.kv import kv_cache_bytes
from estimator.model import load_model
from estimator.quant import weight_bytes
from runtime import measure
from runtime.settings import RUNTIME_QUANTS

CTX, NEW = 16, 2


@pytest.mark.parametrize("config", ["narrow", "odd-untied-bias", "real-width-1layer"])
@pytest.mark.parametrize("quant", RUNTIME_QUANTS)
def test_cpu_weights_and_kv_equal_estimator(model_dirs, config, quant):
    r = measure(device="cpu", model=model_dirs[config], quant=quant, context=CTX, new_tokens=NEW)
    assert r["status"] == "ok", r["error"]
    spec = load_model(model_dirs[config])
    wb = weight_bytes(spec, quant)
    assert r["weights"] == {
        "parameters_bytes": wb.parameters_bytes,
        "quant_state_bytes": wb.quant_state_bytes,
        "buffers_bytes": wb.buffers_bytes,
        "total_bytes": wb.total_bytes,
    }
    assert r["weights_bytes"] == wb.total_bytes
    cb = 4 if quant == "fp32" else 2
    # context is the window: the cache ends holding CTX tokens, the prompt is CTX - NEW of them
    assert r["kv_cache_bytes"] == kv_cache_bytes(spec, CTX, 1, "auto", cb)
    assert r["phases"]["prefill"]["kv_cache_bytes"] == kv_cache_bytes(spec, CTX - NEW, 1, "auto", cb)


@pytest.mark.parametrize("quant", RUNTIME_QUANTS)
def test_trace_weights_equal_estimator_full_3b(quant):
    """The traced full-size model (bnb layouts produced by bitsandbytes itself) holds exactly
    the estimator's bytes."""
    r = measure(device="trace", model="llama-3.2-3b", quant=quant, context=16, new_tokens=1)
    assert r["status"] == "ok", r["error"]
    assert r["weights_bytes"] == weight_bytes(load_model("llama-3.2-3b"), quant).total_bytes
