"""Fixed overheads outside the model's own tensors, per GPU architecture.

Every constant says where it comes from. Those marked *uncalibrated* are literature values,
to be replaced by the H100 measurements of the calibration run (issue 5); see
docs/research-overheads.md for the sources.
"""

from __future__ import annotations

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


def cublas_workspace_bytes(arch: str) -> int:
    return CUBLAS_WORKSPACE_LARGE_BYTES if arch in _LARGE_WORKSPACE_ARCHS else CUBLAS_WORKSPACE_DEFAULT_BYTES


def cuda_context_bytes(gpu_class: str) -> int:
    return CUDA_CONTEXT_BYTES.get(gpu_class, CUDA_CONTEXT_BYTES["generic"])
