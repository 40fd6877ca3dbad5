"""Weight and KV bytes: golden values derived by hand, each with its derivation or measurement."""

import pytest

from estimator import kv_bytes_per_token, kv_cache_bytes, load_model, weight_bytes, weight_tensors
from estimator.quant import QUANTS

SPEC = load_model("llama-3.2-3b")
LINEAR = 2_818_572_288  # 196 linear weights: 28 x 100,663,296
EMBED_NORMS = 394_002_432 + 175_104
ROPE = 2 * 64 * 4  # inv_freq + original_inv_freq, fp32 [64] each
# Per layer: (out, in) of q, k, v, o, gate, up, down.
SHAPES = [(3072, 3072), (1024, 3072), (1024, 3072), (3072, 3072), (8192, 3072), (8192, 3072), (3072, 8192)]


def test_bf16_weights_golden():
    """2 B x 3,212,749,824 params = 6,425,499,648 B, plus 512 B of fp32 rotary buffers."""
    w = weight_bytes(SPEC, "bf16")
    assert w.parameters_bytes == 6_425_499_648
    assert (w.quant_state_bytes, w.buffers_bytes) == (0, ROPE)
    assert w.total_bytes == 6_425_500_160
    assert weight_bytes(SPEC, "fp32").parameters_bytes == 12_850_999_296


def test_int8_weights_match_bitsandbytes_on_cpu():
    """int8 weights (1 B each) + fp32 SCB per output row, embedding/norms bf16.

    Measured with bitsandbytes 0.50.2 on CPU on the full 28-layer model (shared/reference/
    environment.md section 3): param bytes 3,606,927,360, quant-state bytes 3,096,576.
    """
    w = weight_bytes(SPEC, "int8")
    assert w.parameters_bytes == LINEAR + 2 * EMBED_NORMS == 3_606_927_360
    assert w.quant_state_bytes == 28 * sum(4 * o for o, _ in SHAPES) == 3_096_576


def test_nf4_weights_match_bitsandbytes_on_cpu():
    """Packed nibbles n/2, fp32 absmax per 64 weights, fp32[16] code per layer.

    Measured (environment.md section 3, bnb 0.50.2, CPU): 2,197,641,216 param bytes and
    176,173,312 quant-state bytes.
    """
    for q in ("nf4", "fp4"):
        w = weight_bytes(SPEC, q)
        assert w.parameters_bytes == LINEAR // 2 + 2 * EMBED_NORMS == 2_197_641_216
        assert w.quant_state_bytes == 4 * LINEAR // 64 + 196 * 64 == 176_173_312


def test_nf4_double_quant_weights():
    """Double quant: uint8 absmax per 64, fp32 absmax per 256 blocks, fp32[256] code2, fp32[16] code,
    fp32 offset. environment.md measured 44,941,568 B without the 196 four-byte offsets."""
    blocks = [o * i // 64 for o, i in SHAPES]
    per_layer = sum(blocks) + sum(4 * -(-b // 256) for b in blocks) + 7 * (1024 + 64 + 4)
    w = weight_bytes(SPEC, "nf4-dq")
    assert w.quant_state_bytes == 28 * per_layer == 44_941_568 + 196 * 4
    assert w.total_bytes == 2_197_641_216 + 44_942_352 + ROPE


def test_gptq_and_awq_layouts_for_one_linear():
    """GPTQ: qweight int32 [in/8, out], qzeros int32 [in/128, out/8], scales fp16 [in/128, out], g_idx int32 [in].
    AWQ: qweight int32 [in, out/8], qzeros and scales as GPTQ, no g_idx."""
    gptq = {t.name.split(".")[-1]: t.nbytes for t in weight_tensors(SPEC, "gptq-int4") if ".0.mlp.down_proj" in t.name}
    o, i = 3072, 8192
    assert gptq == {
        "qweight": 4 * (i // 8) * o,
        "qzeros": 4 * (i // 128) * (o // 8),
        "scales": 2 * (i // 128) * o,
        "g_idx": 4 * i,
    }
    awq = {t.name.split(".")[-1]: t.nbytes for t in weight_tensors(SPEC, "awq-int4") if ".0.mlp.down_proj" in t.name}
    assert awq == {"qweight": 4 * i * (o // 8), "qzeros": 4 * (i // 128) * (o // 8), "scales": 2 * (i // 128) * o}


def test_executorch_4bit_layout():
    """Int4 group-32 linears with fp32 scales; int8 per-channel embedding and a separate int8 classifier."""
    w = weight_bytes(SPEC, "et-4bit")
    assert w.parameters_bytes == LINEAR // 2 + 2 * 394_002_432 + 2 * 175_104
    assert w.quant_state_bytes == 4 * LINEAR // 32 + 2 * 4 * 128256


def test_lower_bits_never_more_weight_bytes():
    order = ["fp32", "bf16", "int8", "nf4", "nf4-dq"]
    sizes = [weight_bytes(SPEC, q).total_bytes for q in order]
    assert sizes == sorted(sizes, reverse=True)
    assert set(QUANTS) >= set(order)


def test_kv_per_token_golden():
    """2 (K, V) x 28 layers x 8 KV heads x 128 head_dim x 2 B = 114,688 B per token."""
    assert kv_bytes_per_token(SPEC, "bf16") == 2 * 28 * 8 * 128 * 2 == 114_688
    assert kv_cache_bytes(SPEC, 8192, 1, "bf16") == 939_524_096
    assert kv_cache_bytes(SPEC, 131072, 1, "bf16") == 15_032_385_536
    assert kv_bytes_per_token(SPEC, "fp32") == 2 * 114_688
    assert kv_bytes_per_token(SPEC, "fp8") == 114_688 // 2


def test_quantized_kv_scales():
    """int8/int4 KV: values + a scale and zero point (2 B each) per 64 elements of head_dim, plus the
    128-token unquantized residual of transformers' QuantizedCache."""
    per_layer_int8 = 8 * 128 + 2 * 2 * 8 * (128 // 64)
    assert kv_bytes_per_token(SPEC, "int8") == 2 * 28 * per_layer_int8 == 60_928
    assert kv_bytes_per_token(SPEC, "int4") == 2 * 28 * (8 * 64 + 2 * 2 * 8 * 2) == 32_256
    residual = 2 * 28 * 128 * 8 * 128 * 2
    assert kv_cache_bytes(SPEC, 4096, 1, "int8") == 4096 * 60_928 + residual


@pytest.mark.parametrize("tokens,batch", [(1, 1), (1000, 3), (131072, 2)])
def test_kv_linear_in_tokens_and_batch(tokens, batch):
    assert kv_cache_bytes(SPEC, tokens, batch, "bf16") == tokens * batch * kv_bytes_per_token(SPEC, "bf16")
