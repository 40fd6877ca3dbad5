"""ExecuTorch: program size and runtime memory of the Llama 3.2 on-device variants."""

from __future__ import annotations

import pytest

from estimator.engines import executorch as et
from estimator.errors import InvalidSpecError, UnknownNameError
from estimator.model import load_preset

MiB = 1 << 20
S3 = load_preset("llama-3.2-3b")


def test_bf16_program_is_params_plus_rope_tables():
    e = et.estimate_executorch(S3, "bf16", 2048)
    assert e.weights_bytes == 2 * 3_212_749_824
    assert e.rope_tables_bytes == 2 * 2048 * 64 * 4
    assert e.program_bytes == e.weights_bytes + e.rope_tables_bytes


def test_variant_order():
    """4-bit variants are well under half the BF16 file; QAT+LoRA adds the rank-16 adapters."""
    b, s, q = (et.estimate_executorch(S3, v, 8192) for v in et.VARIANTS)
    assert s.program_bytes < 0.45 * b.program_bytes
    assert q.program_bytes - s.program_bytes == q.lora_bytes > 0
    # rank 16 x (in + out) per linear, fp32: q 6144, k 4096, v 4096, o 6144, gate/up/down 11264 each
    assert q.lora_bytes == 16 * 4 * 28 * (6144 + 4096 + 4096 + 6144 + 3 * 11264)


def test_runtime_grows_with_context():
    a = et.estimate_executorch(S3, "spinquant", 2048)
    b = et.estimate_executorch(S3, "spinquant", 8192)
    assert b.kv_cache_bytes == 4 * a.kv_cache_bytes
    assert b.runtime_bytes > a.runtime_bytes
    # fp32 KV in the quantized export: 28 layers x 2 x 1024 x 4 B per token
    assert a.kv_cache_bytes == 2048 * 28 * 2 * 1024 * 4


def test_bad_inputs():
    with pytest.raises(UnknownNameError, match="variant"):
        et.estimate_executorch(S3, "int2")
    with pytest.raises(InvalidSpecError, match="context"):
        et.estimate_executorch(S3, "bf16", 0)


def test_four_bit_variants_overtake_bf16_past_the_crossover():
    """-d fp32 doubles the per-token KV and activation bytes: the 4-bit variants, smaller at short
    context, need more runtime memory than bf16 from crossover_context on (3B: between 8K and 32K)."""
    for v in ("spinquant", "qat-lora"):
        t = et.crossover_context(S3, v)
        assert 8192 < t < 32768
        diff = [
            et.estimate_executorch(S3, v, n).runtime_bytes - et.estimate_executorch(S3, "bf16", n).runtime_bytes
            for n in (t - 1, t)
        ]
        assert diff[0] <= 0 < diff[1]


def test_int8_kv_cache_by_hand():
    """--quantize_kv_cache: head_dim int8 values + fp32 scale + int8 zero point per token and KV head."""
    e = et.estimate_executorch(S3, "spinquant", 8192, kv_cache="int8")
    assert e.kv_cache_bytes == 28 * 2 * 8192 * 8 * (128 + 4 + 1)
    assert e.kv_cache_bytes < et.estimate_executorch(S3, "spinquant", 8192).kv_cache_bytes // 3
    assert et.crossover_context(S3, "spinquant", "int8") > 131072  # stays under bf16 over the whole window
    with pytest.raises(UnknownNameError):
        et.estimate_executorch(S3, "spinquant", 8192, kv_cache="fp8")
