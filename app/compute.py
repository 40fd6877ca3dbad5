"""Every call the app makes into ``estimator``, as pure functions plus cached wrappers.

Every context the app lists lies within the model's window and holds the new tokens.
The pure functions take a hashable ``model_key`` (a preset name, or ``"spec:" + JSON`` of an
uploaded ModelSpec) so ``st.cache_data`` can key on them. The calculator page needs one
estimate, a sweep (all quantizations x 64 contexts), per-quant estimates and largest contexts,
and a GPU table (every catalog GPU x every quantization); cached, a rerun only formats.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import streamlit as st

import estimator
from estimator.estimate import Estimate
from estimator.model import ModelSpec

from . import state


def model_key(model: str | ModelSpec) -> str:
    if isinstance(model, str):
        return model
    return "spec:" + json.dumps(model.to_config(), sort_keys=True)


@functools.lru_cache(maxsize=64)
def model_from_key(key: str) -> str | ModelSpec:
    if key.startswith("spec:"):
        return ModelSpec(**json.loads(key[5:]))
    return key


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, Any]:
    return {g.key: g for g in estimator.gpu_catalog()}


def gpu_keys() -> list[str]:
    """Catalog keys the app offers, by memory then name; an alias of another entry (the same card
    under a second name, e.g. B200 192 GB) is left out so each card appears once."""
    cat = _catalog()
    keys = [k for k, g in cat.items() if not g.memory_source.startswith("Alias of")]
    return sorted(keys, key=lambda k: (cat[k].memory_bytes, cat[k].name))


def gpu_by_key(key: str) -> Any:
    return _catalog()[key]


def spec_of(key: str) -> ModelSpec:
    return estimator.load_model(model_from_key(key))


# ---------------------------------------------------------------------------- pure compute


def estimate_report(
    model: str,
    quant: str,
    context: int,
    batch: int,
    kv_dtype: str,
    attn: str,
    gpu: str | None,
    gpu_memory_bytes: int | None,
    prefill_chunk: int | None = None,
) -> Estimate:
    """The estimate (the one report type, ``estimator.report.MemoryReport``) for these settings."""
    return estimator.estimate(
        model=model_from_key(model),
        quant=quant,
        context=context,
        batch=batch,
        kv_dtype=kv_dtype,
        attn=attn,
        gpu=gpu,
        gpu_memory_bytes=gpu_memory_bytes,
        prefill_chunk=prefill_chunk,
    )


def window(model: str) -> int:
    """The model's window: the largest context (``max_position_embeddings``)."""
    return state.window_of(spec_of(model))


def sweep_contexts(model: str) -> tuple[int, ...]:
    """The contexts of the chart and the CSV: within the model's window, each holding the new tokens."""
    return state.sweep_contexts(window(model))


