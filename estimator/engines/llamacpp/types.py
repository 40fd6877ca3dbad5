"""GGML type tables and byte sizes for the llama.cpp memory model.

Block formats of the ggml types, the llama_ftype names with their base tensor type, the KV cache
types, the buffer alignments and paddings of the CUDA and CPU backends, and the row / tensor byte
functions (``ggml_row_size`` / ``ggml_nbytes``).
"""

from __future__ import annotations

from ...errors import InvalidSpecError

MiB = 1 << 20

# --- block formats -----------------------------------------------------------------------
# (elements per block, bytes per block), ggml/src/ggml-common.h (block_q4_0 = half d + 16 B qs,
# block_q4_K = 2 halves + 12 B scales + 128 B qs, ...), and ggml.c type_traits.
GGML_TYPES: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "Q8_K": (256, 292),
    "IQ4_NL": (32, 18),
    "IQ4_XS": (256, 136),
    "I8": (1, 1),
    "I16": (1, 2),
    "I32": (1, 4),
    "I64": (1, 8),
    "F64": (1, 8),
}

# llama_ftype name -> default (base) tensor type, src/llama-quant.cpp llama_model_quantize_impl.
FTYPES: dict[str, str] = {
    "f32": "F32",
    "f16": "F16",
    "bf16": "BF16",
    "q8_0": "Q8_0",
    "q6_k": "Q6_K",
    "q5_k_m": "Q5_K",
    "q5_k_s": "Q5_K",
    "q5_0": "Q5_0",
    "q4_k_m": "Q4_K",
    "q4_k_s": "Q4_K",
    "q4_0": "Q4_0",
    "q3_k_l": "Q3_K",
    "q3_k_m": "Q3_K",
    "q3_k_s": "Q3_K",
    "q2_k": "Q2_K",
    "iq4_xs": "IQ4_XS",
}
GGUF_QUANTS = (
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q6_k",
    "q5_k_m",
    "q5_k_s",
    "q5_0",
    "q4_k_m",
    "q4_k_s",
    "q4_0",
    "q3_k_m",
    "q3_k_s",
    "q2_k",
    "iq4_xs",
)
# KV cache types accepted by llama.cpp's --cache-type-k/-v that this model covers.
KV_TYPES = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "f32": "F32", "bf16": "BF16"}

CUDA_ALIGNMENT = 128  # ggml-cuda.cu ggml_backend_cuda_buffer_type_get_alignment
CPU_ALIGNMENT = 32  # ggml-backend.cpp TENSOR_ALIGNMENT for the CPU buffer type
MATRIX_ROW_PADDING = 512  # ggml-cuda/common.cuh: quantized rows are padded to 512 on CUDA
OP_OFFLOAD_MIN_BATCH = 32  # ggml-cuda.cu: ops with host weights are offloaded for batches >= 32 rows
KQ_MASK_PAD = {"2025-01": 32, "current": 64}  # GGML_KQ_MASK_PAD in ggml.h by era
VERSIONS = ("2025-01", "current")


def row_bytes(ggml_type: str, ne0: int) -> int:
    """Bytes of one row of ``ne0`` elements (``ggml_row_size``). Raises if ne0 is not whole blocks."""
    blck, size = GGML_TYPES[ggml_type]
    if ne0 % blck:
        raise InvalidSpecError(f"row of {ne0} elements is not a whole number of {ggml_type} blocks ({blck})")
    return ne0 // blck * size


def tensor_bytes(ggml_type: str, shape: tuple[int, ...]) -> int:
    """``ggml_nbytes`` of a contiguous tensor; shape is GGUF order (ne0 = row length first)."""
    n_rows = 1
    for s in shape[1:]:
        n_rows *= s
    return row_bytes(ggml_type, shape[0]) * n_rows


def _pad(n: int, a: int) -> int:
    return -(-n // a) * a
