"""ExecuTorch (on-device) memory model for the Llama 3.2 releases: program file and runtime memory.

The Llama 3.2 1B/3B on-device release ships three variants, exported with
``examples/models/llama/export_llama`` (pytorch/executorch):

- ``bf16``: the baseline, ``-d bf16``: every parameter in bf16 (the tied embedding stored once).
- ``spinquant``: ``-qmode 8da4w --preq_group_size 32 --use_spin_quant native --preq_mode
  8da4w_output_8da8w --preq_embedding_quantize 8,0 -d fp32``: linears int4 groupwise (group 32)
  with 8-bit dynamic activations, an 8-bit per-channel embedding and a separate 8-bit classifier
  (the weights are ``estimator.quant`` scheme ``et-4bit``). SpinQuant's R1/R2 rotations are merged
  into the weights; R3/R4 are online Hadamard transforms with no stored weights.
- ``qat-lora``: the same quantized layout plus LoRA adapters of rank 16 (``-qat -lora 16``) on every
  linear, kept in the export dtype (fp32).

The program also holds the rotary tables ``freqs_cos``/``freqs_sin`` (``Rope.precompute_freqs_cis``,
[max_seq_len, head_dim/2], fp32). The KV cache (``KVCache`` mutable buffers
[1, n_kv_heads, max_seq_len, head_dim] in the export dtype) and the activations are memory-planned
into the runtime arena, not stored in the file.

Why the 4-bit variants need more runtime memory than bf16 at long context: ``-d fp32`` makes the
KV cache and the planned activations fp32 (4 bytes an element against bf16's 2), so each token of
context costs twice as much while the weights are ~2.4x smaller; past ``crossover_context`` tokens the
KV cache outweighs the saving (Llama 3.2 3B: between 8K and 32K). The fix ExecuTorch offers is
``--quantize_kv_cache`` (``kv_cache="int8"``): ``QuantizedKVCache`` in
``examples/models/llama/source_transformation/quantized_kv_cache.py`` stores int8 K/V with an fp32
scale and an int8 zero point per token and KV head (AffineAsymmetric; releases before mid-2025 kept
float64 scales and int64 zero points, 16 bytes per token and head instead of 5).

Example, Llama 3.2 3B bf16 at max_seq_len 2048: 3,212,749,824 x 2 B + 1 MiB rope tables =
6128.8 MiB (model card: 6129 MB, numerically MiB).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidSpecError, UnknownNameError
from ..model import ModelSpec

VARIANTS = ("bf16", "spinquant", "qat-lora")
LORA_RANK = 16  # export_llama -lora 16 for the QAT+LoRA release
DEFAULT_CONTEXT = 8192  # the release's usual on-device context
KV_CACHES = ("export", "int8")  # the export dtype, or --quantize_kv_cache
# --quantize_kv_cache, per token and KV head, beside head_dim int8 values: fp32 scale + int8 zero point
# (QuantizedKVCache, current quantized_kv_cache.py; see the module docstring for older releases)
INT8_KV_QPARAM_BYTES = 4 + 1


@dataclass(frozen=True, slots=True)
class ExecuTorchEstimate:
    """Program size and runtime memory for one variant and context. Fields are bytes."""

    variant: str
    context: int
    weights_bytes: int
    lora_bytes: int
    rope_tables_bytes: int
    program_bytes: int
    kv_cache_bytes: int
    activations_bytes: int

    @property
    def runtime_bytes(self) -> int:
        """Resident memory: the program's constants (mmapped) + the memory-planned arena."""
        return self.program_bytes + self.kv_cache_bytes + self.activations_bytes

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["runtime_bytes"] = self.runtime_bytes
        return d


def _linears(spec: ModelSpec) -> list[tuple[int, int]]:
    H, I, q, kv = spec.hidden_size, spec.intermediate_size, spec.q_dim, spec.kv_dim
    return [(q, H), (kv, H), (kv, H), (H, q), (I, H), (I, H), (H, I)] * spec.num_hidden_layers


def estimate_executorch(
    spec: ModelSpec, variant: str = "spinquant", context: int = DEFAULT_CONTEXT, kv_cache: str = "export"
) -> ExecuTorchEstimate:
    """Program (.pte) bytes and runtime bytes at ``context`` tokens (= the export's max_seq_len).
    ``kv_cache``: "export" (the export dtype) or "int8" (``--quantize_kv_cache``)."""
    if variant not in VARIANTS:
        raise UnknownNameError(f"executorch variant must be one of {', '.join(VARIANTS)}: {variant!r}")
    if kv_cache not in KV_CACHES:
        raise UnknownNameError(f"executorch kv_cache must be one of {', '.join(KV_CACHES)}: {kv_cache!r}")
    if context < 1:
        raise InvalidSpecError(f"context must be >= 1 token: {context}")
    if variant == "bf16":
        weights = 2 * spec.num_params
        act_bytes = 2
    else:
        from ..quant import weight_bytes

        w = weight_bytes(spec, "et-4bit")
        weights = w.parameters_bytes + w.quant_state_bytes
        act_bytes = 4  # -d fp32
    lora = 0
    if variant == "qat-lora":
        lora = sum(LORA_RANK * (o + i) for o, i in _linears(spec)) * 4
    rope = 2 * context * (spec.rotary_dim // 2) * 4
    program = weights + lora + rope
    if kv_cache == "int8":
        kv_heads = spec.kv_dim // spec.head_dim
        kv = spec.num_hidden_layers * 2 * context * kv_heads * (spec.head_dim + INT8_KV_QPARAM_BYTES)
    else:
        kv = spec.num_hidden_layers * 2 * context * spec.kv_dim * act_bytes
    # Planned activations of a prefill of `context` tokens: residual, normed input and attention
    # output [T, H], q/k/v [T, q + 2 kv], and the MLP's gate, up and product [T, I]; logits only
    # for the last token (generate_full_logits off): [1, vocab] fp32.
    T = context
    act = T * act_bytes * (3 * spec.hidden_size + spec.q_dim + 2 * spec.kv_dim + 3 * spec.intermediate_size)
    act += 4 * spec.vocab_size
    return ExecuTorchEstimate(variant, context, weights, lora, rope, program, kv, act)


def crossover_context(spec: ModelSpec, variant: str, kv_cache: str = "export") -> int | None:
    """The shortest context at which ``variant`` needs more runtime memory than the bf16 variant
    (both grow linearly with the context); None if it never does."""

    def line(v: str, kv: str) -> tuple[int, int]:
        a, b = (estimate_executorch(spec, v, t, kv).runtime_bytes for t in (1, 2))
        return a - (b - a), b - a  # intercept, bytes per token

    a_q, b_q = line(variant, kv_cache)
    a_b, b_b = line("bf16", "export")
    if b_q <= b_b:
        return None if a_q <= a_b else 1
    return max(1, (a_b - a_q) // (b_q - b_b) + 1)  # smallest T with a_q + b_q T > a_b + b_b T
