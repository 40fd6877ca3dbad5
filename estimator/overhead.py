"""Fixed overheads outside the model's own tensors, per GPU architecture.

Every constant says where it comes from. Those marked *uncalibrated* are literature values,
to be replaced by the H100 measurements of the calibration run (issue 5); see
docs/research-overheads.md for the sources. Where no formula derives a term, it also has a range
(``CUDA_CONTEXT_RANGE_BYTES``, ``FRAGMENTATION_HIGH``), each bound with its source; the cuBLAS
workspace is exact (low = high).
"""

from __future__ import annotations

import math

from .units import MiB

# cuBLAS workspace, allocated through the caching allocator on the first GEMM of a
# (handle, stream) and never freed, so it is inside memory_allocated / reserved.
# Derived: CublasHandlePool.cpp parseChosenWorkspaceSize: default ":4096:2:16:8" =
# 2 x 4 MiB + 8 x 16 KiB = 8,519,680 B; 32 MiB when compute capability major is 9 (Hopper,
# pytorch#89027) and, since pytorch#175344, 10 and 12 (Blackwell). From torch ~2.11 the
# cuBLASLt workspace shares this buffer by default (pytorch#168175), so no separate 1 MiB.
CUBLAS_WORKSPACE_DEFAULT_BYTES = 4 * MiB * 2 + 16 * 1024 * 8
CUBLAS_WORKSPACE_LARGE_BYTES = 32 * MiB
_LARGE_WORKSPACE_ARCHS = ("sm90", "sm100", "sm120")

# CUDA context (driver, kernel modules, lazy loading on), seen by NVML, never by torch.
# Uncalibrated literature values: 287 MB lazy (pytorch#86509), ~300-400 MB (pytorch#107667,
# #109888), 256 MiB bare on an RTX 3090 (InvokeAI#9413), 426 MiB on an RTX 6000 Ada with
# torch 2.10/cu130 after cuBLAS loads (unsloth-zoo#1053). Datacenter parts load larger
# module images; memory-model.md section 5.3 puts them at 0.3-0.6 GiB.
CUDA_CONTEXT_BYTES = {
    "datacenter": 512 * MiB,  # uncalibrated: midpoint of 0.3-0.6 GiB (memory-model.md 5.3)
    "workstation": 426 * MiB,  # RTX 6000 Ada reading (unsloth-zoo#1053)
    "consumer": 426 * MiB,  # same Ada-generation reading
    "custom": 512 * MiB,  # unknown card: the larger figure
    "generic": 512 * MiB,
}


# The CUDA context's range per GPU class, bounded by the cited readings (no formula derives it):
# (low, high). The point value above lies inside.
CUDA_CONTEXT_RANGE_BYTES = {
    # memory-model.md 5.3: datacenter parts (larger module images) at 0.3-0.6 GiB.
    "datacenter": (307 * MiB, 614 * MiB),
    # low: 256 MiB bare on an RTX 3090 (InvokeAI#9413); high: 426 MiB on an RTX 6000 Ada after
    # cuBLAS loads (unsloth-zoo#1053), the largest workstation / consumer reading.
    "workstation": (256 * MiB, 426 * MiB),
    "consumer": (256 * MiB, 426 * MiB),
    # an unknown card: from the smallest reading of any class (256 MiB, RTX 3090) to the largest
    # (0.6 GiB, datacenter, memory-model.md 5.3).
    "custom": (256 * MiB, 614 * MiB),
    "generic": (256 * MiB, 614 * MiB),
}

# Allocator fragmentation on peak reserved: segments the caching allocator keeps mapped that the
# peak's live tensors do not need (blocks freed earlier, split, not reusable). The estimate does
# not model it, so reserved's range is [estimate, estimate + f x (estimate - weights)]: low 0
# (a replay without fragmentation is the estimate); high f, the largest excess of the trace's
# allocator replay over the estimate, as a fraction of the estimate's transient part (reserved
# minus the weights, whose segments are packed exactly), per attention kind, over the committed
# validation/trace/validation.json (76 points: 69 sdpa, max 0.2519 at 3B bf16 batch 2 4K; 7
# eager, max 0.4980 at 3B bf16 8K), rounded up. Reproduce:
#   python3 -c "import json; rows = json.load(open('validation/trace/validation.json'))['rows']
#   print({a: max((c['peak_reserved_bytes']['measured'] - c['peak_reserved_bytes']['estimate'])
#   / (c['peak_reserved_bytes']['estimate'] - c['weights_bytes']['estimate']) for r in rows
#   if r['settings']['attn'] == a for c in [r['counters']]) for a in ('sdpa', 'eager')})"
FRAGMENTATION_HIGH = {"sdpa": 0.252, "eager": 0.499}


def fragmentation_high_bytes(attn: str, peak_reserved_bytes: int, weights_bytes: int) -> int:
    """The most fragmentation reserved may add above the estimate (``FRAGMENTATION_HIGH``)."""
    frac = FRAGMENTATION_HIGH.get(attn, max(FRAGMENTATION_HIGH.values()))
    return math.ceil(frac * max(0, peak_reserved_bytes - weights_bytes))


def cuda_context_range_bytes(gpu_class: str) -> tuple[int, int]:
    return CUDA_CONTEXT_RANGE_BYTES.get(gpu_class, CUDA_CONTEXT_RANGE_BYTES["generic"])


def cublas_workspace_bytes(arch: str) -> int:
    return CUBLAS_WORKSPACE_LARGE_BYTES if arch in _LARGE_WORKSPACE_ARCHS else CUBLAS_WORKSPACE_DEFAULT_BYTES


def cuda_context_bytes(gpu_class: str) -> int:
    return CUDA_CONTEXT_BYTES.get(gpu_class, CUDA_CONTEXT_BYTES["generic"])
