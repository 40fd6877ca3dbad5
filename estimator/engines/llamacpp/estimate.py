"""Everything at once: the buffers llama.cpp allocates for one model and context
(``estimate_llamacpp``), the largest context that fits a GPU (``max_context_llamacpp``), and both
as the one report type (``report``, ``estimate_report``, ``fit_report``).

Worked example, Llama 3.2 3B Q4_K_M, ``n_ctx`` 8192, ``n_ubatch`` 512, no flash attention, all
29 layers offloaded (Ollama, Jan 2025): model buffer 2,011,539,712 B (1918.35 MiB, printed
1918.35), host model buffer 323,205,120 B (308.23 MiB), KV 939,524,096 B (896.00 MiB).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import InvalidSpecError
from ...model import ModelSpec
from ...overhead import CUBLAS_WORKSPACE_LARGE_BYTES
from ...report import MemoryReport
from ...solve import largest_true
from .buffers import kv_buffer_bytes, kv_size_cells, model_buffers, offloaded_layers
from .graph import compute_buffers
from .pool import cuda_pool_high_bytes
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
    # the CUDA pool's temporaries, not in any logged buffer: 0 to this (``pool.cuda_pool_high_bytes``)
    cuda_pool_high_bytes: int = 0

    @property
    def device_bytes(self) -> int:
        return self.model_buffer_bytes + self.kv_buffer_bytes + self.compute_buffer_bytes

    @property
    def host_bytes(self) -> int:
        return self.host_buffer_bytes + self.host_kv_buffer_bytes + self.host_compute_buffer_bytes

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["device_bytes"] = self.device_bytes
        d["host_bytes"] = self.host_bytes
        return d


def estimate_llamacpp(
    spec: ModelSpec,
    quant: str = "q4_k_m",
    n_ctx: int = 4096,
    *,
    n_ubatch: int = 512,
    parallel: int = 1,
    flash_attn: bool = False,
    n_gpu_layers: int = -1,
    kv_dtype: str = "f16",
    gpu: bool = True,
    version: str = "current",
    kv_unified: bool | None = None,
    tensors: Iterable[GgufTensor] | None = None,
) -> LlamaCppEstimate:
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
    cb = compute_buffers(
        spec, n_ctx, n_ubatch, flash_attn, n_gpu_layers, gpu, parallel, kv_unified, version, host_weight_bytes=host_w
    )
    return LlamaCppEstimate(
        quant=quant,
        model_buffer_bytes=mb.gpu_model_buffer_bytes,
        host_buffer_bytes=mb.host_model_buffer_bytes,
        kv_buffer_bytes=kv_gpu,
        host_kv_buffer_bytes=kv_cpu,
        compute_buffer_bytes=cb.gpu_compute_buffer_bytes,
        host_compute_buffer_bytes=cb.host_compute_buffer_bytes,
        gguf_tensor_bytes=gguf_file_tensor_bytes(ts),
        n_gpu_layers=mb.n_gpu_layers if gpu else 0,
        kv_cells=kv_size_cells(n_ctx, flash_attn, version),
        cuda_pool_high_bytes=cuda_pool_high_bytes(
            spec,
            n_ubatch,
            kv_cells=kv_size_cells(n_ctx, flash_attn, version),
            kv_quantized=kv_dtype not in ("f16", "f32", "bf16"),
            flash_attn=flash_attn,
            on_gpu=gpu and mb.n_gpu_layers > 0,
        ),
    )


def max_context_llamacpp(
    spec: ModelSpec,
    quant: str,
    gpu_memory_bytes: int,
    *,
    margin_bytes: int = 0,
    cap: int | None = None,
    with_pool: bool = False,
    **kw: Any,
) -> int:
    """The largest n_ctx whose GPU buffers fit in ``gpu_memory_bytes - margin_bytes``, with every
    smaller n_ctx fitting too: a multiple of 256, or ``cap`` (default and at most the model's window)
    when the whole window fits; 0 if 256 does not fit. Every buffer grows with n_ctx (KV cells,
    the reserve graph's KQ), so a binary search over multiples of 256 is exact. ``with_pool``: the
    CUDA pool's high end and cuBLAS's workspace must fit too (``device_used_range``'s high end, with
    the CUDA context in ``margin_bytes``); they do not shrink as n_ctx grows either."""
    window = spec.max_position_embeddings
    cap = window if cap is None else min(cap, window)
    budget = gpu_memory_bytes - margin_bytes

    def fits(n: int) -> bool:
        e = estimate_llamacpp(spec, quant, n, **kw)
        extra = e.cuda_pool_high_bytes + CUBLAS_WORKSPACE_LARGE_BYTES if with_pool and e.n_gpu_layers > 0 else 0
        return e.device_bytes + extra <= budget

    if fits(cap):
        return cap
    return 256 * largest_true(lambda k: fits(256 * k), 1, cap // 256)


# --- the one report type -------------------------------------------------------------------------


def report(
    e: LlamaCppEstimate,
    settings: Mapping[str, Any],
    gpu_memory_bytes: int | None = None,
    cuda_context_bytes: int = 0,
    cuda_context_range_bytes: tuple[int, int] | None = None,
    **details: Any,
) -> MemoryReport:
    """llama.cpp's buffers as the one report type (engine "llama.cpp").

    Byte fields: the GPU model, KV and compute buffers as weights, KV cache and activations, and the
    CUDA context as overhead when any layer is on the GPU; device used is their sum, ``fits`` and
    ``headroom_bytes`` are against ``gpu_memory_bytes`` (None without one). ``details``: every buffer
    (GPU and host), the GGUF tensor bytes, the offloaded layers and KV cells, then ``details`` given
    here. ``settings`` is kept as given.

    Device used's range (``device_used_range``): low = the buffers + the class's lowest CUDA context;
    high = the buffers + its highest + the CUDA pool's high end + cuBLAS's own workspace at its
    largest default (the buffers are exact; the rest no log line reports)."""
    on_gpu = e.n_gpu_layers > 0
    overhead = cuda_context_bytes if on_gpu else 0
    used = e.device_bytes + overhead
    ctx_lo, ctx_hi = (
        (cuda_context_bytes, cuda_context_bytes) if cuda_context_range_bytes is None else cuda_context_range_bytes
    )
    low, high = device_used_range(e, ctx_lo, ctx_hi)
    own = {
        "model_buffer_bytes": e.model_buffer_bytes,
        "host_buffer_bytes": e.host_buffer_bytes,
        "kv_buffer_bytes": e.kv_buffer_bytes,
        "host_kv_buffer_bytes": e.host_kv_buffer_bytes,
        "compute_buffer_bytes": e.compute_buffer_bytes,
        "host_compute_buffer_bytes": e.host_compute_buffer_bytes,
        "gguf_tensor_bytes": e.gguf_tensor_bytes,
        "n_gpu_layers": e.n_gpu_layers,
        "kv_cells": e.kv_cells,
        "host_bytes": e.host_bytes,
        "cuda_pool_high_bytes": e.cuda_pool_high_bytes if on_gpu else 0,
    }
    return MemoryReport(
        settings=settings,
        engine="llama.cpp",
        source="estimate",
        weights_bytes=e.model_buffer_bytes,
        kv_cache_bytes=e.kv_buffer_bytes,
        activations_bytes=e.compute_buffer_bytes,
        overhead_bytes=overhead,
        device_used_bytes=used,
        gpu_memory_bytes=gpu_memory_bytes,
        device_used_low_bytes=low,
        device_used_high_bytes=high,
        details={**own, **details},
    )


def device_used_range(e: LlamaCppEstimate, context_low_bytes: int, context_high_bytes: int) -> tuple[int, int]:
    """(low, high) of device used for CUDA contexts in [low, high] (``report``); the buffers alone
    when no layer is on the GPU."""
    if e.n_gpu_layers <= 0:
        return e.device_bytes, e.device_bytes
    high = e.device_bytes + context_high_bytes + e.cuda_pool_high_bytes + CUBLAS_WORKSPACE_LARGE_BYTES
    return e.device_bytes + context_low_bytes, high


def _settings(
    spec: ModelSpec,
    quant: str,
    n_ctx: int,
    gpu_memory_bytes: int | None,
    given: Mapping[str, Any] | None,
    kw: Mapping[str, Any],
) -> dict[str, Any]:
    s: dict[str, Any] = {
        "engine": "llama.cpp",
        "model": spec.name,
        "quant": quant,
        "kv_dtype": kw.get("kv_dtype", "f16"),
        "gpu": None,
        "gpu_memory_bytes": gpu_memory_bytes,
        "context": n_ctx,
        "parallel": kw.get("parallel", 1),
        "ubatch": kw.get("n_ubatch", 512),
        "flash_attn": bool(kw.get("flash_attn", False)),
        "n_gpu_layers": kw.get("n_gpu_layers", -1),
        "gguf": None,
        "llamacpp_version": kw.get("version", "current"),
    }
    s.update(given or {})
    return s


def estimate_report(
    spec: ModelSpec,
    quant: str,
    n_ctx: int,
    *,
    gpu_memory_bytes: int | None = None,
    cuda_context_bytes: int = 0,
    cuda_context_range_bytes: tuple[int, int] | None = None,
    settings: Mapping[str, Any] | None = None,
    **kw: Any,
) -> MemoryReport:
    """``estimate_llamacpp(spec, quant, n_ctx, **kw)`` as a report (``report``) on a GPU of
    ``gpu_memory_bytes`` with ``cuda_context_bytes`` of CUDA context. ``settings``: the engine,
    model, quant, KV type, GPU memory, context (n_ctx) and llama.cpp's settings, updated with the
    ``settings`` given (how the caller names the KV type, GPU and GGUF file)."""
    e = estimate_llamacpp(spec, quant, n_ctx, **kw)
    return report(
        e,
        _settings(spec, quant, n_ctx, gpu_memory_bytes, settings, kw),
        gpu_memory_bytes,
        cuda_context_bytes,
        cuda_context_range_bytes,
    )


def fit_report(
    spec: ModelSpec,
    quant: str,
    gpu_memory_bytes: int,
    *,
    cuda_context_bytes: int = 0,
    cuda_context_range_bytes: tuple[int, int] | None = None,
    settings: Mapping[str, Any] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """The largest n_ctx whose GPU buffers and CUDA context fit ``gpu_memory_bytes``
    (``max_context_llamacpp``, at most the model's window) and the report there: {"engine":
    "llama.cpp", "max_context", "max_context_low" (device used's high end fits: for certain),
    "max_context_high" (its low end fits: may fit), "gpu_memory_bytes", "max_position_embeddings",
    "cuda_context_bytes", "whole_window_fits"}, plus "estimate" (a MemoryReport, ``estimate_report``)
    when some n_ctx fits."""
    window = spec.max_position_embeddings
    ctx_lo, ctx_hi = cuda_context_range_bytes or (cuda_context_bytes, cuda_context_bytes)

    def largest(margin: int, with_pool: bool = False) -> int:
        return max_context_llamacpp(
            spec, quant, gpu_memory_bytes, margin_bytes=margin, cap=window, with_pool=with_pool, **kw
        )

    t = largest(cuda_context_bytes)
    out: dict[str, Any] = {
        "engine": "llama.cpp",
        "max_context": t,
        "max_context_low": largest(ctx_hi, with_pool=True),
        "max_context_high": largest(ctx_lo),
        "gpu_memory_bytes": gpu_memory_bytes,
        "max_position_embeddings": window,
        "cuda_context_bytes": cuda_context_bytes,
        "whole_window_fits": t == window,
    }
    if t:
        out["estimate"] = estimate_report(
            spec,
            quant,
            t,
            gpu_memory_bytes=gpu_memory_bytes,
            cuda_context_bytes=cuda_context_bytes,
            cuda_context_range_bytes=cuda_context_range_bytes,
            settings=settings,
            **kw,
        )
    return out
