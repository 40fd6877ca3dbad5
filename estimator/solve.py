"""Inverse questions and sweeps, counted as ``estimate()`` counts (``estimate.Planner``).

- ``max_context``: the largest context (window) such that it and every shorter context fit;
- ``max_batch``: the largest batch such that it and every smaller batch fit at a context;
- ``best_quant``: the highest-precision scheme that fits;
- ``smallest_gpu``: the catalog GPU with the least memory that fits;
- ``sweep``: every scheme over a context grid, for charts.

Given a ``Settings``, every solver keeps all of its fields except the one it searches (and
those passed explicitly). ``device_used_bytes`` must fit in the GPU's total memory.

Memory is *not* monotone in the context: the caching allocator packs tensors of up to 1 MiB
into 2 MiB segments and tensors under 10 MiB into 20 MiB segments, so when a growing tensor
moves to the next pool the reserved total can drop by up to 22 MiB. A plain binary search can
then answer a context above one that does not fit. ``max_context`` instead returns the largest C
such that *every* context up to C fits, from three facts about the replay (``_lower``):

- a lower bound L(T) of device_used that never decreases with T (allocated blocks, and reserved
  segments counted without the shared-pool round-up), and device_used(T) <= L(T) + 22 MiB
  (``allocator.POOL_ROUNDING_BYTES``);
- between the prompt lengths where a tensor changes pool (or the replay changes shape),
  device_used never decreases.

So every context with L + 22 MiB within the limit fits, the first context with L over it does
not, and in between the first failure is found piece by piece, by binary search in each piece.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from . import activations as act
from .allocator import LARGE, POOL_ROUNDING_BYTES, pool_of
from .errors import InvalidSpecError
from .estimate import MAX_BATCH, MAX_CONTEXT, Planner, Settings, make_settings, resident
from .gpus import Gpu, custom_gpu, get_gpu, gpu_catalog
from .overhead import cuda_context_range_bytes, fragmentation_high_bytes
from .quant import PRECISION_ORDER, TRANSFORMERS_QUANTS, get_quant
from .units import check_int


def context_grid(points: int = 64, lo: int = 1024, hi: int = 131072) -> tuple[int, ...]:
    """Log-spaced integer contexts from lo to hi (both included), without duplicates."""
    if points < 2:
        return (lo,)
    r = math.log(hi / lo)
    return tuple(sorted({round(lo * math.exp(r * i / (points - 1))) for i in range(points)}))


def _settings(
    model: Any, gpu: Any, gpu_memory_bytes: int | None, defaults: dict[str, Any], **kw: Any
) -> tuple[Settings, int]:
    """Settings for a solver and the memory it must fit in.

    A ``Settings`` keeps every field except those given here (None = not given); anything else
    is built with ``defaults`` under the given fields."""
    given = {k: v for k, v in kw.items() if v is not None}
    if isinstance(model, Settings):
        s = replace(model, **given) if given else model
        if gpu is not None:
            s = replace(s, gpu=get_gpu(gpu))
    else:
        s = make_settings(model, gpu=gpu, **{**defaults, **given})
    if gpu_memory_bytes is not None:
        check_int(gpu_memory_bytes, "gpu_memory_bytes", 1)
        if s.gpu is None:
            s = replace(s, gpu=custom_gpu(gpu_memory_bytes))
        return s, gpu_memory_bytes
    if s.gpu is None:
        raise InvalidSpecError("gpu is required: give a catalog key or gpu_memory_bytes")
    return s, s.gpu.memory_bytes


def _prompt(s: Settings, context: int | None) -> int:
    return (s.context if context is None else context) - s.new_tokens


def device_used(s: Settings, context: int | None = None) -> int:
    """``device_used_bytes`` of a setting (at ``context`` if given), as ``estimate()`` gives it."""
    return Planner(s).totals(_prompt(s, context)).device_used_bytes


def totals(s: Settings) -> dict[str, int]:
    """The seven top-level byte fields of a setting, as ``estimate()`` gives them."""
    return Planner(s).totals(s.prompt_tokens).to_dict()


def largest_true(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """Largest x in [lo, hi] with fits(x), given fits is monotone (true then false); lo-1 if none.

    Binary search; for predicates that are monotone by construction (the vLLM and llama.cpp
    engine models). The transformers replay is not: see ``max_context``."""
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


# ---------------------------------------------------------------------------- safe context search


def _floor(c: act.Candidate, t: int) -> tuple[int, int]:
    """(allocator bytes, segment floor) of a candidate at ``t``: the floor counts the small and
    medium pools without their round-up to whole segments, so it never decreases with t."""
    blk, small, medium, large = act.pools(c, t)
    return blk, large + small + medium


def _lower(planner: Planner, t: int) -> int:
    """A lower bound of device_used at prompt ``t`` that never decreases with t, within
    POOL_ROUNDING_BYTES of it. Every forward is counted (no decode shortcut)."""
    r = planner.resident
    best = 0
    for phase in planner.plans(t).phases:
        blk_p = floor_p = 0
        for c in phase.cands:
            blk, floor = _floor(c, t)
            blk_p, floor_p = max(blk_p, blk), max(floor_p, floor)
        best = max(best, r.allocated + blk_p, r.reserved + floor_p)
    return best + r.cuda_context_bytes


def _piece_end(planner: Planner, t: int, hi: int) -> int:
    """The last prompt length from ``t`` (at most ``hi``) before a tensor changes pool or the
    replay changes shape: device_used does not decrease on [t, result]."""
    plans = planner.plans(t)
    end = min(plans.hi, hi)
    for phase in plans.phases:
        for c in phase.cands:
            for p in c.sizes:
                k = pool_of(act.peval(p, t))
                if k == LARGE or pool_of(act.peval(p, end)) == k:
                    continue
                lo_, hi_ = t, end  # pool(lo_) == k < pool(hi_)
                while hi_ - lo_ > 1:
                    mid = (lo_ + hi_) // 2
                    lo_, hi_ = (mid, hi_) if pool_of(act.peval(p, mid)) == k else (lo_, mid)
                end = lo_
    return end


def _first_over(planner: Planner, limit: int, lo: int, hi: int) -> int | None:
    """The smallest prompt length in [lo, hi] whose device_used exceeds ``limit``; None if none."""

    def used(t: int) -> int:
        return planner.totals(t).device_used_bytes

    # a: the last prompt that certainly fits (upper bound within the limit); all before it fit too.
    a = largest_true(lambda t: _lower(planner, t) + POOL_ROUNDING_BYTES <= limit, lo, hi)
    if a >= hi:
        return None
    # b: the first prompt that certainly does not fit (lower bound over the limit), or hi + 1.
    b = largest_true(lambda t: _lower(planner, t) <= limit, a + 1, hi) + 1
    t = a + 1
    while t < b:  # in between, device_used does not decrease within a piece
        end = _piece_end(planner, t, b - 1)
        if used(end) <= limit:
            t = end + 1
            continue
        return largest_true(lambda x: used(x) <= limit, t, end) + 1
    return b if b <= hi else None


# Which end of device used a solver fits in the GPU: "point" (the estimate), "high" (the range's
# high end: the answer fits for certain, ``fit_verdict`` "fits") or "low" (its low end: the answer
# may fit; beyond it nothing fits).
BOUNDS = ("point", "high", "low")


def point_limit(s: Settings, memory_bytes: int, bound: str = "point") -> int:
    """The largest device-used point whose ``bound`` end fits in ``memory_bytes``.

    Both ends of ``estimate()``'s range are increasing functions of the point (point = reserved +
    CUDA context): low = reserved + the class's lowest context; high = reserved +
    ``fragmentation_high_bytes(reserved)`` + the highest context. So "the bound's end fits" is "the
    point fits this limit", and every solver keeps its exact search on the point."""
    if bound not in BOUNDS:
        raise InvalidSpecError(f"bound must be one of {', '.join(BOUNDS)}: {bound!r}")
    if bound == "point":
        return memory_bytes
    r = resident(s)
    ctx_low, ctx_high = cuda_context_range_bytes(s.gpu.cls if s.gpu else "generic")
    if bound == "low":
        return memory_bytes - ctx_low + r.cuda_context_bytes
    budget = memory_bytes - ctx_high  # reserved + fragmentation must fit in it; increasing in reserved
    reserved = largest_true(lambda x: x + fragmentation_high_bytes(s.attn, x, r.weights) <= budget, 0, max(budget, 0))
    return reserved + r.cuda_context_bytes


