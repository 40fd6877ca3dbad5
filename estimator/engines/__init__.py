"""Memory models of serving engines beyond transformers, side by side.

- ``vllm``: vLLM's startup accounting (V0 / V1), paged KV pool, blocks and concurrency,
  tensor and pipeline parallelism, the smallest catalog GPU set.
- ``llamacpp``: llama.cpp / Ollama with GGUF files: exact tensor types of each mixture,
  model / KV / compute buffers as llama.cpp prints them, partial offload.
- ``gguf_file``: tensor inventories from real ``.gguf`` and safetensors headers (no tensor data).
- ``executorch``: the Llama 3.2 on-device variants (BF16, SpinQuant, QAT+LoRA).
- ``cli``: the ``--engine`` hooks of ``python -m estimator estimate|fit``.

Standard library only; the header readers import ``gguf`` / ``safetensors`` lazily when asked.
"""

from .executorch import VARIANTS as EXECUTORCH_VARIANTS
from .executorch import ExecuTorchEstimate, estimate_executorch
from .llamacpp import (FTYPES, GGML_TYPES, GGUF_QUANTS, GgufTensor, LlamaCppEstimate, compute_buffers,
                       estimate_llamacpp, gguf_tensors, kv_buffer_bytes, max_context_llamacpp, model_buffers,
                       tensor_type, type_counts)
from .vllm import (VLLM_VERSIONS, VllmEstimate, VllmStartupError, estimate_vllm, kv_bytes_per_block,
                   max_model_len_vllm, smallest_gpu_set)
from .cli import ENGINES, EngineRefusal

__all__ = [
    "ENGINES", "EngineRefusal", "EXECUTORCH_VARIANTS", "ExecuTorchEstimate", "estimate_executorch",
    "FTYPES", "GGML_TYPES", "GGUF_QUANTS", "GgufTensor", "LlamaCppEstimate", "compute_buffers",
    "estimate_llamacpp", "gguf_tensors", "kv_buffer_bytes", "max_context_llamacpp", "model_buffers",
    "tensor_type", "type_counts", "VLLM_VERSIONS", "VllmEstimate", "VllmStartupError", "estimate_vllm",
    "kv_bytes_per_block", "max_model_len_vllm", "smallest_gpu_set",
]
