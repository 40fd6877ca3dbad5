"""Everything at once: the buffers llama.cpp allocates for one model and context
(``estimate_llamacpp``) and the largest context that fits a GPU (``max_context_llamacpp``).

Worked example, Llama 3.2 3B Q4_K_M, ``n_ctx`` 8192, ``n_ubatch`` 512, no flash attention, all
29 layers offloaded (Ollama, Jan 2025): model buffer 2,011,539,712 B (1918.35 MiB, printed
1918.35), host model buffer 323,205,120 B (308.23 MiB), KV 939,524,096 B (896.00 MiB).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

from ...errors import InvalidSpecError
from ...model import ModelSpec
from ...solve import largest_true
from .buffers import kv_buffer_bytes, kv_size_cells, model_buffers, offloaded_layers
from .graph import compute_buffers
from .tensors import GgufTensor, gguf_file_tensor_bytes, gguf_tensors


# --- everything at once ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LlamaCppEstimate:
    """Buffers llama.cpp allocates for one model and context. All ``*_bytes`` fields are bytes.

    ``device_bytes`` is what the GPU holds (model + KV + compute buffers on the GPU);
    ``host_bytes`` is host RAM for buffers (host model buffer, CPU KV, host compute buffer).
    """

    quant: str
    model_buffer_bytes: int
    host_buffer_bytes: int
    kv_buffer_bytes: int
    host_kv_buffer_bytes: int
    compute_buffer_bytes: int
    host_compute_buffer_bytes: int
    gguf_tensor_bytes: int
    n_gpu_layers: int
    kv_cells: int

    @property
    def device_bytes(self) -> int:
        return self.model_buffer_bytes + self.kv_buffer_bytes + self.compute_buffer_bytes

    @property
    def host_bytes(self) -> int:
        return self.host_buffer_bytes + self.host_kv_buffer_bytes + self.host_compute_buffer_bytes

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["device_bytes"] = self.device_bytes
        d["host_bytes"] = self.host_bytes
        return d


def estimate_llamacpp(spec: ModelSpec, quant: str = "q4_k_m", n_ctx: int = 4096, *, n_ubatch: int = 512,
                      parallel: int = 1, flash_attn: bool = False, n_gpu_layers: int = -1,
                      kv_dtype: str = "f16", gpu: bool = True, version: str = "current",
                      kv_unified: bool | None = None,
                      tensors: Iterable[GgufTensor] | None = None) -> LlamaCppEstimate:
    """Buffers llama.cpp reports for ``spec`` quantized as ``quant`` at ``n_ctx`` total cells.

    ``n_ctx`` is the whole KV cache (``--ctx-size``), shared by ``parallel`` sequences. ``tensors``
    overrides the derived inventory (e.g. read from a real .gguf header).
    """
    if n_ctx < 1:
        raise InvalidSpecError(f"n_ctx must be >= 1: {n_ctx}")
    if parallel < 1:
        raise InvalidSpecError(f"parallel must be >= 1: {parallel}")
    kv_dtype = "f16" if kv_dtype in (None, "auto") else kv_dtype
    ts = list(tensors) if tensors is not None else list(gguf_tensors(spec, quant))
    L = spec.num_hidden_layers
    mb = model_buffers(ts, L, n_gpu_layers, gpu)
    i_gpu_start, _ = offloaded_layers(L, n_gpu_layers)
    gpu_layers = (L - i_gpu_start) if gpu else 0
    kv_gpu = kv_buffer_bytes(spec, n_ctx, kv_dtype, n_layers=gpu_layers, flash_attn=flash_attn, version=version)
    kv_cpu = kv_buffer_bytes(spec, n_ctx, kv_dtype, n_layers=L - gpu_layers, flash_attn=flash_attn, version=version)
    # largest matmul weight left in host memory (layers not offloaded, or the output layer)
    i0, out_on_gpu = offloaded_layers(L, n_gpu_layers)
    host_w = 0
    for t in ts:
        if len(t.shape) < 2 or t.name == "token_embd.weight":
            continue
        on_host = (t.layer is not None and t.layer < i0) or (t.name == "output.weight" and not out_on_gpu)
        if on_host:
            host_w = max(host_w, t.nbytes)
    if not out_on_gpu and not any(t.name == "output.weight" for t in ts):
        host_w = max(host_w, next((t.nbytes for t in ts if t.name == "token_embd.weight"), 0))
    cb = compute_buffers(spec, n_ctx, n_ubatch, flash_attn, n_gpu_layers, gpu, parallel, kv_unified, version,
                         host_weight_bytes=host_w)
    return LlamaCppEstimate(
        quant=quant, model_buffer_bytes=mb.gpu_model_buffer_bytes, host_buffer_bytes=mb.host_model_buffer_bytes,
        kv_buffer_bytes=kv_gpu, host_kv_buffer_bytes=kv_cpu, compute_buffer_bytes=cb.gpu_compute_buffer_bytes,
        host_compute_buffer_bytes=cb.host_compute_buffer_bytes, gguf_tensor_bytes=gguf_file_tensor_bytes(ts),
        n_gpu_layers=mb.n_gpu_layers if gpu else 0, kv_cells=kv_size_cells(n_ctx, flash_attn, version))


def max_context_llamacpp(spec: ModelSpec, quant: str, gpu_memory_bytes: int, *, margin_bytes: int = 0,
                         cap: int | None = None, **kw) -> int:
    """The largest n_ctx whose GPU buffers fit in ``gpu_memory_bytes - margin_bytes``, with every
    smaller n_ctx fitting too: a multiple of 256, or ``cap`` (default and at most the model's window)
    when the whole window fits; 0 if 256 does not fit. Every buffer grows with n_ctx (KV cells,
    the reserve graph's KQ), so a binary search over multiples of 256 is exact."""
    window = spec.max_position_embeddings
    cap = window if cap is None else min(cap, window)
    budget = gpu_memory_bytes - margin_bytes

    def fits(n: int) -> bool:
        return estimate_llamacpp(spec, quant, n, **kw).device_bytes <= budget

    if fits(cap):
        return cap
    return 256 * largest_true(lambda k: fits(256 * k), 1, cap // 256)
