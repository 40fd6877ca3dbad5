"""The engines as libraries: vLLM and llama.cpp give the one report type (estimator.report.MemoryReport)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from estimator.engines import (
    EngineRefusal,
    VllmStartupError,
    estimate_llamacpp,
    estimate_vllm,
    llamacpp_fit_report,
    llamacpp_report,
    max_context_llamacpp,
    max_model_len_vllm,
    vllm_estimate_report,
    vllm_fit_report,
    vllm_report,
)
from estimator.model import load_preset
from estimator.report import MemoryReport

GiB = 1 << 30
S3 = load_preset("llama-3.2-3b")


def test_vllm_report_fields():
    e = estimate_vllm(S3, 24 * GiB, max_model_len=8192)
    r = vllm_report(e, {"engine": "vllm", "context": 8192})
    assert isinstance(r, MemoryReport) and r.engine == "vllm" and r.source == "estimate"
    # each part is vLLM's own term (the overhead is what is left: non-torch, graphs, CUDA context)
    assert (r.weights_bytes, r.kv_cache_bytes, r.activations_bytes) == (
        e.weights_bytes,
        e.kv_pool_bytes,
        e.activation_peak_bytes,
    )
    assert r.overhead_bytes == e.non_torch_bytes + e.cuda_graph_bytes + e.cuda_context_bytes
    assert r.device_used_bytes == e.device_used_bytes
    assert r.gpu_memory_bytes == 24 * GiB and r.headroom_bytes == 24 * GiB - e.device_used_bytes
    d = r.to_dict()
    assert d["fits"] is e.starts and d["num_gpu_blocks"] == e.num_gpu_blocks and d["per_gpu"] is True
    assert d["peak_allocated_bytes"] is None and d["peak_reserved_bytes"] is None
    json.dumps(d)


def test_vllm_fits_means_vllm_starts():
    """vLLM's fit is whether it starts, not used <= total: at utilization 1.0 the CUDA context lies
    outside the budget, and a refused start can use less than the GPU."""
    e = estimate_vllm(S3, 16 * GiB, max_model_len=8192, gpu_memory_utilization=1.0, cuda_context_bytes=GiB // 2)
    assert e.starts and e.device_used_bytes > 16 * GiB
    assert vllm_report(e, {}).to_dict()["fits"] is True
    e = estimate_vllm(S3, 16 * GiB, max_model_len=131072, version="v0", max_num_batched_tokens=2048)
    assert not e.starts
    assert vllm_report(e, {}).to_dict()["fits"] is False


def test_vllm_estimate_and_fit_reports():
    r = vllm_estimate_report(S3, 24 * GiB, {"gpu": "mine"}, max_model_len=4096)
    assert r.settings["gpu"] == "mine" and r.settings["context"] == 4096 and r.settings["max_num_seqs"] == 256
    assert r.details["smallest_gpu_set"]["num_gpus"] == 1
    with pytest.raises(VllmStartupError, match="KV cache is needed") as err:
        vllm_estimate_report(S3, 16 * GiB, max_model_len=131072)
    assert isinstance(err.value, EngineRefusal)
    f = vllm_fit_report(S3, 16 * GiB)
    assert f["max_context"] == max_model_len_vllm(S3, 16 * GiB) > 0
    assert f["estimate"].settings["context"] == f["max_context"] and f["estimate"].to_dict()["fits"] is True
    with pytest.raises(EngineRefusal):
        vllm_fit_report(S3, 4 * GiB)


def test_llamacpp_report_and_fit():
    e = estimate_llamacpp(S3, "q4_k_m", 8192)
    r = llamacpp_report(e, {"engine": "llama.cpp"}, 12 * GiB, cuda_context_bytes=GiB // 2)
    assert r.engine == "llama.cpp" and r.overhead_bytes == GiB // 2
    assert r.device_used_bytes == e.device_bytes + GiB // 2 and r.fits is True
    assert r.to_dict()["host_bytes"] == e.host_bytes
    assert llamacpp_report(e, {}).to_dict()["fits"] is None
    f = llamacpp_fit_report(S3, "q4_k_m", 8 * GiB, cuda_context_bytes=GiB // 2)
    assert f["max_context"] == max_context_llamacpp(S3, "q4_k_m", 8 * GiB, margin_bytes=GiB // 2)
    assert f["estimate"].fits and f["estimate"].settings["context"] == f["max_context"]
    assert "estimate" not in llamacpp_fit_report(S3, "q4_k_m", GiB)


def test_libraries_and_app_never_import_the_cli():
    code = (
        "import sys, estimator.engines, estimator.engines.vllm, estimator.engines.llamacpp;"
        "print('estimator.engines.cli' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