def _window(s: Settings) -> int:
    return min(s.model.max_position_embeddings, MAX_CONTEXT)


def max_context(
    model: Any = "llama-3.2-3b",
    quant: str | None = None,
    *,
    gpu: Any = None,
    gpu_memory_bytes: int | None = None,
    batch: int | None = None,
    limit: int | None = None,
    bound: str = "point",
    **kw: Any,
) -> int:
    """The largest context C such that C and every shorter context fit (device_used_bytes within
    the GPU's memory); at most the model's window (``max_position_embeddings``) and ``limit``.
    ``bound="high"``: the range's high end must fit (fits for certain); ``"low"``: its low end
    (may fit); see ``point_limit``.

    The shortest context is ``new_tokens + 1`` (a one-token prompt); 0 if even that does not fit.
    ``max_context(...) == spec.max_position_embeddings`` means the whole window fits.
    """
    n = kw.get("new_tokens", 32)
    shortest = n + 1 if isinstance(n, int) and not isinstance(n, bool) else 1  # a one-token prompt
    s, mem = _settings(
        model, gpu, gpu_memory_bytes, {"quant": "bf16", "batch": 1, "context": shortest}, quant=quant, batch=batch, **kw
    )
    N = s.new_tokens
    cap = _window(s) if limit is None else min(_window(s), limit)
    if cap < N + 1:
        return 0
    first = _first_over(Planner(s), point_limit(s, mem, bound), 1, cap - N)
    if first is None:
        return cap
    return first - 1 + N if first > 1 else 0


