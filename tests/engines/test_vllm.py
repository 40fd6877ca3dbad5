"""vLLM: startup accounting, refusals, V0 vs V1, tensor/pipeline parallelism, smallest GPU set."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimator.engines import vllm as vl
from estimator.errors import InvalidSpecError, UnknownNameError
from estimator.model import load_preset

GiB = 1 << 30
MiB = 1 << 20
S1 = load_preset("llama-3.2-1b")
S3 = load_preset("llama-3.2-3b")
S8 = load_preset("llama-3.1-8b")
H100 = 85_520_809_984  # ~79.65 GiB class total


def test_weights_include_cos_sin_cache():
    parts = vl.weights_bytes_per_gpu(S3, 2)
    assert parts["cos_sin_cache"] == 131072 * 128 * 2 == 32 * MiB
    assert sum(parts.values()) == 2 * S3.num_params + 32 * MiB


def test_budget_identity():
    """requested = weights + activation peak + non-torch + pool (+ graphs in V1)."""
    for v in ("v0", "v1", "v0-0.6"):
        e = vl.estimate_vllm(S3, H100, max_model_len=8192, version=v)
        graphs = e.cuda_graph_bytes if v == "v1" else 0
        assert e.requested_memory_bytes == (
            e.weights_bytes + e.activation_peak_bytes + e.non_torch_bytes + graphs + e.kv_pool_bytes
        )
        assert e.num_gpu_blocks == e.kv_pool_bytes // e.block_bytes


def test_v1_concurrency_uses_ceil_blocks_per_request():
    e = vl.estimate_vllm(S3, H100, max_model_len=1000, version="v1")
    assert e.max_concurrency == pytest.approx(e.num_gpu_blocks / 63)
    e0 = vl.estimate_vllm(S3, H100, max_model_len=1000, version="v0")
    assert e0.max_concurrency == pytest.approx(e0.num_gpu_blocks * 16 / 1000)


def test_v0_refusal_wording():
    """V0's own error: max seq len larger than the tokens the KV cache can store."""
    e = vl.estimate_vllm(S3, 16 * GiB, max_model_len=131072, version="v0", max_num_batched_tokens=2048)
    assert not e.starts
    assert "is larger than the maximum number of tokens that can be stored in KV cache" in e.refusal
    assert "(131072)" in e.refusal


def test_v1_refusal_wording_and_estimated_length():
    e = vl.estimate_vllm(S3, 16 * GiB, max_model_len=131072, version="v1")
    assert not e.starts
    assert "KV cache is needed, which is larger than the available KV cache memory" in e.refusal
    assert "estimated maximum model length is" in e.refusal


def test_no_memory_and_oom_refusals():
    e = vl.estimate_vllm(S8, 12 * GiB, max_model_len=4096, version="v1")
    assert not e.starts and "CUDA out of memory" in e.refusal
    e = vl.estimate_vllm(S3, 8 * GiB, max_model_len=4096, version="v0", gpu_memory_utilization=0.7)
    assert not e.starts and "No available memory for the cache blocks" in e.refusal


def test_v1_free_memory_check():
    e = vl.estimate_vllm(S1, 24 * GiB, max_model_len=4096, free_memory_bytes=20 * GiB)
    assert not e.starts and "less than desired GPU memory utilization" in e.refusal


def test_max_model_len_beyond_window_refused():
    with pytest.raises(vl.VllmStartupError, match="max_position_embeddings"):
        vl.estimate_vllm(S3, H100, max_model_len=200_000)


def test_fp8_kv_halves_block():
    assert vl.kv_bytes_per_block(S3, 1) * 2 == vl.kv_bytes_per_block(S3, 2) == 1_835_008
    a = vl.estimate_vllm(S3, H100, max_model_len=8192, kv_cache_dtype="fp8")
    b = vl.estimate_vllm(S3, H100, max_model_len=8192)
    assert a.num_gpu_blocks == pytest.approx(2 * b.num_gpu_blocks, abs=1)


def test_sampler_peak_scales_with_num_seqs():
    """The profile-run sampler sorts [num_reqs, vocab]: more max_num_seqs, larger peak, smaller pool."""
    a = vl.estimate_vllm(S3, H100, max_model_len=8192, max_num_seqs=256, max_num_batched_tokens=8192)
    b = vl.estimate_vllm(S3, H100, max_model_len=8192, max_num_seqs=1024, max_num_batched_tokens=8192)
    assert b.activation_peak_bytes > a.activation_peak_bytes
    assert b.kv_pool_bytes < a.kv_pool_bytes
    assert vl.sampler_peak_bytes(1, 1000, 2) == 1000 * 38
    assert vl.sampler_peak_bytes(1, 1000, 4) == 1000 * 36


