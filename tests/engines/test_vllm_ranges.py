"""Ranges of vLLM's non-derivable terms: non-torch growth and CUDA-graph capture memory."""

from __future__ import annotations

import math

import pytest

from estimator import calibration
from estimator.engines import public
from estimator.engines import vllm as vl
from estimator.model import load_preset

GiB = 1 << 30
MiB = 1 << 20
S1 = load_preset("llama-3.2-1b")
S3 = load_preset("llama-3.2-3b")

CASES = [
    dict(version="v0"),
    dict(version="v1"),
    dict(version="v1", cudagraph_in_budget=False),
    dict(version="v1", gpu_arch="sm90", gpu_name="H100"),
    dict(version="v1", tensor_parallel_size=2),
    dict(version="v0", enforce_eager=True),
    dict(version="v0-0.6", device_baseline_bytes=int(0.4 * GiB)),
    dict(version="v1", non_torch_bytes=100 * MiB),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_low_point_high(kw):
    e = vl.estimate_vllm(S3, 24 * GiB, max_model_len=8192, **kw)
    assert e.non_torch_low_bytes <= e.non_torch_bytes <= e.non_torch_high_bytes
    assert e.cuda_graph_bytes <= e.cuda_graph_high_bytes
    assert e.kv_pool_low_bytes <= e.kv_pool_bytes <= e.kv_pool_high_bytes
    assert e.num_gpu_blocks_low <= e.num_gpu_blocks <= e.num_gpu_blocks_high
    assert e.device_used_low_bytes <= e.device_used_bytes <= e.device_used_high_bytes
    if kw.get("enforce_eager"):
        assert e.cuda_graph_high_bytes == e.cuda_graph_bytes == 0
    if "non_torch_bytes" in kw:
        assert e.non_torch_low_bytes == e.non_torch_bytes == e.non_torch_high_bytes
    eng = "v1" if kw["version"] == "v1" else "v0"
    n = 0 if kw.get("enforce_eager") else vl.num_cuda_graphs(e.max_num_seqs, eng, None, e.max_num_batched_tokens)
    assert n == e.num_cuda_graphs
    assert e.cuda_graph_high_bytes - e.cuda_graph_bytes == n * vl.CUDA_GRAPH_EXEC_PER_GRAPH_BYTES
    r = vl.report(e, {}).to_dict()
    assert (r["device_used_low_bytes"], r["device_used_high_bytes"]) == (
        e.device_used_low_bytes,
        e.device_used_high_bytes,
    )
    assert r["fit_verdict"] in ("fits", "may fit", "does not fit")
    for k in ("non_torch_low_bytes", "cuda_graph_high_bytes", "kv_pool_low_bytes", "num_gpu_blocks_high"):
        assert r[k] == getattr(e, k)


def test_graphs_outside_the_budget_add_to_device_used_in_budget_shrink_the_pool():
    v0 = vl.estimate_vllm(S3, 24 * GiB, max_model_len=8192, version="v0")
    assert v0.device_used_high_bytes - v0.device_used_bytes == v0.cuda_graph_high_bytes - v0.cuda_graph_bytes
    v1 = vl.estimate_vllm(S3, 24 * GiB, max_model_len=8192, version="v1")
    # everything is inside the requested budget: device used does not move, the KV pool does
    assert v1.device_used_low_bytes == v1.device_used_bytes == v1.device_used_high_bytes
    assert v1.kv_pool_bytes - v1.kv_pool_low_bytes == (
        v1.cuda_graph_high_bytes - v1.cuda_graph_bytes + v1.non_torch_high_bytes - v1.non_torch_bytes
    )


def test_per_graph_bound_recomputed_from_the_csv():
    observed = public.graph_exec_per_graph_observed()
    # every vLLM row that logs graph capture memory informs it
    rows = public.rows()
    graph_rows = {rid for rid, r in rows.items() if r["engine"].startswith("vLLM") and "cuda_graph" in r["counter"]}
    assert set(observed) == graph_rows == {"GT-007", "GT-033"}
    assert vl.CUDA_GRAPH_EXEC_PER_GRAPH_BYTES == math.ceil(max(observed.values()) / MiB) * MiB


def test_non_torch_range_holds_the_cited_logs():
    lo, hi = vl.NON_TORCH_GROWTH_RANGE_BYTES
    for gib in (0.03, 0.05, 0.13):  # GTX 1080 0.6.4, T4 0.8.2 (GT-003), H100 0.11 V1
        assert lo <= gib * GiB <= hi
    assert lo <= vl.NON_TORCH_GROWTH_BYTES <= hi
    assert all(lo <= v <= hi for v in vl.NON_TORCH_GROWTH_BY_ARCH.values())


def test_calibration_coverage_recount():
    rep = calibration.report()
    rows = {r["id"]: r for r in rep["rows"]}
    for rid in ("GT-003", "GT-007", "GT-031", "GT-033"):
        r = rows[rid]
        assert r["low"] <= r["measured"] <= r["high"] and r["covered"] is True
    judged = [r for r in rep["rows"] if r["covered"] is not None]
    s = rep["summary"]
    assert (s["covered"], s["total"]) == (sum(r["covered"] for r in judged), len(judged))
    if not s["cuda_points"]:
        assert (s["covered"], s["total"]) == (24, 24)