def sweep_rows(
    model: str,
    batch: int,
    kv_dtype: str,
    attn: str,
    gpu: str | None,
    gpu_memory_bytes: int | None,
    prefill_chunk: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``estimator.sweep`` over every transformers quantization x ``sweep_contexts``."""
    contexts = sweep_contexts(model)
    if not contexts:
        return []
    rows = estimator.sweep(
        model_from_key(model),
        quants=estimator.TRANSFORMERS_QUANTS,
        contexts=contexts,
        batch=batch,
        kv_dtype=kv_dtype,
        attn=attn,
        gpu=gpu,
        gpu_memory_bytes=gpu_memory_bytes,
        prefill_chunk=prefill_chunk,
    )
    return [dict(r) for r in rows]


def sweep_csv(
    model: str,
    batch: int,
    kv_dtype: str,
    attn: str,
    gpu: str | None,
    gpu_memory_bytes: int | None,
    prefill_chunk: int | None = None,
) -> str:
    """The sweep as CSV text (the export button), built once per setting."""
    from .tables import sweep_csv as to_csv

    return to_csv(cached_sweep(model, batch, kv_dtype, attn, gpu, gpu_memory_bytes, prefill_chunk))


def largest_context(
    model: str,
    quant: str,
    batch: int,
    kv_dtype: str,
    attn: str,
    gpu: str | None,
    gpu_memory_bytes: int | None,
    prefill_chunk: int | None = None,
    bound: str = "point",
) -> int:
    """``estimator.max_context``: at most the model's window (the whole window fits); 0 when even a
    one-token prompt does not fit. ``bound="high"``: the largest that fits for certain (the range's
    high end fits)."""
    return estimator.max_context(
        model_from_key(model),
        quant,
        gpu=gpu,
        gpu_memory_bytes=gpu_memory_bytes,
        batch=batch,
        kv_dtype=kv_dtype,
        attn=attn,
        prefill_chunk=prefill_chunk,
        bound=bound,
    )


def quant_max_contexts(
    model: str,
    batch: int,
    kv_dtype: str,
    attn: str,
    gpu: str | None,
    gpu_memory_bytes: int | None,
    prefill_chunk: int | None = None,
) -> dict[str, int]:
    """Largest context per quantization on one GPU (independent of the chosen context)."""
    return {
        q: largest_context(model, q, batch, kv_dtype, attn, gpu, gpu_memory_bytes, prefill_chunk)
        for q in estimator.TRANSFORMERS_QUANTS
    }


def quant_rows(
    model: str,
    context: int,
    batch: int,
    kv_dtype: str,
    attn: str,
    gpu: str | None,
    gpu_memory_bytes: int | None,
    prefill_chunk: int | None = None,
) -> list[dict[str, Any]]:
    """One estimate per quantization at this context, plus the largest context on this GPU."""
    maxc = cached_quant_max_contexts(model, batch, kv_dtype, attn, gpu, gpu_memory_bytes, prefill_chunk)
    out = []
    for q in estimator.TRANSFORMERS_QUANTS:
        e = estimate_report(model, q, context, batch, kv_dtype, attn, gpu, gpu_memory_bytes, prefill_chunk)
        out.append(
            {
                "quant": q,
                "weights_bytes": e.weights_bytes,
                "kv_cache_bytes": e.kv_cache_bytes,
                "device_used_bytes": e.device_used_bytes,
                "fits": e.fits,
                "headroom_bytes": e.headroom_bytes,
                "max_context": maxc[q],
            }
        )
    return out


def _usable(key: str, keep_free_bytes: int) -> int | None:
    """The memory a catalog GPU leaves to the model (None: all of it, the estimator's default); at
    least 1 byte (the estimator's floor), so a card smaller than the kept memory fits nothing."""
    return max(1, gpu_by_key(key).memory_bytes - keep_free_bytes) if keep_free_bytes else None


def gpu_context_grid(
    model: str, batch: int, kv_dtype: str, attn: str, keep_free_bytes: int = 0, prefill_chunk: int | None = None
) -> dict[str, dict[str, int]]:
    """Largest context for every catalog GPU x every quantization: {gpu: {quant: tokens}}."""
    return {
        key: quant_max_contexts(model, batch, kv_dtype, attn, key, _usable(key, keep_free_bytes), prefill_chunk)
        for key in gpu_keys()
    }


def gpu_rows(
    model: str,
    quant: str,
    context: int,
    batch: int,
    kv_dtype: str,
    attn: str,
    keep_free_bytes: int = 0,
    prefill_chunk: int | None = None,
) -> list[dict[str, Any]]:
    """For each catalog GPU: the estimate at these settings, and the largest context per quant
    (in the GPU's memory less ``keep_free_bytes``)."""
    grid = cached_gpu_context_grid(model, batch, kv_dtype, attn, keep_free_bytes, prefill_chunk)
    out = []
    for key in gpu_keys():
        g = gpu_by_key(key)
        e = estimate_report(
            model, quant, context, batch, kv_dtype, attn, key, _usable(key, keep_free_bytes), prefill_chunk
        )
        out.append(
            {
                "gpu": key,
                "name": g.name,
                "memory_bytes": g.memory_bytes,
                "cls": g.cls,
                "device_used_bytes": e.device_used_bytes,
                "fits": e.fits,
                "headroom_bytes": e.headroom_bytes,
                "max_context": grid[key],
            }
        )
    return out


def fitting_gpus(
    model: str,
    quant: str,
    context: int,
    batch: int,
    kv_dtype: str,
    attn: str,
    keep_free_bytes: int = 0,
    prefill_chunk: int | None = None,
    n: int = 3,
) -> list[dict[str, Any]]:
    """The ``n`` catalog GPUs with the least memory that fit these settings with room to spare
    (``tables.verdict`` "Yes", not "Tight") in their memory less ``keep_free_bytes``, each estimated
    on its own arch (cuBLAS workspace, CUDA context, SDPA kernel): rows of name, memory_bytes,
    device_used_bytes, headroom_bytes."""
    from .tables import verdict

    rows = []
    floor = 0  # weights + KV cache: the same on every GPU, so a GPU with less usable memory cannot fit
    for key in gpu_keys():  # by memory, then name
        g = gpu_by_key(key)
        usable = _usable(key, keep_free_bytes)
        if (usable if usable is not None else g.memory_bytes) < floor:
            continue
        # the pure function, not its st.cache_data wrapper: this loop is cached as a whole
        e = estimate_report(model, quant, context, batch, kv_dtype, attn, key, usable, prefill_chunk)
        floor = e.weights_bytes + e.kv_cache_bytes
        if e.gpu_memory_bytes is not None and verdict(e, e.gpu_memory_bytes)[0] == "Yes":
            rows.append(
                {
                    "gpu": key,
                    "name": g.name,
                    "memory_bytes": g.memory_bytes,
                    "device_used_bytes": e.device_used_bytes,
                    "headroom_bytes": e.headroom_bytes,
                }
            )
            if len(rows) == n:
                break
    return rows


QUANTIZED_KV = ("fp8", "int8", "int4")  # KV-cache dtypes below 16 bits, most precise first


def remedies(
    model: str,
    quant: str,
    context: int,
    batch: int,
    kv_dtype: str,
    attn: str,
    gpu: str | None,
    gpu_memory_bytes: int | None,
    max_ctx: int,
    prefill_chunk: int | None = None,
) -> list[dict[str, Any]]:
    """Single changes that make these settings fit the GPU (``device_used <= memory``), each as
    {"what", "change" (session-state values), "device_used_bytes"}: the highest-precision weights
    that fit, the most precise quantized KV cache that fits, prefill in the largest chunks that
    fit, the largest context that fits (``max_ctx``, from ``largest_context``) and the largest
    batch that fits. Empty when it fits."""
    base = dict(
        model=model,
        quant=quant,
        context=context,
        batch=batch,
        kv_dtype=kv_dtype,
        attn=attn,
        gpu=gpu,
        gpu_memory_bytes=gpu_memory_bytes,
        prefill_chunk=prefill_chunk,
    )
    same = dict(gpu=gpu, gpu_memory_bytes=gpu_memory_bytes, kv_dtype=kv_dtype, attn=attn, prefill_chunk=prefill_chunk)
    if cached_estimate(**base).fits:
        return []
    out: list[dict[str, Any]] = []
    mdl = model_from_key(model)
    q = estimator.best_quant(mdl, context, batch=batch, **same)
    if q is not None and q != quant:
        e = cached_estimate(**{**base, "quant": q})
        out.append(
            {
                "what": f"{estimator.QUANTS[q].label} weights",
                "change": {state.QUANT: q},
                "device_used_bytes": e.device_used_bytes,
            }
        )
    spec = spec_of(model)
    now = estimator.kv_bytes_per_token(spec, kv_dtype)
    for kv in QUANTIZED_KV:
        if estimator.kv_bytes_per_token(spec, kv) < now:
            e = cached_estimate(**{**base, "kv_dtype": kv})
            if e.fits:
                out.append(
                    {"what": f"{kv} KV cache", "change": {state.KV_DTYPE: kv}, "device_used_bytes": e.device_used_bytes}
                )
                break
    for chunk in state.PREFILL_CHUNKS[::-1]:  # largest chunk first: fewest forwards
        if chunk and chunk < (prefill_chunk or context) and chunk < context - state.NEW_TOKENS:
            e = cached_estimate(**{**base, "prefill_chunk": chunk})
            if e.fits:
                out.append(
                    {
                        "what": f"prefill in chunks of {chunk:,}",
                        "change": {state.PREFILL_CHUNK: chunk},
                        "device_used_bytes": e.device_used_bytes,
                    }
                )
                break
    if 0 < max_ctx < context:
        e = cached_estimate(**{**base, "context": max_ctx})
        out.append(
            {
                "what": f"context {max_ctx:,} tokens",
                "change": {state.CONTEXT: max_ctx},
                "device_used_bytes": e.device_used_bytes,
            }
        )
    if batch > 1:
        b = estimator.max_batch(mdl, quant, context, limit=batch, **same)
        if 0 < b < batch:
            e = cached_estimate(**{**base, "batch": b})
            out.append({"what": f"batch {b}", "change": {state.BATCH: b}, "device_used_bytes": e.device_used_bytes})
    return out


# ---------------------------------------------------------------------------- cached wrappers

_cache = st.cache_data(show_spinner=False, max_entries=2048)
cached_estimate = _cache(estimate_report)
cached_sweep = st.cache_data(show_spinner=False, max_entries=32)(sweep_rows)
cached_largest_context = _cache(largest_context)
cached_sweep_csv = st.cache_data(show_spinner=False, max_entries=32)(sweep_csv)
cached_quant_max_contexts = st.cache_data(show_spinner=False, max_entries=256)(quant_max_contexts)
cached_gpu_context_grid = st.cache_data(
    show_spinner="Finding the largest context for every GPU and quantization…", max_entries=32
)(gpu_context_grid)
cached_quant_rows = st.cache_data(show_spinner=False, max_entries=256)(quant_rows)
cached_gpu_rows = st.cache_data(show_spinner=False, max_entries=256)(gpu_rows)
cached_fitting_gpus = st.cache_data(show_spinner=False, max_entries=256)(fitting_gpus)
cached_remedies = st.cache_data(show_spinner=False, max_entries=256)(remedies)
