"""Solvers on the estimate's range: the largest context / batch / max_model_len / n_ctx that fits
for certain (the range's high end of device used fits) and that may fit (its low end fits).

Each answer is checked against the verdict of an ``estimate()`` at the answer and one step past it,
so the solvers' transformed limits (``solve.point_limit``) cannot drift from what an estimate says."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import estimator as E
from estimator.cli import main
from estimator.engines import llamacpp as lc
from estimator.engines import vllm as vl
from estimator.engines.llamacpp.pool import cuda_pool_high_bytes
from estimator.model import load_preset
from estimator.overhead import CUBLAS_WORKSPACE_LARGE_BYTES, cuda_context_range_bytes
from estimator.report import fit_verdict
from estimator.solve import point_limit

GiB = 1 << 30
MiB = 1 << 20
S3 = load_preset("llama-3.2-3b")


def _ends(e: E.Estimate) -> tuple[int, int]:
    return e.device_used_low_bytes, e.device_used_high_bytes


@settings(max_examples=12, deadline=None)
@given(
    quant=st.sampled_from(["bf16", "int8", "nf4"]),
    gpu=st.sampled_from(["rtx-3060-12gb", "rtx-4090-24gb", "rtx-3050-8gb"]),
    attn=st.sampled_from(["sdpa", "eager"]),
)
def test_max_context_on_each_end(quant, gpu, attn):
    cap = E.get_gpu(gpu).memory_bytes
    certain, point, possible = (
        E.max_context("llama-3.2-3b", quant, gpu=gpu, attn=attn, bound=b) for b in ("high", "point", "low")
    )
    assert certain <= point <= possible
    window = S3.max_position_embeddings
    for c, end in ((certain, 1), (possible, 0)):
        if c:
            assert _ends(E.estimate("llama-3.2-3b", quant=quant, context=c, gpu=gpu, attn=attn))[end] <= cap
        if c < window:
            assert _ends(E.estimate("llama-3.2-3b", quant=quant, context=c + 1, gpu=gpu, attn=attn))[end] > cap or (
                c == 0
            )
    if certain:
        e = E.estimate("llama-3.2-3b", quant=quant, context=certain, gpu=gpu, attn=attn)
        assert fit_verdict(e, cap) == "fits"
    if possible < window:
        e = E.estimate("llama-3.2-3b", quant=quant, context=possible + 1, gpu=gpu, attn=attn)
        assert fit_verdict(e, cap) == "does not fit"


def test_every_shorter_context_fits_for_certain():
    gpu = "rtx-3060-12gb"
    certain = E.max_context("llama-3.2-3b", "bf16", gpu=gpu, bound="high")
    cap = E.get_gpu(gpu).memory_bytes
    for c in range(max(33, certain - 600), certain + 1, 7):
        assert fit_verdict(E.estimate("llama-3.2-3b", quant="bf16", context=c, gpu=gpu), cap) == "fits"


def test_max_batch_on_each_end():
    kw = dict(context=8192, gpu="rtx-4090-24gb")
    certain, point, possible = (E.max_batch("llama-3.2-3b", "bf16", bound=b, **kw) for b in ("high", "point", "low"))
    assert 0 < certain <= point <= possible
    cap = E.get_gpu("rtx-4090-24gb").memory_bytes
    assert fit_verdict(E.estimate("llama-3.2-3b", quant="bf16", batch=certain, **kw), cap) == "fits"
    assert fit_verdict(E.estimate("llama-3.2-3b", quant="bf16", batch=certain + 1, **kw), cap) != "fits"
    assert fit_verdict(E.estimate("llama-3.2-3b", quant="bf16", batch=possible + 1, **kw), cap) == "does not fit"


def test_point_limit_by_hand():
    s = E.make_settings("llama-3.2-3b", gpu="rtx-4090-24gb")
    mem = 24 * GiB
    assert point_limit(s, mem) == mem
    lo, hi = cuda_context_range_bytes("consumer")
    assert (lo, hi) == (256 * MiB, 426 * MiB)
    # low end = reserved + 256 MiB, point = reserved + 426 MiB (CUDA_CONTEXT_BYTES["consumer"])
    assert point_limit(s, mem, "low") == mem - 256 * MiB + 426 * MiB
    with pytest.raises(E.InvalidSpecError, match="bound"):
        point_limit(s, mem, "middle")


def test_cli_fit_prints_and_returns_both_ends(capsys):
    assert main(["fit", "--gpu", "rtx-3060-12gb", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["max_context_low"] <= d["max_context"] <= d["max_context_high"]
    assert main(["fit", "--gpu", "rtx-3060-12gb"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (
        f"on the range of device used: fits for certain up to {d['max_context_low']:,} tokens; "
        f"may fit up to {d['max_context_high']:,} tokens; longer ones do not fit"
    )


# --- vLLM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v0", "v1"])
def test_vllm_concurrency_range_follows_the_blocks(version):
    e = vl.estimate_vllm(S3, 24 * GiB, max_model_len=8192, version=version)
    assert e.max_concurrency_low <= e.max_concurrency <= e.max_concurrency_high
    assert e.kv_cache_tokens_low <= e.kv_cache_tokens <= e.kv_cache_tokens_high
    # by hand: V0 tokens = blocks x 16, concurrency = tokens / max_model_len;
    # V1 concurrency = blocks / ceil(8192 / 16) = blocks / 512
    if version == "v0":
        assert e.kv_cache_tokens_low == 16 * e.num_gpu_blocks_low
        assert e.max_concurrency_high == 16 * e.num_gpu_blocks_high / 8192
    else:
        assert e.max_concurrency_low == e.num_gpu_blocks_low / 512


@pytest.mark.parametrize("version", ["v0", "v1"])
def test_vllm_fit_on_each_end(version):
    total = 12 * GiB
    d = vl.fit_report(S3, total, version=version)
    certain, point, possible = d["max_context_low"], d["max_context"], d["max_context_high"]
    assert 0 < certain <= point <= possible < S3.max_position_embeddings
    assert vl.estimate_vllm(S3, total, max_model_len=certain, version=version).starts_certain
    assert not vl.estimate_vllm(S3, total, max_model_len=certain + 16, version=version).starts_certain
    assert vl.estimate_vllm(S3, total, max_model_len=possible, version=version).starts_possible
    assert not vl.estimate_vllm(S3, total, max_model_len=possible + 16, version=version).starts_possible


def test_vllm_refusals_outside_the_pool_hold_on_every_end():
    # the weights do not fit: no end of the pool's range can start it
    e = vl.estimate_vllm(load_preset("llama-3.1-8b"), 8 * GiB, max_model_len=4096)
    assert (e.starts, e.starts_certain, e.starts_possible) == (False, False, False)
    assert all(not e.starts_on(b) for b in ("point", "high", "low"))
    with pytest.raises(E.InvalidSpecError, match="bound"):
        e.starts_on("middle")


# --- llama.cpp -----------------------------------------------------------------------------------


def test_llamacpp_pool_high_by_hand():
    # Llama 3.2 3B, n_ubatch 512: the largest layer GEMM is gate/up (8192 x 3072) or down
    # (3072 x 8192), both 2 B x (8192 x 3072 + 512 x 3072 + 8192 x 512) = 61,865,984 B; padded to
    # 2 MiB: 62,914,560 B (60 MiB).
    assert 2 * (8192 * 3072 + 512 * 3072 + 8192 * 512) == 61_865_984
    assert cuda_pool_high_bytes(S3, 512, kv_cells=8192, kv_quantized=False, flash_attn=True) == 60 * MiB
    # q8_0 KV with flash attention at 131,072 cells: K and V of one layer to F16,
    # 2 x 2 B x 131,072 x 1,024 = 536,870,912 B (512 MiB) > the GEMM
    assert cuda_pool_high_bytes(S3, 512, kv_cells=131072, kv_quantized=True, flash_attn=True) == 512 * MiB
    assert cuda_pool_high_bytes(S3, 512, kv_cells=131072, kv_quantized=True, flash_attn=False) == 60 * MiB
    assert cuda_pool_high_bytes(S3, 512, kv_cells=8192, kv_quantized=False, flash_attn=False, on_gpu=False) == 0


def test_llamacpp_report_range():
    ctx = cuda_context_range_bytes("consumer")
    r = lc.estimate_report(
        S3, "q4_k_m", 8192, gpu_memory_bytes=12 * GiB, cuda_context_bytes=426 * MiB, cuda_context_range_bytes=ctx
    )
    e = lc.estimate_llamacpp(S3, "q4_k_m", 8192)
    assert r.device_used_low_bytes == e.device_bytes + 256 * MiB
    assert r.device_used_high_bytes == e.device_bytes + 426 * MiB + 60 * MiB + CUBLAS_WORKSPACE_LARGE_BYTES
    assert r.device_used_low_bytes <= r.device_used_bytes <= r.device_used_high_bytes
    # all on the CPU: the buffers alone, no range
    r0 = lc.estimate_report(S3, "q4_k_m", 8192, n_gpu_layers=0, cuda_context_range_bytes=ctx)
    assert r0.device_used_low_bytes == r0.device_used_high_bytes == r0.device_used_bytes


def test_llamacpp_fit_on_each_end():
    ctx = cuda_context_range_bytes("consumer")
    total = 8 * GiB
    d = lc.fit_report(S3, "q8_0", total, cuda_context_bytes=426 * MiB, cuda_context_range_bytes=ctx)
    certain, point, possible = d["max_context_low"], d["max_context"], d["max_context_high"]
    assert 0 < certain <= point <= possible
    for n, end, ok in ((certain, 1, True), (certain + 256, 1, False), (possible, 0, True), (possible + 256, 0, False)):
        r = lc.estimate_report(S3, "q8_0", n, gpu_memory_bytes=total, cuda_context_range_bytes=ctx)
        assert ((r.device_used_low_bytes, r.device_used_high_bytes)[end] <= total) is ok
