"""Inverse questions and sweeps, built on the same replay plans as ``estimate()``.

- ``max_context``: the largest prompt (tokens) whose ``device_used_bytes`` fits a GPU;
- ``max_batch``: the largest batch that fits at a context;
- ``best_quant``: the highest-precision scheme that fits;
- ``smallest_gpu``: the catalog GPU with the least memory that fits;
- ``sweep``: every scheme over a context grid, for charts.

Memory never decreases with context or batch (a property the tests check), so the solvers
use binary search. ``device_used_bytes`` must fit in the GPU's total memory.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterable

from .errors import InvalidSpecError
from .estimate import MAX_BATCH, Settings, _base, _plans, _totals, make_settings
from .gpus import Gpu, custom_gpu, gpu_catalog
from .quant import PRECISION_ORDER, TRANSFORMERS_QUANTS

MAX_FIT_CONTEXT = 1 << 20  # the context solver searches up to 1,048,576 tokens
TOTAL_FIELDS = ("weights_bytes", "kv_cache_bytes", "activations_bytes", "overhead_bytes",
                "peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes")


def context_grid(points: int = 64, lo: int = 1024, hi: int = 131072) -> tuple[int, ...]:
    """Log-spaced integer contexts from lo to hi (both included), without duplicates."""
    if points < 2:
        return (lo,)
    r = math.log(hi / lo)
    return tuple(sorted({round(lo * math.exp(r * i / (points - 1))) for i in range(points)}))


def _settings(model: Any, gpu: Any, gpu_memory_bytes: int | None, **kw: Any) -> tuple[Settings, int]:
    if isinstance(model, Settings):
        s = replace(model, **kw) if kw else model
    else:
        s = make_settings(model, gpu=gpu, **kw)
    if gpu_memory_bytes is not None:
        if isinstance(gpu_memory_bytes, bool) or not isinstance(gpu_memory_bytes, int) or gpu_memory_bytes <= 0:
            raise InvalidSpecError(f"gpu_memory_bytes must be a positive integer: {gpu_memory_bytes!r}")
        if s.gpu is None:
            s = replace(s, gpu=custom_gpu(gpu_memory_bytes))
        return s, gpu_memory_bytes
    if s.gpu is None:
        raise InvalidSpecError("gpu is required: give a catalog key or gpu_memory_bytes")
    return s, s.gpu.memory_bytes


def device_used(s: Settings, context: int | None = None) -> int:
    """``device_used_bytes`` of a setting (at ``context`` if given), via the lean path."""
    t = s.context if context is None else context
    return _totals(s, t, _plans(s, t)[0], *_base(s))[-1]


def totals(s: Settings) -> dict[str, int]:
    return dict(zip(TOTAL_FIELDS, _totals(s, s.context, _plans(s, s.context)[0], *_base(s))))


def largest_true(fits, lo: int, hi: int) -> int:
    """Largest x in [lo, hi] with fits(x), given fits is monotone (true then false); lo-1 if none.

    Binary search; shared by every solver (transformers, vLLM, llama.cpp)."""
    if not fits(lo):
        return lo - 1
    if fits(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def max_context(model: Any = "llama-3.2-3b", quant: str = "bf16", *, gpu: Any = None,
                gpu_memory_bytes: int | None = None, batch: int = 1, limit: int = MAX_FIT_CONTEXT,
                **kw: Any) -> int:
    """Largest prompt length whose device_used_bytes fits; 0 if not even one token fits."""
    s, mem = _settings(model, gpu, gpu_memory_bytes, quant=quant, batch=batch, context=1, **kw)
    return largest_true(lambda t: device_used(s, t) <= mem, 1, limit)


def max_batch(model: Any = "llama-3.2-3b", quant: str = "bf16", context: int = 8192, *, gpu: Any = None,
              gpu_memory_bytes: int | None = None, limit: int = MAX_BATCH, **kw: Any) -> int:
    """Largest batch that fits at ``context``; 0 if batch 1 does not fit."""
    s, mem = _settings(model, gpu, gpu_memory_bytes, quant=quant, context=context, batch=1, **kw)
    return largest_true(lambda b: device_used(replace(s, batch=b)) <= mem, 1, limit)


def best_quant(model: Any = "llama-3.2-3b", context: int = 8192, *, gpu: Any = None,
               gpu_memory_bytes: int | None = None, quants: Iterable[str] = TRANSFORMERS_QUANTS,
               **kw: Any) -> str | None:
    """The highest-precision scheme (``quant.PRECISION_ORDER``) that fits; None if none does."""
    s, mem = _settings(model, gpu, gpu_memory_bytes, context=context, **kw)
    allowed = set(quants)
    for q in PRECISION_ORDER:
        if q in allowed and device_used(replace(s, quant=q)) <= mem:
            return q
    return None


def smallest_gpu(model: Any = "llama-3.2-3b", quant: str = "bf16", context: int = 8192,
                 *, gpus: Iterable[Gpu] | None = None, **kw: Any) -> Gpu | None:
    """The catalog GPU with the least memory on which the setting fits; None if none does."""
    s = model if isinstance(model, Settings) else make_settings(model, quant=quant, context=context, **kw)
    for g in sorted(gpus if gpus is not None else gpu_catalog(), key=lambda g: (g.memory_bytes, g.key)):
        if device_used(replace(s, gpu=g)) <= g.memory_bytes:
            return g
    return None


def sweep(model: Any = "llama-3.2-3b", quants: Iterable[str] = TRANSFORMERS_QUANTS,
          contexts: Iterable[int] | None = None, batch: int = 1, *, gpu: Any = None,
          gpu_memory_bytes: int | None = None, **kw: Any) -> list[dict[str, Any]]:
    """One row per (quant, context): the top-level byte fields of ``Estimate.to_dict()``.

    Rows also carry ``fits`` when a GPU (or gpu_memory_bytes) is given.
    """
    s = model if isinstance(model, Settings) else make_settings(model, gpu=gpu, batch=batch, **kw)
    mem = gpu_memory_bytes if gpu_memory_bytes is not None else (s.gpu.memory_bytes if s.gpu else None)
    ctxs = sorted(set(contexts if contexts is not None else context_grid()))
    rows = []
    for q in quants:
        sq = replace(s, quant=q, context=ctxs[0])
        base = _base(sq)
        plans, valid_to = _plans(sq, ctxs[0])
        for t in ctxs:
            if t > valid_to:
                plans, valid_to = _plans(sq, t)
            vals = _totals(sq, t, plans, *base)
            row = dict(zip(TOTAL_FIELDS, vals))
            row["quant"], row["context"], row["total_bytes"] = q, t, vals[-1]
            if mem is not None:
                row["fits"] = vals[-1] <= mem
            rows.append(row)
    return rows
