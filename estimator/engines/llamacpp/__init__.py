"""llama.cpp / Ollama memory model for GGUF files: weights, KV cache, compute buffers, offload.

What llama.cpp allocates at startup, and prints, and where each part is modelled:

- ``types``: ggml block formats, llama_ftype base types, KV cache types, backend alignments and
  paddings, row / tensor bytes.
- ``mixture``: the type ``llama-quantize`` picks for each tensor of a mixture (``llama_tensor_get_type``).
- ``tensors``: ``GgufTensor`` and the GGUF tensor inventory of a Llama-family config.
- ``buffers``: ``CUDA0 model buffer`` / ``CPU model buffer`` with partial offload (``-ngl``), ``KV buffer``.
- ``galloc``: the replay of ggml-alloc's greedy allocator over a minimal ggml graph.
- ``graph``: the llama reserve graph and the ``compute buffer`` / ``CUDA_Host compute buffer`` sizes.
- ``estimate``: everything at once (``estimate_llamacpp``), the largest context that fits
  (``max_context_llamacpp``), and both as the one report type (``report``, ``estimate_report``,
  ``fit_report``: ``estimator.report.MemoryReport``).

Every name is re-exported here: ``from estimator.engines import llamacpp as lc; lc.estimate_llamacpp``.
"""

from __future__ import annotations

from .buffers import (
    ModelBuffers,
    _cuda_alloc_size,  # noqa: F401
    kv_buffer_bytes,
    kv_size_cells,
    model_buffers,
    offloaded_layers,
)
from .estimate import LlamaCppEstimate, estimate_llamacpp, estimate_report, fit_report, max_context_llamacpp, report
from .galloc import _INPLACE_OPS, Tallocr, _Graph, _simulate  # noqa: F401
from .graph import ComputeBuffers, compute_buffers
from .mixture import _FALLBACK, _fit_type, _is_70b, tensor_type, use_more_bits  # noqa: F401
from .tensors import (  # noqa: F401
    _GGUF_GLOBAL,
    _GGUF_LAYER,
    GgufTensor,
    _gguf_name,
    _gguf_tensors_cached,
    gguf_file_tensor_bytes,
    gguf_tensors,
    has_rope_freqs,
    type_counts,
)
from .types import (
    CPU_ALIGNMENT,
    CUDA_ALIGNMENT,
    FTYPES,
    GGML_TYPES,
    GGUF_QUANTS,
    KQ_MASK_PAD,
    KV_TYPES,
    MATRIX_ROW_PADDING,
    OP_OFFLOAD_MIN_BATCH,
    STREAMS_BUILD,
    STREAMS_DATE,
    VERSIONS,
    MiB,
    _pad,  # noqa: F401
    resolve_build,
    row_bytes,
    tensor_bytes,
)

__all__ = [
    # types
    "MiB",
    "GGML_TYPES",
    "FTYPES",
    "GGUF_QUANTS",
    "KV_TYPES",
    "CUDA_ALIGNMENT",
    "CPU_ALIGNMENT",
    "MATRIX_ROW_PADDING",
    "OP_OFFLOAD_MIN_BATCH",
    "KQ_MASK_PAD",
    "VERSIONS",
    "STREAMS_BUILD",
    "STREAMS_DATE",
    "resolve_build",
    "row_bytes",
    "tensor_bytes",
    # mixture
    "use_more_bits",
    "tensor_type",
    # tensors
    "GgufTensor",
    "has_rope_freqs",
    "gguf_tensors",
    "gguf_file_tensor_bytes",
    "type_counts",
    # buffers
    "ModelBuffers",
    "offloaded_layers",
    "model_buffers",
    "kv_size_cells",
    "kv_buffer_bytes",
    # graph
    "ComputeBuffers",
    "compute_buffers",
    # estimate
    "LlamaCppEstimate",
    "estimate_llamacpp",
    "max_context_llamacpp",
    "report",
    "estimate_report",
    "fit_report",
]