def test_tensor_parallel_splits_weights_and_kv_heads():
    one = sum(vl.weights_bytes_per_gpu(S8, 2, 1).values())
    two = sum(vl.weights_bytes_per_gpu(S8, 2, 2).values())
    cos = vl.weights_bytes_per_gpu(S8, 2, 2)["cos_sin_cache"]
    norms = (2 * 32 + 1) * 4096 * 2
    assert two == (one - cos - norms) // 2 + cos + norms  # replicated: rope cache and norms
    assert vl.kv_heads_per_gpu(S8, 2) == 4
    assert vl.kv_heads_per_gpu(S8, 16 if False else 8) == 1
    assert vl.kv_bytes_per_block(S8, 2, 2) * 2 == vl.kv_bytes_per_block(S8, 2, 1)


def test_tp_beyond_kv_heads_replicates():
    spec = load_preset("llama-3.2-3b")  # 24 heads, 8 KV heads
    assert vl.kv_heads_per_gpu(spec, 8) == 1
    with pytest.raises(InvalidSpecError, match="tensor_parallel_size"):
        vl.weights_bytes_per_gpu(spec, 2, 5)


def test_pipeline_parallel_splits_layers():
    assert vl.pp_layers(28, 3, 0) == (0, 9) and vl.pp_layers(28, 3, 2) == (18, 28)
    first = vl.weights_bytes_per_gpu(S8, 2, 1, 2, 0)
    last = vl.weights_bytes_per_gpu(S8, 2, 1, 2, 1)
    assert first["embedding"] > 0 and first["lm_head"] == 0
    assert last["lm_head"] > 0 and last["embedding"] == 0
    tied_last = vl.weights_bytes_per_gpu(S3, 2, 1, 2, 1)
    assert tied_last["embedding"] > 0  # the last rank keeps its own embedding to tie lm_head


def test_tp_gives_more_kv_per_request():
    a = vl.estimate_vllm(S8, 24 * GiB, max_model_len=32768, version="v1")
    b = vl.estimate_vllm(S8, 24 * GiB, max_model_len=32768, version="v1", tensor_parallel_size=2)
    assert b.max_concurrency > 2 * a.max_concurrency
    assert b.non_torch_bytes > a.non_torch_bytes  # communication buffers


class _G:
    def __init__(self, key, gib):
        self.key, self.memory_bytes, self.vendor = key, int(gib * GiB), "nvidia"


def test_smallest_gpu_set():
    gpus = [_G("small", 16), _G("mid", 24), _G("big", 80)]
    r = vl.smallest_gpu_set(S8, 131072, gpus=gpus)
    assert r["gpu"].key == "big" and r["num_gpus"] == 1
    r = vl.smallest_gpu_set(S8, 131072, gpus=[_G("small", 16), _G("mid", 24)])
    assert r["num_gpus"] >= 2 and r["estimate"].starts
    assert vl.smallest_gpu_set(S8, 131072, gpus=[_G("tiny", 2)], max_gpus=2) is None


def test_smallest_gpu_set_catalog():
    r = vl.smallest_gpu_set(S3, 8192)
    assert r is not None and r["estimate"].starts


def test_max_model_len_vllm():
    n = vl.max_model_len_vllm(S3, 16 * GiB, version="v1")
    assert 0 < n < 131072 and n % 16 == 0
    assert vl.estimate_vllm(S3, 16 * GiB, max_model_len=n).starts
    assert not vl.estimate_vllm(S3, 16 * GiB, max_model_len=n + 16).starts
    assert vl.max_model_len_vllm(S1, H100) == 131072


def test_bad_inputs_named():
    with pytest.raises(UnknownNameError, match="vllm version"):
        vl.estimate_vllm(S3, H100, version="v2")
    with pytest.raises(InvalidSpecError, match="gpu_memory_utilization"):
        vl.estimate_vllm(S3, H100, gpu_memory_utilization=1.5)
    with pytest.raises(UnknownNameError, match="kv_dtype"):
        vl.estimate_vllm(S3, H100, kv_cache_dtype="int3")


@settings(max_examples=25, deadline=None)
@given(util=st.floats(0.5, 0.95), extra=st.floats(0.0, 0.04))
def test_more_utilization_more_blocks(util, extra):
    a = vl.estimate_vllm(S1, 24 * GiB, gpu_memory_utilization=util, max_model_len=4096)
    b = vl.estimate_vllm(S1, 24 * GiB, gpu_memory_utilization=util + extra, max_model_len=4096)
    assert b.num_gpu_blocks >= a.num_gpu_blocks


def test_sort_path_temporaries():
    """torch.sort's CUDA path depends on the row count (SortStable.cu): 32 B/element of outputs and
    temporaries for 1 or >= 128 rows, 44 B/element for 2..127 rows (sort by full sort)."""
    assert vl.sort_bytes_per_element(1) == vl.sort_bytes_per_element(128) == 32
    assert vl.sort_bytes_per_element(64) == 44
    assert vl.sampler_peak_bytes(64, 1000, 2) == 64 * 1000 * (2 + 4 + 44)


