"""Weight quantization schemes and the exact bytes each one stores.

``weight_tensors(spec, quant)`` expands the model's tensor inventory (``model.tensors``) into
the tensors that exist after loading with that scheme: packed weights, scales, absmax, code
tables, and the modules each scheme leaves unquantized. ``weights_bytes`` sums them.

Llama 3.2 3B, exact tensor bytes (parameters + quantization state + the 512 B of fp32
rotary buffers):

==========  ==============  ==========================================================
scheme      bytes           layout of each quantized nn.Linear (n = out x in elements)
==========  ==============  ==========================================================
bf16        6,425,500,160   2 B/element
int8        3,610,023,424   int8 CB (n B) + fp32 SCB row scales (4 x out B)
nf4         2,373,814,528   uint8 packed nibbles (n/2) + fp32 absmax per 64 + fp32[16] code
nf4-dq      2,242,663,808   packed (n/2) + uint8 absmax per 64 + fp32 absmax per 256 blocks
                            + fp32[256] code2 + fp32[16] code + fp32 offset
==========  ==============  ==========================================================

Sources: bitsandbytes 0.50 ``functional.quantize_4bit`` / ``QuantState`` (blocksize 64, nested
blocksize 256, per-layer code tensors), ``nn.Int8Params._quantize`` (CB int8 + SCB fp32 [out]),
transformers 5.x ``get_keys_to_not_convert`` (embedding, lm_head and norms stay in the compute
dtype; only nn.Linear layers are converted). GPTQ/AWQ: the QuantLinear buffers of
gptqmodel/auto-gptq (qweight/qzeros int32, scales fp16, g_idx int32) and AutoAWQ WQLinear
(qweight/qzeros int32 packed along out, scales fp16). ExecuTorch: torchao 8da4w as used by
the Llama 3.2 quantized release (int4 groupwise, group 32, fp32 scales; 8-bit per-channel
embedding and classifier with fp32 scales, classifier stored separately).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .errors import UnknownNameError
from .model import ModelSpec, tensors
from .units import cdiv


@dataclass(frozen=True, slots=True)
class Quant:
    """A weight storage scheme.

    bits: nominal bits per quantized weight (before scales). compute_bytes: bytes per
    element of the compute dtype that activations, the embedding and norms use.
    """

    name: str
    label: str
    bits: int
    compute_bytes: int
    family: str  # "float", "bnb", "fp8", "gptq", "awq", "executorch"
    note: str


QUANTS: dict[str, Quant] = {
    q.name: q
    for q in (
        Quant("fp32", "FP32", 32, 4, "float", "full precision"),
        Quant("fp16", "FP16", 16, 2, "float", "half precision"),
        Quant("bf16", "BF16", 16, 2, "float", "bfloat16, the Llama 3.2 checkpoint dtype"),
        Quant("fp8", "FP8 (e4m3)", 8, 2, "fp8", "e4m3 weights, one fp32 scale per tensor; embedding/lm_head 16-bit"),
        Quant("int8", "bnb LLM.int8", 8, 2, "bnb", "bitsandbytes int8 weights + fp32 row scales"),
        Quant("nf4", "bnb NF4", 4, 2, "bnb", "bitsandbytes 4-bit NormalFloat, fp32 absmax per 64"),
        Quant("nf4-dq", "bnb NF4 + double quant", 4, 2, "bnb", "NF4 with 8-bit absmax (second level per 256 blocks)"),
        Quant("fp4", "bnb FP4", 4, 2, "bnb", "bitsandbytes 4-bit float, fp32 absmax per 64"),
        Quant("fp4-dq", "bnb FP4 + double quant", 4, 2, "bnb", "FP4 with 8-bit absmax (second level per 256 blocks)"),
        Quant(
            "gptq-int4", "GPTQ int4 g128", 4, 2, "gptq", "int32-packed 4-bit, fp16 scales + packed zeros per 128, g_idx"
        ),
        Quant("awq-int4", "AWQ int4 g128", 4, 2, "awq", "int32-packed 4-bit, fp16 scales + packed zeros per 128"),
        Quant(
            "et-4bit",
            "ExecuTorch 4-bit g32",
            4,
            2,
            "executorch",
            "Llama 3.2 quantized release: int4 group 32 linears, int8 per-channel embedding/classifier",
        ),
    )
}

# Order from most to least precise, used by "highest-precision quant that fits".
PRECISION_ORDER = (
    "fp32",
    "bf16",
    "fp16",
    "fp8",
    "int8",
    "gptq-int4",
    "awq-int4",
    "nf4",
    "fp4",
    "nf4-dq",
    "fp4-dq",
    "et-4bit",
)
# Schemes the transformers engine loads (ExecuTorch is a separate runtime).
TRANSFORMERS_QUANTS = tuple(q for q in PRECISION_ORDER if q != "et-4bit")

BNB_BLOCK = 64  # Params4bit blocksize default (bitsandbytes nn/modules.py)
BNB_NESTED_BLOCK = 256  # blocksize of the second-level absmax quantization (functional.quantize_4bit)
GPTQ_GROUP = 128
AWQ_GROUP = 128
ET_GROUP = 32


def compute_dtype(quant: str) -> str:
    """Activation (and unquantized-parameter) dtype transformers runs a quantization in: fp32 for
    fp32, fp16 for fp16 and for GPTQ/AWQ (their kernels take fp16), bf16 otherwise."""
    if quant == "fp32":
        return "fp32"
    return "fp16" if quant in ("fp16", "gptq-int4", "awq-int4") else "bf16"


def get_quant(name: str) -> Quant:
    try:
        return QUANTS[name]
    except (KeyError, TypeError):
        raise UnknownNameError(f"quant must be one of {', '.join(QUANTS)}: {name!r}") from None


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored tensor after loading: name, bytes, and what it is."""

    name: str
    nbytes: int
    part: str  # "parameters", "quant_state" or "buffers"


