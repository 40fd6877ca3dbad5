"""KV-cache bytes.

Per token and sequence, every layer stores K and V: ``2 x layers x kv_heads x head_dim``
elements. Llama 3.2 3B in bf16: 2 x 28 x 8 x 128 x 2 B = 114,688 B per token (112 KiB).

Quantized caches (transformers ``QuantizedCache``, quanto/HQQ backends) store int8 or packed
int4 values plus a scale and a zero point in the compute dtype for each group of
``KV_QUANT_GROUP`` elements along head_dim (transformers ``QuantizedCacheConfig`` default
q_group_size=64), and keep up to ``KV_RESIDUAL_TOKENS`` recent tokens unquantized
(``residual_length`` default 128).
"""

from __future__ import annotations

from .errors import UnknownNameError
from .model import ModelSpec
from .units import cdiv, check_int

# Bytes per element of each KV dtype; "auto" follows the model's compute dtype.
KV_DTYPES = ("auto", "fp32", "bf16", "fp16", "fp8", "int8", "int4")
ELEMENT_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4}
KV_QUANT_GROUP = 64  # transformers QuantizedCacheConfig.q_group_size default
KV_RESIDUAL_TOKENS = 128  # transformers QuantizedCacheConfig.residual_length default


def resolve_kv_dtype(kv_dtype: str, compute_bytes: int) -> str:
    if kv_dtype not in KV_DTYPES:
        raise UnknownNameError(f"kv_dtype must be one of {', '.join(KV_DTYPES)}: {kv_dtype!r}")
    if kv_dtype == "auto":
        return "fp32" if compute_bytes == 4 else "bf16"
    return kv_dtype


def is_quantized_kv(kv_dtype: str) -> bool:
    return kv_dtype in ("int8", "int4")


def kv_layer_linear(spec: ModelSpec, batch: int, kv_dtype: str, compute_bytes: int, tokens: int) -> tuple[int, int]:
    """One layer's K (or V) tensor as (bytes per token, constant bytes) around ``tokens`` tokens.

    The tensor holds ``per_token * tokens + constant`` bytes. The constant is the unquantized
    residual of a quantized cache once it is full (``KV_RESIDUAL_TOKENS``); below that the residual
    grows with every token and counts per token.
    """
    kv_dtype = resolve_kv_dtype(kv_dtype, compute_bytes)
    heads = batch * spec.num_key_value_heads
    per_token = cdiv(heads * spec.head_dim * ELEMENT_BITS[kv_dtype], 8)
    if not is_quantized_kv(kv_dtype):
        return per_token, 0
    per_token += 2 * compute_bytes * heads * cdiv(spec.head_dim, KV_QUANT_GROUP)  # scale + zero point
    residual_per_token = heads * spec.head_dim * compute_bytes
    if tokens >= KV_RESIDUAL_TOKENS:
        return per_token, KV_RESIDUAL_TOKENS * residual_per_token
    return per_token + residual_per_token, 0


def kv_layer_tensor_bytes(spec: ModelSpec, tokens: int, batch: int, kv_dtype: str, compute_bytes: int = 2) -> int:
    """Bytes of one layer's K (or V) tensor holding ``tokens`` tokens for ``batch`` sequences."""
    check_int(tokens, "tokens", 0)
    check_int(batch, "batch", 1)
    per_token, const = kv_layer_linear(spec, batch, kv_dtype, compute_bytes, tokens)
    return per_token * tokens + const


def kv_bytes_per_token(spec: ModelSpec, kv_dtype: str = "bf16", compute_bytes: int = 2) -> int:
    """KV bytes one token adds for one sequence, all layers (quantized: without the residual)."""
    kv_dtype = resolve_kv_dtype(kv_dtype, compute_bytes)
    per_layer = spec.num_key_value_heads * spec.head_dim * ELEMENT_BITS[kv_dtype] // 8
    if is_quantized_kv(kv_dtype):
        per_layer += 2 * compute_bytes * spec.num_key_value_heads * cdiv(spec.head_dim, KV_QUANT_GROUP)
    return 2 * spec.num_hidden_layers * per_layer


def kv_cache_bytes(spec: ModelSpec, tokens: int, batch: int = 1, kv_dtype: str = "bf16", compute_bytes: int = 2) -> int:
    """Whole-cache bytes: K and V of every layer for ``tokens`` tokens and ``batch`` sequences."""
    return 2 * spec.num_hidden_layers * kv_layer_tensor_bytes(spec, tokens, batch, kv_dtype, compute_bytes)
