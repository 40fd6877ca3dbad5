"""Model weight buffers, partial offload (``-ngl``) and the KV buffer, as llama.cpp prints them:

- ``CUDA0 model buffer``: every tensor of the offloaded layers, plus ``output.weight``
  (for a tied embedding the loader creates ``output`` as a *duplicate* of ``token_embd``;
  ``src/llama-model.cpp``: ``output = create_tensor(tn(LLM_TENSOR_TOKEN_EMBD), ..., TENSOR_DUPLICATED)``).
- ``CPU model buffer`` (``CPU_Mapped`` with mmap): ``token_embd`` (the input layer always lives
  on the CPU: ``dev_input = cpu``) and every tensor of the layers that are not offloaded.
- ``KV buffer``: ``n_layer x (row_size(type_k, n_embd_k_gqa) + row_size(type_v, n_embd_v_gqa))
  x kv_size`` (``src/llama-kv-cache.cpp``: one ``ggml_new_tensor`` per layer for K and for V).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from ...errors import InvalidSpecError, UnknownNameError
from ...model import ModelSpec
from .tensors import GgufTensor
from .types import CPU_ALIGNMENT, CUDA_ALIGNMENT, GGML_TYPES, KV_TYPES, MATRIX_ROW_PADDING, _pad, row_bytes

# --- model buffers and offload ----------------------------------------------------------------


def _cuda_alloc_size(t: GgufTensor) -> int:
    """ggml_backend_cuda_buffer_type_get_alloc_size: quantized rows padded to MATRIX_ROW_PADDING."""
    size = t.nbytes
    blck = GGML_TYPES[t.ggml_type][0]
    if blck > 1 and t.shape[0] % MATRIX_ROW_PADDING:
        size += row_bytes(t.ggml_type, MATRIX_ROW_PADDING - t.shape[0] % MATRIX_ROW_PADDING)
    return _pad(size, CUDA_ALIGNMENT)


@dataclass(frozen=True, slots=True)
class ModelBuffers:
    """Model weight buffers as llama.cpp prints them. All fields are bytes."""

    gpu_model_buffer_bytes: int  # "CUDA0 model buffer size"
    host_model_buffer_bytes: int  # "CPU model buffer size" / "CPU_Mapped model buffer size"
    n_gpu_layers: int  # effective, counting the output layer as llama.cpp does (n_layer + 1 = all)


def offloaded_layers(n_layer: int, n_gpu_layers: int) -> tuple[int, bool]:
    """(first GPU layer, output on GPU) for ``-ngl``; -1 means all (llama-cpp-python, Ollama num_gpu).

    src/llama-model.cpp load_tensors: ``i_gpu_start = max(n_layer - n_gpu_layers, 0)``; the output
    layer is offloaded when ``n_gpu_layers > n_layer``.
    """
    if n_gpu_layers < 0 or n_gpu_layers > n_layer:
        n_gpu_layers = n_layer + 1
    return max(n_layer - n_gpu_layers, 0), n_gpu_layers > n_layer


def model_buffers(
    tensors: Iterable[GgufTensor], n_layer: int, n_gpu_layers: int = -1, gpu: bool = True
) -> ModelBuffers:
    """Split the tensors into the GPU and host model buffers for ``n_gpu_layers``.

    ``token_embd`` always stays on the host; a model without ``output.weight`` gets an ``output``
    duplicate of ``token_embd`` on the output layer's device. rope_freqs goes with layer 0.
    """
    tensors = list(tensors)
    i_gpu_start, out_gpu = offloaded_layers(n_layer, n_gpu_layers)
    if not gpu:
        i_gpu_start, out_gpu = n_layer, False
    has_output = any(t.name == "output.weight" for t in tensors)
    gpu_b = host_b = 0
    for t in tensors:
        entries: list[tuple[GgufTensor, int | str | None]] = [(t, t.layer)]  # where: a layer, input or output
        if t.name == "token_embd.weight":
            entries = [(t, "input")]
            if not has_output:
                entries.append((dataclasses.replace(t, name="output.weight"), "output"))
        elif t.name in ("output.weight", "output_norm.weight"):
            entries = [(t, "output")]
        for tt, where in entries:
            on_gpu = (where == "output" and out_gpu) or (isinstance(where, int) and where >= i_gpu_start)
            if tt is not t and not on_gpu:
                continue  # a host-side duplicate shares token_embd's (mmapped) data
            if on_gpu:
                gpu_b += _cuda_alloc_size(tt)
            else:
                host_b += _pad(tt.nbytes, CPU_ALIGNMENT)
    eff = (n_layer - i_gpu_start) + (1 if out_gpu else 0)
    return ModelBuffers(gpu_b, host_b, eff)


# --- KV cache ----------------------------------------------------------------------------------


def kv_size_cells(n_ctx: int, flash_attn: bool, version: str = "current") -> int:
    """KV cells: n_ctx padded to 256 with flash attention, 32 without (``llama_kv_cache::get_padding``;
    shared/reference/memory-model.md section 8.3). ``version`` is accepted for symmetry."""
    return _pad(n_ctx, 256 if flash_attn else 32)


def kv_buffer_bytes(
    spec: ModelSpec,
    n_ctx: int,
    type_k: str = "f16",
    type_v: str | None = None,
    n_layers: int | None = None,
    flash_attn: bool = False,
    version: str = "current",
) -> int:
    """Bytes of the KV buffer for ``n_ctx`` cells (shared by all ``--parallel`` sequences).

    ``n_layer x kv_size x (row_size(type_k, n_embd_k_gqa) + row_size(type_v, n_embd_v_gqa))``.
    A quantized V cache needs flash attention (llama_init_from_model refuses otherwise).
    """
    type_v = type_v or type_k
    for t in (type_k, type_v):
        if t not in KV_TYPES:
            raise UnknownNameError(f"kv_dtype must be one of {', '.join(KV_TYPES)} for llama.cpp: {t!r}")
    if KV_TYPES[type_v] not in ("F16", "F32", "BF16") and not flash_attn:
        raise InvalidSpecError(f"kv_dtype {type_v!r}: llama.cpp needs --flash-attn for a quantized V cache")
    cells = kv_size_cells(n_ctx, flash_attn, version)
    L = spec.num_hidden_layers if n_layers is None else n_layers
    return L * cells * (row_bytes(KV_TYPES[type_k], spec.kv_dim) + row_bytes(KV_TYPES[type_v], spec.kv_dim))