def _linear(name: str, out: int, inp: int, q: Quant) -> list[Stored]:
    n = out * inp
    f = q.family
    if q.name == "fp32":
        return [Stored(name, 4 * n, "parameters")]
    if f == "float":
        return [Stored(name, 2 * n, "parameters")]
    if f == "fp8":
        return [Stored(name, n, "parameters"), Stored(name + "_scale", 4, "quant_state")]
    if q.name == "int8":
        return [Stored(name, n, "parameters"), Stored(name + ".SCB", 4 * out, "quant_state")]
    if f == "bnb":
        blocks = cdiv(n, BNB_BLOCK)
        out_ = [Stored(name, cdiv(n, 2), "parameters"), Stored(name + ".quant_state.code", 16 * 4, "quant_state")]
        if q.name.endswith("-dq"):
            out_ += [
                Stored(name + ".quant_state.absmax", blocks, "quant_state"),
                Stored(name + ".quant_state.offset", 4, "quant_state"),
                Stored(name + ".quant_state.state2.absmax", 4 * cdiv(blocks, BNB_NESTED_BLOCK), "quant_state"),
                Stored(name + ".quant_state.state2.code", 256 * 4, "quant_state"),
            ]
        else:
            out_.append(Stored(name + ".quant_state.absmax", 4 * blocks, "quant_state"))
        return out_
    if f == "gptq":
        groups = cdiv(inp, GPTQ_GROUP)
        return [
            Stored(name.replace(".weight", ".qweight"), 4 * cdiv(inp, 8) * out, "parameters"),
            Stored(name.replace(".weight", ".qzeros"), 4 * groups * cdiv(out, 8), "quant_state"),
            Stored(name.replace(".weight", ".scales"), 2 * groups * out, "quant_state"),
            Stored(name.replace(".weight", ".g_idx"), 4 * inp, "quant_state"),
        ]
    if f == "awq":
        groups = cdiv(inp, AWQ_GROUP)
        return [
            Stored(name.replace(".weight", ".qweight"), 4 * inp * cdiv(out, 8), "parameters"),
            Stored(name.replace(".weight", ".qzeros"), 4 * groups * cdiv(out, 8), "quant_state"),
            Stored(name.replace(".weight", ".scales"), 2 * groups * out, "quant_state"),
        ]
    if f == "executorch":
        return [
            Stored(name, cdiv(n, 2), "parameters"),
            Stored(name + ".scales", 4 * out * cdiv(inp, ET_GROUP), "quant_state"),
        ]
    raise AssertionError(f"unhandled quant family {f}")


@functools.lru_cache(maxsize=512)
def weight_tensors(spec: ModelSpec, quant: str) -> tuple[Stored, ...]:
    """Every tensor the model holds after loading with ``quant``, with its exact bytes."""
    q = get_quant(quant)
    other = 4 if q.name == "fp32" else 2  # dtype of unquantized parameters
    out: list[Stored] = []
    for t in tensors(spec):
        if t.kind == "buffer":
            out.append(Stored(t.name, 4 * t.numel, "buffers"))  # fp32 rotary inv_freq
        elif t.kind == "linear":
            out += _linear(t.name, t.shape[0], t.shape[1], q)
        elif q.family == "executorch" and t.kind in ("embedding", "lm_head"):
            # 8-bit per-channel with an fp32 scale per row.
            out += [Stored(t.name, t.numel, "parameters"), Stored(t.name + ".scales", 4 * t.shape[0], "quant_state")]
        else:
            out.append(Stored(t.name, other * t.numel, "parameters"))
    if q.family == "executorch" and spec.tie_word_embeddings:
        # The ExecuTorch export keeps a separate 8-bit classifier even for tied checkpoints.
        V, H = spec.vocab_size, spec.hidden_size
        out += [Stored("output.weight", V * H, "parameters"), Stored("output.scales", 4 * V, "quant_state")]
    return tuple(out)


@dataclass(frozen=True, slots=True)
class WeightBytes:
    """Exact stored bytes of a loaded model, split by what they are. All fields are bytes."""

    parameters_bytes: int
    quant_state_bytes: int
    buffers_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.parameters_bytes + self.quant_state_bytes + self.buffers_bytes


@functools.lru_cache(maxsize=512)
def weight_bytes(spec: ModelSpec, quant: str) -> WeightBytes:
    parts = {"parameters": 0, "quant_state": 0, "buffers": 0}
    for s in weight_tensors(spec, quant):
        parts[s.part] += s.nbytes
    return WeightBytes(parts["parameters"], parts["quant_state"], parts["buffers"])


def effective_bits_per_param(spec: ModelSpec, quant: str) -> float:
    """Stored bits (parameters + quant state) per model parameter."""
    w = weight_bytes(spec, quant)
    return 8 * (w.parameters_bytes + w.quant_state_bytes) / spec.num_params