# Independent public measurements (not in the project CSV): vLLM 0.11.0 V1 on an H100 reporting
# 79.18 GiB, util 0.9, max-model-len 16000, block size 128, default batch limits
# (llm-d/llm-d-benchmark config_explorer/empirical-vllm-memory-results.md). In 0.11 the CUDA graphs
# were captured after the KV allocation (cudagraph_in_budget=False).
def test_llmd_h100_llama31_8b():
    e = vl.estimate_vllm(
        S8,
        round(79.18 * GiB),
        gpu_memory_utilization=0.9,
        max_model_len=16000,
        block_size=128,
        version="v1",
        gpu_name="NVIDIA H100 80GB HBM3",
        gpu_arch="sm90",
        cudagraph_in_budget=False,
    )
    assert e.max_num_seqs == 1024 and e.max_num_batched_tokens == 8192
    assert abs(e.weights_bytes / GiB - 14.99) <= 0.015  # weights, 0.1%
    assert abs(e.activation_peak_bytes / GiB - 4.76) / 4.76 <= 0.05  # "torch peak memory increase"
    assert abs(e.kv_pool_bytes / GiB - 51.38) / 51.38 <= 0.01  # "Available KV cache memory"


# ---------------------------------------------------------------------------- --quantization


def _linear_numel(spec) -> int:
    H, I = spec.hidden_size, spec.intermediate_size
    return spec.num_hidden_layers * (2 * H * spec.q_dim + 2 * H * spec.kv_dim + 3 * H * I)


def test_bitsandbytes_weights_by_hand():
    """In-flight NF4 (bitsandbytes_loader._unquantized_generator, then dequantize_dq): per shard
    numel/2 packed + fp32 absmax per 64 + a 16-entry fp32 code table; 7 shards a layer; the rest bf16."""
    n = _linear_numel(S3)
    rest = 2 * (S3.num_params - n)  # tied embedding and the norms stay bf16
    packed = n // 2 + 4 * (n // 64) + 28 * 7 * 64
    got = sum(vl.weights_bytes_per_gpu(S3, 2, quantization="bitsandbytes").values())
    assert got == packed + rest + 32 * MiB


def test_bitsandbytes_weights_equal_transformers_nf4_layout():
    """The same bitsandbytes NF4 layout transformers loads with load_in_4bit (no double quant):
    only vLLM's rotary cos_sin_cache differs."""
    from estimator.quant import weight_bytes

    w = weight_bytes(S3, "nf4")
    got = sum(vl.weights_bytes_per_gpu(S3, 2, quantization="bitsandbytes").values())
    assert got == w.parameters_bytes + w.quant_state_bytes + 32 * MiB


def test_fp8_weights_by_hand():
    n = _linear_numel(S3)
    got = sum(vl.weights_bytes_per_gpu(S3, 2, quantization="fp8").values())
    assert got == n + 28 * 7 * 4 + 2 * (S3.num_params - n) + 32 * MiB


def test_quantized_weights_shrink_and_pool_grows():
    base = vl.estimate_vllm(S3, H100, max_model_len=8192)
    for q in vl.QUANTIZATIONS:
        e = vl.estimate_vllm(S3, H100, max_model_len=8192, quantization=q)
        assert e.weights_bytes < base.weights_bytes
        assert e.num_gpu_blocks > base.num_gpu_blocks


def test_bitsandbytes_prefill_holds_a_dequantized_shard():
    """matmul_4bit dequantizes the up shard [I, H] and returns its [T, I] product at gate_up."""
    T, d, I, H = 2048, 2, S3.intermediate_size, S3.hidden_size
    extra = vl.forward_peak_bytes(S3, T, d, quantization="bitsandbytes") - vl.forward_peak_bytes(S3, T, d)
    assert extra == I * H * d + T * I * d
    assert vl.forward_peak_bytes(S3, 1, d, quantization="bitsandbytes") == vl.forward_peak_bytes(S3, 1, d)


def test_quantization_capability_refusals():
    """vLLM's own message (VllmConfig._get_quantization_config): fp8 needs sm80, bitsandbytes sm70."""
    t4 = vl.estimate_vllm(S3, 15_826_954_486, max_model_len=8192, quantization="fp8", gpu_arch="sm75")
    assert not t4.starts and "Minimum capability: 80. Current capability: 75." in t4.refusal
    assert vl.estimate_vllm(S3, 15_826_954_486, max_model_len=8192, quantization="bitsandbytes", gpu_arch="sm75").starts
    p100 = vl.estimate_vllm(S3, 17 * GiB, max_model_len=8192, quantization="bitsandbytes", gpu_arch="sm60")
    assert not p100.starts and "Minimum capability: 70" in p100.refusal
    with pytest.raises(UnknownNameError):
        vl.estimate_vllm(S3, H100, quantization="awq")


def test_smallest_utilization_is_the_edge():
    """Starts at the returned utilization, not one step below; None when 1.0 does not start."""
    u = vl.smallest_utilization(S3, H100, max_model_len=8192)
    assert u is not None and 0 < u < 0.9
    assert vl.estimate_vllm(S3, H100, max_model_len=8192, gpu_memory_utilization=u).starts
    assert not vl.estimate_vllm(S3, H100, max_model_len=8192, gpu_memory_utilization=round(u - 0.01, 2)).starts
    assert vl.smallest_utilization(S8, 8 * GiB, max_model_len=8192) is None
