"""Transient memory of a Hugging Face transformers forward pass, replayed tensor by tensor.

The replay walks the allocations and frees that transformers 5.x makes in one forward of
``LlamaForCausalLM`` (read from ``modeling_llama.py``, ``integrations/sdpa_attention.py``,
``cache_utils.py``, ``masking_utils.py`` and ``generation/utils.py``). Only the *last* decoder
layer is replayed: the peak comes there, because the KV of every layer is then present, and
the earlier layers contribute just their finished K/V tensors.

Sizes are symbolic: each is a polynomial in the context ``T`` (``Poly``), so one replay gives a
``Plan`` that is evaluated for any context in microseconds; this is what makes live charts and
the context solver cheap, and ``estimate()`` uses the same plan, so they agree exactly.
A plan records, at each allocation, the multiset of live tensors; candidates that another
candidate contains are dropped. Evaluating a plan at ``T`` gives the peak of live bytes both raw
and as the caching allocator charges them (``allocator.block_bytes``).

For bf16 + SDPA without a padding mask the replay gives, per prompt token (memory-model.md 4.1,
validated against fake-tensor traces): KV 114,688 B + MLP temporaries 6*I + 4 hidden-size
tensors 8*H + cos/sin 4*d + ids, about 188,936 B/token for Llama 3.2 3B, with the peak in the
last MLP.

Quantized linears add their own transients (bitsandbytes 0.50 ``backends/cuda/ops.py`` and
``autograd/_functions.py``): a dequantized weight copy for 4-bit when the custom kernel is not
used, int8 input/output copies for LLM.int8, an fp8 input copy for fp8.

The package, by concern: ``poly`` (sizes as polynomials in T), ``forward`` (the replay of one
forward, ``trace_forward``) and ``plan`` (``plan``, ``evaluate``: the candidates for the peak
and their bytes at one context, with the allocator rules of ``allocator.py``).
"""

from .forward import (
    AWQ_DEQUANT_MIN_M,
    BNB_FP32_FUSED_BELOW_M,
    BNB_FUSED_MAX_M,
    BNB_LARGE_W_FUSED_MAX_M,
    CARVED,
    FP32,
    FRESH,
    INPUT_NAMES,
    INT64,
    KERNEL_M_THRESHOLDS,
    LAYER_TAGS,
    SURCHARGE,
    Forward,
    Snapshot,
    trace_forward,
)
from .plan import Candidate, evaluate, measure, plan, pools, upper_bounds
from .poly import ZERO, P, Poly, min_on, padd, peval, pmul, pscale

__all__ = [
    "AWQ_DEQUANT_MIN_M",
    "BNB_FP32_FUSED_BELOW_M",
    "BNB_FUSED_MAX_M",
    "BNB_LARGE_W_FUSED_MAX_M",
    "CARVED",
    "FP32",
    "FRESH",
    "INPUT_NAMES",
    "INT64",
    "KERNEL_M_THRESHOLDS",
    "LAYER_TAGS",
    "P",
    "SURCHARGE",
    "ZERO",
    "Candidate",
    "Forward",
    "Poly",
    "Snapshot",
    "evaluate",
    "measure",
    "min_on",
    "padd",
    "peval",
    "plan",
    "pmul",
    "pools",
    "pscale",
    "trace_forward",
    "upper_bounds",
]