def max_batch(
    model: Any = "llama-3.2-3b",
    quant: str | None = None,
    context: int | None = None,
    *,
    gpu: Any = None,
    gpu_memory_bytes: int | None = None,
    limit: int = MAX_BATCH,
    bound: str = "point",
    **kw: Any,
) -> int:
    """The largest batch B such that B and every smaller batch fit at ``context``; 0 if batch 1
    does not fit. Bounded as ``max_context`` is: batches whose lower bound plus the pool
    round-up fits are certain, the rest are checked one by one. ``bound`` as in ``max_context``."""
    s, mem = _settings(
        model, gpu, gpu_memory_bytes, {"quant": "bf16", "context": 8192}, quant=quant, context=context, **kw
    )
    mem = point_limit(s, mem, bound)  # the range's ends do not depend on the batch but through the point
    t = s.prompt_tokens

    def lower(b: int) -> int:
        return _lower(Planner(replace(s, batch=b)), t)

    a = largest_true(lambda b: lower(b) + POOL_ROUNDING_BYTES <= mem, 1, limit)
    z = largest_true(lambda b: lower(b) <= mem, a + 1, limit) + 1  # the first batch surely over
    for b in range(a + 1, z):
        if device_used(replace(s, batch=b)) > mem:
            return b - 1
    return z - 1


def best_quant(
    model: Any = "llama-3.2-3b",
    context: int | None = None,
    *,
    gpu: Any = None,
    gpu_memory_bytes: int | None = None,
    quants: Iterable[str] = TRANSFORMERS_QUANTS,
    **kw: Any,
) -> str | None:
    """The highest-precision scheme (``quant.PRECISION_ORDER``) that fits; None if none does."""
    allowed = [get_quant(q).name for q in quants]
    s, mem = _settings(model, gpu, gpu_memory_bytes, {"context": 8192}, context=context, **kw)
    for q in PRECISION_ORDER:
        if q in allowed and device_used(replace(s, quant=q)) <= mem:
            return q
    return None


def smallest_gpu(
    model: Any = "llama-3.2-3b",
    quant: str | None = None,
    context: int | None = None,
    *,
    gpus: Iterable[Gpu] | None = None,
    **kw: Any,
) -> Gpu | None:
    """The catalog GPU with the least memory on which the setting fits; None if none does."""
    given = {k: v for k, v in dict(quant=quant, context=context, **kw).items() if v is not None}
    if isinstance(model, Settings):
        s = replace(model, **given) if given else model
    else:
        s = make_settings(model, **{"quant": "bf16", "context": 8192, **given})
    for g in sorted(gpus if gpus is not None else gpu_catalog(), key=lambda g: (g.memory_bytes, g.key)):
        if device_used(replace(s, gpu=g)) <= g.memory_bytes:
            return g
    return None


def sweep(
    model: Any = "llama-3.2-3b",
    quants: Iterable[str] = TRANSFORMERS_QUANTS,
    contexts: Iterable[int] | None = None,
    batch: int | None = None,
    *,
    gpu: Any = None,
    gpu_memory_bytes: int | None = None,
    **kw: Any,
) -> list[dict[str, Any]]:
    """One row per (quant, context): the top-level byte fields of ``Estimate.to_dict()``.

    Rows also carry ``fits`` when a GPU (or gpu_memory_bytes) is given. Every context must be a
    valid context of the setting (more than new_tokens, at most the model's window).
    """
    quants = [get_quant(q).name for q in quants]
    if not quants:
        raise InvalidSpecError("quants must name at least one scheme: []")
    grid = sorted({check_int(c, "contexts", 1) for c in (contexts if contexts is not None else context_grid())})
    if not grid:
        raise InvalidSpecError("contexts must list at least one context: []")
    given = {k: v for k, v in dict(batch=batch, **kw).items() if v is not None}
    if isinstance(model, Settings):
        s = replace(model, **given, context=grid[0])
    else:
        s = make_settings(model, **{"batch": 1, "context": grid[0], **given})
    if gpu is not None:
        s = replace(s, gpu=get_gpu(gpu))
    if gpu_memory_bytes is not None:
        check_int(gpu_memory_bytes, "gpu_memory_bytes", 1)
        if s.gpu is None:
            s = replace(s, gpu=custom_gpu(gpu_memory_bytes))
    mem = gpu_memory_bytes if gpu_memory_bytes is not None else (s.gpu.memory_bytes if s.gpu else None)
    try:  # validate every context, not only the first: above the first, every bound is an upper bound
        replace(s, context=grid[-1])
    except InvalidSpecError:
        for c in grid:  # the first context out of bounds raises
            replace(s, context=c)
    rows = []
    for q in quants:
        planner = Planner(replace(s, quant=q, context=grid[0]))
        for c in grid:
            tot = planner.totals(c - s.new_tokens)
            row: dict[str, Any] = tot.to_dict()
            row["quant"], row["context"], row["total_bytes"] = q, c, tot.device_used_bytes
            if mem is not None:
                row["fits"] = tot.device_used_bytes <= mem
            rows.append(row)
    return rows


__all__ = [
    "best_quant",
    "context_grid",
    "device_used",
    "largest_true",
    "max_batch",
    "max_context",
    "smallest_gpu",
    "sweep",
    "totals",
]
