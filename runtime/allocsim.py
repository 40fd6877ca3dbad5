"""Trace mode's allocated and reserved peaks: the traced alloc/free stream replayed through a
model of PyTorch's CUDA caching allocator.

Trace mode (``--device trace``) allocates nothing, so ``max_memory_allocated`` and
``max_memory_reserved`` cannot be read; they are simulated here from the ordered storage
allocations and frees that ``runtime.track.LiveBytes`` records (``events``), with
``estimator.allocator.CachingAllocator`` (its docstring has the rules and their source in
``c10/cuda/CUDACachingAllocator.cpp``; one model of the allocator for the estimator and the trace).
Segments are never released (no ``empty_cache``), so reserved only grows; peaks reset to the
current values at each phase boundary (``reset_peak_memory_stats``).
"""

from __future__ import annotations

from typing import Any

from estimator.allocator import Block, CachingAllocator
from estimator.gpus import get_gpu
from estimator.overhead import cublas_workspace_bytes

from .track import ALLOC, FREE

# The GPU the simulation stands for: the project's validation GPU (Hopper). Its only effect is
# the cuBLAS workspace torch 2.13 allocates through the caching allocator at the first GEMM
# (32 MiB on Hopper, estimator/overhead.py). Results name it (details.allocator_sim.gpu) so the
# comparison estimates for the same GPU.
TRACE_GPU = "h200-141gb"
TRACE_WORKSPACE_BYTES = cublas_workspace_bytes(get_gpu(TRACE_GPU).arch)


PHASES = ("load", "prefill", "decode")


def replay(events: list[tuple], workspace_bytes: int = TRACE_WORKSPACE_BYTES) -> dict[str, dict[str, int]]:
    """Run an event stream through the allocator: ``{phase: {peak_allocated_bytes,
    peak_reserved_bytes, allocated_end_bytes, reserved_end_bytes, segments}}``.

    ``events`` are ``(ALLOC, key, nbytes)``, ``(FREE, key)`` and ``(PHASE,)`` at each phase
    boundary (``LiveBytes.reset_peak``): load (the weights), prefill, decode, then the end. The
    cuBLAS workspace is allocated at the start of the prefill, before the forward's first
    tensor, and never freed (the estimator counts it from the first forward on)."""
    sim = CachingAllocator()
    live: dict[int, Block | None] = {}
    out: dict[str, dict[str, int]] = {}
    phase = 0
    for ev in events:
        if ev[0] == ALLOC:
            live[ev[1]] = sim.malloc(ev[2])
        elif ev[0] == FREE:
            sim.free(live.pop(ev[1], None))
        else:
            if phase < len(PHASES):
                out[PHASES[phase]] = _stats(sim)
            phase += 1
            sim.reset_peak()
            if phase == 1 and workspace_bytes:
                sim.malloc(workspace_bytes)
    if phase < len(PHASES):  # a run cut short (an error): what the phase reached
        out[PHASES[phase]] = _stats(sim)
    return out


def _stats(sim: CachingAllocator) -> dict[str, int]:
    return {
        "peak_allocated_bytes": sim.peak_allocated_bytes,
        "peak_reserved_bytes": sim.peak_reserved_bytes,
        "allocated_end_bytes": sim.allocated_bytes,
        "reserved_end_bytes": sim.reserved_bytes,
        "segments": sim.segments,
    }


COUNTERS = {
    "peak_allocated_bytes": "SIMULATED max_memory_allocated(): the traced storage allocations and frees replayed "
    "through a model of the CUDA caching allocator (runtime/allocsim.py: 512-B rounding, "
    "2/20 MiB segments, best fit, splitting, coalescing), with the cuBLAS workspace of "
    "details.allocator_sim.gpu at the first forward; no kernel-internal workspaces",
    "peak_reserved_bytes": "SIMULATED max_memory_reserved(): segments of the same allocator simulation",
}


def apply(r: dict[str, Any], events: list[tuple], workspace_bytes: int = TRACE_WORKSPACE_BYTES) -> None:
    """Trace results: peak allocated/reserved per phase from the simulation. The previous
    512-B-rounded live peaks move to ``details.peak_live_rounded_bytes``."""
    sims = replay(events, workspace_bytes)
    ph, d = r["phases"], r["details"]
    d["peak_live_rounded_bytes"] = {p: ph[p]["peak_allocated_bytes"] for p in PHASES if p in ph}
    for p, st in sims.items():
        ph[p]["peak_allocated_bytes"] = st["peak_allocated_bytes"]
        ph[p]["peak_reserved_bytes"] = st["peak_reserved_bytes"]
    d["allocator_sim"] = {
        "gpu": TRACE_GPU,
        "workspace_bytes": workspace_bytes,
        "segments": {p: st["segments"] for p, st in sims.items()},
    }
    r["counters"].update(COUNTERS)
