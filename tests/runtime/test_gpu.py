"""GPU checks: run only where CUDA is available (``-m gpu`` selects them)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_measure_narrow_counters(model_dirs):
    from estimator.model import load_model
    from estimator.quant import weight_bytes
    from runtime import measure

    r = measure(device="cuda", model=model_dirs["narrow"], quant="bf16", context=256, new_tokens=4)
    assert r["status"] == "ok", r["error"]
    assert r["weights_bytes"] == weight_bytes(load_model(model_dirs["narrow"]), "bf16").total_bytes
    for ph in ("prefill", "decode"):
        p = r["phases"][ph]
        assert p["peak_reserved_bytes"] >= p["peak_allocated_bytes"] > r["weights_bytes"]
    assert r["environment"]["gpu_name"] and r["environment"]["gpu_total_memory_bytes"]


@pytest.mark.parametrize("quant", ["bf16", "nf4", "int8"])
def test_cuda_llama_3b_weights_exact_and_peak_close(quant):
    from estimator import estimate
    from estimator.report import measured_gpu as measured_gpu
    from runtime import measure

    r = measure(device="cuda", model="llama-3.2-3b", quant=quant, context=4096, new_tokens=8)
    assert r["status"] == "ok", r["error"]
    e = estimate("llama-3.2-3b", quant=quant, context=4096, new_tokens=8, gpu=measured_gpu(r["environment"]))
    assert r["weights_bytes"] == e.weights_bytes
    assert r["kv_cache_bytes"] == e.kv_cache_bytes
    # A loose sanity bound; the validation report holds the real residuals.
    assert abs(e.peak_allocated_bytes - r["peak_allocated_bytes"]) / r["peak_allocated_bytes"] < 0.10


def test_cuda_oom_is_a_result():
    from runtime import measure

    free, _ = torch.cuda.mem_get_info()
    batch = 64  # 64 x 128K tokens of KV (7 GiB each) cannot fit any single GPU
    r = measure(device="cuda", model="llama-3.2-3b", quant="nf4", context=131072, batch=batch, new_tokens=1)
    assert r["status"] == "oom", (r["status"], r["error"], free)
