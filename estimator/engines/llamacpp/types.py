"""GGML type tables and byte sizes for the llama.cpp memory model.

Block formats of the ggml types, the llama_ftype names with their base tensor type, the KV cache
types, the buffer alignments and paddings of the CUDA and CPU backends, and the row / tensor byte
functions (``ggml_row_size`` / ``ggml_nbytes``).
"""

from __future__ import annotations

from ...errors import InvalidSpecError, UnknownNameError

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
# The first build with per-sequence KV streams: ggml-org/llama.cpp PR #14363 "llama : add
# high-throughput mode" (merged July 2025): ``kv_unified`` false by default, one KV stream per
# sequence, ``llama_kv_cache_unified`` renamed ``llama_kv_cache``. Builds before it are the
# "2025-01" layout (one unified KV cache, KQ mask padded to 32). The build number b5913 is the one
# the log checker's fixtures place the change at; the tag of the merge commit itself was not read here.
STREAMS_BUILD = 5913
STREAMS_DATE = (2025, 7, 16)  # the merge date of PR #14363 (a date before it: the unified layout)


def resolve_build(text: str, flag: str = "--llamacpp-version") -> tuple[str, str]:
    """(layout, why) for a llama.cpp build: a layout name ("current", "2025-01"), a build number
    ("b5913", "5913") or a date ("2025-01", "2025-07-20"; a month alone is its first day). Builds from
    ``STREAMS_BUILD`` / dates from ``STREAMS_DATE`` on are "current" (per-sequence KV streams),
    earlier ones "2025-01" (unified KV). Raises ``UnknownNameError`` naming ``flag`` and the value."""
    import re

    t = str(text).strip().lower()
    if t == "current":
        return "current", "the current layout (per-sequence KV streams)"
    m = re.fullmatch(r"b?(\d{1,6})", t, re.ASCII)
    if m:
        build = int(m.group(1))
        if build >= STREAMS_BUILD:
            return "current", f"build {build} >= b{STREAMS_BUILD}: per-sequence KV streams"
        return "2025-01", f"build {build} < b{STREAMS_BUILD}: one unified KV cache"
    m = re.fullmatch(r"(20\d\d)-(\d\d)(?:-(\d\d))?", t, re.ASCII)
    if m and 1 <= int(m.group(2)) <= 12 and 1 <= int(m.group(3) or 1) <= 31:
        date = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 1))
        y, mo, d = STREAMS_DATE
        when = f"{y:04d}-{mo:02d}-{d:02d}"
        if date >= STREAMS_DATE:
            return "current", f"{t} is on or after {when} (PR #14363): per-sequence KV streams"
        return "2025-01", f"{t} is before {when} (PR #14363): one unified KV cache"
    raise UnknownNameError(
        f"{flag} must be current, a build (b5913 or 5913) or a date (2025-01 or 2025-07-20): {text!r}"
    )


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
