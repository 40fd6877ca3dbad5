"""Memory models of serving engines beyond transformers, side by side.

- ``vllm``: vLLM's startup accounting (V0 / V1), paged KV pool, blocks and concurrency,
  tensor and pipeline parallelism, the smallest catalog GPU set.
- ``llamacpp``: llama.cpp / Ollama with GGUF files: exact tensor types of each mixture,
  model / KV / compute buffers as llama.cpp prints them, partial offload.
- ``gguf_file``: tensor inventories from real ``.gguf`` and safetensors headers (no tensor data).
- ``executorch``: the Llama 3.2 on-device variants (BF16, SpinQuant, QAT+LoRA).
- ``cli``: the ``--engine`` flags of ``python -m estimator estimate|fit`` (argument parsing and
  tables only; nothing here imports it).

vLLM and llama.cpp give the one report type, ``estimator.report.MemoryReport``: ``vllm.report`` /
``llamacpp.report`` from an engine estimate, ``estimate_report`` / ``fit_report`` in each module
from settings (here as ``vllm_report``, ``llamacpp_report``, ...).

Standard library only; the ``gguf_file`` header readers are standard-library parsers (no ``gguf`` /
``safetensors`` package).
"""

from .executorch import VARIANTS as EXECUTORCH_VARIANTS
from .executorch import ExecuTorchEstimate, estimate_executorch
from .llamacpp import (
    FTYPES,
    GGML_TYPES,
    GGUF_QUANTS,
    GgufTensor,
    LlamaCppEstimate,
    compute_buffers,
    estimate_llamacpp,
    gguf_tensors,
    kv_buffer_bytes,
    max_context_llamacpp,
    model_buffers,
    tensor_type,
    type_counts,
)
from .llamacpp import estimate_report as llamacpp_estimate_report
from .llamacpp import fit_report as llamacpp_fit_report
from .llamacpp import report as llamacpp_report
from .vllm import (
    VLLM_VERSIONS,
    EngineRefusal,
    VllmEstimate,
    VllmStartupError,
    estimate_vllm,
    kv_bytes_per_block,
    max_model_len_vllm,
    smallest_gpu_set,
)
from .vllm import estimate_report as vllm_estimate_report
from .vllm import fit_report as vllm_fit_report
from .vllm import report as vllm_report
from .vllm_releases import NEWEST_RELEASE as VLLM_NEWEST_RELEASE
from .vllm_releases import Release as VllmRelease
from .vllm_releases import resolve_release as resolve_vllm_release

ENGINES = ("transformers", "vllm", "llama.cpp")  # the serving engines modelled, by their names in reports


def same_bits(quant: str) -> dict[str, str | int | None]:
    """The vLLM and llama.cpp weight formats with the bit width of the transformers ``quant``:
    ``{"bits", "vllm_dtype", "vllm_quantization", "gguf"}``.

    - 16/32-bit: the same dtype in each engine (GGUF F16 / BF16 / F32).
    - 8-bit: vLLM online fp8 (8 bits a linear weight plus a scale per shard); GGUF Q8_0 (int8 with an
      fp16 scale per 32: 8.5 bits a weight; LLM.int8 stores 8 plus an fp32 scale per row).
    - 4-bit: vLLM in-flight bitsandbytes NF4 (the layout transformers' nf4 loads); GGUF Q4_0 (4-bit
      with an fp16 scale per 32: 4.5 bits a weight, as NF4's 4 bits plus an fp32 absmax per 64).
      llama.cpp's popular Q4_K_M mixes in Q6_K tensors (about 4.9 bits): a choice, not the same width.
    """
    from ..quant import QUANTS

    bits = QUANTS[quant].bits
    if bits >= 16:
        dtype = {"fp32": "fp32", "fp16": "fp16"}.get(quant, "bf16")
        gguf = {"fp32": "f32", "fp16": "f16"}.get(quant, "bf16")
        return {"bits": bits, "vllm_dtype": dtype, "vllm_quantization": None, "gguf": gguf}
    if bits == 8:
        return {"bits": 8, "vllm_dtype": "auto", "vllm_quantization": "fp8", "gguf": "q8_0"}
    return {"bits": bits, "vllm_dtype": "auto", "vllm_quantization": "bitsandbytes", "gguf": "q4_0"}


__all__ = [
    "ENGINES",
    "EngineRefusal",
    "EXECUTORCH_VARIANTS",
    "ExecuTorchEstimate",
    "estimate_executorch",
    "FTYPES",
    "GGML_TYPES",
    "GGUF_QUANTS",
    "GgufTensor",
    "LlamaCppEstimate",
    "compute_buffers",
    "estimate_llamacpp",
    "gguf_tensors",
    "kv_buffer_bytes",
    "max_context_llamacpp",
    "model_buffers",
    "tensor_type",
    "type_counts",
    "VLLM_VERSIONS",
    "VllmEstimate",
    "VllmStartupError",
    "estimate_vllm",
    "kv_bytes_per_block",
    "max_model_len_vllm",
    "smallest_gpu_set",
    "same_bits",
    "llamacpp_report",
    "llamacpp_estimate_report",
    "llamacpp_fit_report",
    "vllm_report",
    "VLLM_NEWEST_RELEASE",
    "VllmRelease",
    "resolve_vllm_release",
    "vllm_estimate_report",
    "vllm_fit_report",
]
