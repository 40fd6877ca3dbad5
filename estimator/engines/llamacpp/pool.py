"""The CUDA backend's memory pool: temporaries outside every buffer llama.cpp logs.

ggml-cuda allocates kernel temporaries from a per-device pool (``ggml_cuda_pool_vmm`` maps
physical memory in granularity steps as the pool grows and never unmaps it; ``ggml_cuda_pool_leg``
keeps freed cudaMalloc blocks). No log line reports it, and which kernels need it depends on the
GPU and the build (MMQ / MMVQ kernels quantize the activations to q8_1 in a few MiB; the cuBLAS
route does not), so the estimate carries it as a range: low 0, high the largest set of pool
temporaries one op can hold, from ggml-cuda.cu:

- ``ggml_cuda_op_mul_mat_cublas`` (quantized or F16 weights on Volta+ when MMQ is not chosen, and
  every batch over the MMVQ / mul_mat_vec limit): ``src0_as_f16`` (the weight dequantized to F16,
  row_diff x ne00), ``src1_as_f16`` (the activations, src1_ncols x ne10) and the F16 result
  (row_diff x src1_ncols), all live for the cublasGemmEx call: 2 B x (out x in + n x in + out x n)
  for the largest layer matrix at n = n_ubatch tokens. The output layer is left out: it runs on
  the outputs only (one row per sequence when generating), a matrix-vector product.
- ``ggml_cuda_flash_attn_ext`` with a quantized KV cache: K and V converted to F16 for the kernel
  (``K_f16`` / ``V_f16``, ggml_nelements each), the whole cache of one layer.

Rounded up to the VMM pool's 2 MiB granularity (``CU_MEM_ALLOC_GRANULARITY_RECOMMENDED`` on
current NVIDIA GPUs). The cuBLAS library's own workspace (``estimator.overhead``) is added by the
caller: cuBLAS allocates it itself at the first GEMM.
"""

from __future__ import annotations

from ...model import ModelSpec

MiB = 1 << 20
VMM_GRANULARITY_BYTES = 2 * MiB  # cuMemGetAllocationGranularity(RECOMMENDED) on NVIDIA GPUs
F16 = 2


def _pad(n: int, a: int) -> int:
    return -(-n // a) * a


def layer_matrices(spec: ModelSpec) -> list[tuple[int, int]]:
    """(out, in) of every matmul weight in a decoder layer: q, k, v, o, gate, up, down."""
    H, I = spec.hidden_size, spec.intermediate_size
    return [
        (spec.q_dim, H),
        (spec.kv_dim, H),
        (spec.kv_dim, H),
        (H, spec.q_dim),
        (I, H),
        (I, H),
        (H, I),
    ]


def cuda_pool_high_bytes(
    spec: ModelSpec, n_ubatch: int, *, kv_cells: int, kv_quantized: bool, flash_attn: bool, on_gpu: bool = True
) -> int:
    """The most the CUDA pool holds at once (see the module docstring); 0 with nothing on the GPU."""
    if not on_gpu:
        return 0
    n = n_ubatch
    gemm = max(F16 * (o * i + n * i + o * n) for o, i in layer_matrices(spec))
    fa = 2 * F16 * kv_cells * spec.kv_dim if flash_attn and kv_quantized else 0
    return _pad(max(gemm, fa), VMM_GRANULARITY_BYTES)
