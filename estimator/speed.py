"""How fast: decode tokens/s (per sequence and over the batch), prefill tokens/s and time to first
token, each a low / point / high range, from the bytes each step reads and the FLOPs it does.

The model (a roofline per forward):

- **Decode step** (one token for each of ``batch`` sequences at KV length ``L``):
  ``bytes = W + batch x KV(L)`` where ``W`` is every stored weight byte the engine reads for one
  token (the layers' packed weights with their quantization state, norms and the output matrix;
  the embedding is a row gather, so only a tied embedding counts, as the output matrix) and
  ``KV(L)`` the cache one sequence holds at ``L`` tokens (``estimator.kv``, or ggml row sizes for
  llama.cpp). bitsandbytes 4-bit above one token per step dequantizes each weight to a 16-bit copy
  first (``matmul_4bit``'s gemv path takes only one row): that copy is written and read again, 4 B
  per weight more. ``flops = 2 x P x batch + 4 x layers x heads x head_dim x L x batch`` (``P`` the
  matmul parameters). The step takes ``max(bytes / (B x c), flops / (F x f_fl)) + t_fixed``:
  ``B`` the GPU's peak bandwidth, ``F`` its dense peak for the compute dtype (``estimator.gpus``),
  ``c`` the bandwidth ceiling and ``t_fixed`` the per-step time that does not scale with bytes
  (kernel launches, synchronisation, sampling, the host loop), both from public rows (below).
  Decode is reported at the mean KV length ``prompt + new_tokens / 2``: the step time is linear in
  ``L``, so that is the whole generation's average. llama.cpp's quantized weights go through MMVQ
  up to 8 tokens a step, which streams each weight block once but runs its dot product (unpacking
  included) once per token: every token after the first adds its integer operations (counted from
  ggml-cuda/vecdotq.cuh, ``MMVQ_INT_OPS_PER_4``) at the GPU's INT32 rate (``mmvq_s``). Without
  flash attention llama.cpp also writes, softmaxes and reads the attention scores as F32
  (``score_bytes``).
- **Prefill** (``prompt`` tokens per sequence in one forward): ``2 x P x prompt`` plus attention,
  ``4 x layers x heads x head_dim x prompt^2 / 2`` for the causal kernels (SDPA / flash / vLLM /
  llama.cpp's flash attention skip the masked half) or ``prompt^2`` for eager, at ``F x f_fl``
  (never faster than one read of the weights). TTFT is the prefill forward: it yields token one.
- **From public measurements, not one constant.** Every row of ``data/speed-measurements.csv``
  (public tok/s, each with its source and quote) gives the fraction of peak its GPU achieved,
  ``measured tok/s x bytes per step / B`` (decode) or ``measured tok/s x FLOPs per token / F``
  (prefill). For an engine and GPU class (``Fractions``): the ceiling ``c`` is the best decode
  row's fraction; ``t_fixed`` is each decode row's time beyond its bytes at ``c`` (and its MMVQ
  work); ``f_fl`` the prefill rows' fractions. The point is their median over the class's rows; a
  class with fewer than two rows uses every class's, an engine with fewer than two rows of a
  counter has llama.cpp's join its own (transformers: none, marked unvalidated). The range's ends
  are the min and max over at least ``RANGE_ROWS`` (9) rows, the pool widened by the engine's other
  classes, then llama.cpp's rows, when the class has fewer; the fast end reads bytes at the best
  fraction of that pool. ``validation()`` replays every row leave-one-out.

Worked example: Llama 3.1 8B Q4_K_M on an RTX 3080 (760 GB/s), llama.cpp, batch 1, a one-token
prompt and 128 new tokens: a step reads 4,617,396,480 B of weights (the 4,912,898,304 B of GGUF
tensors less the 295,501,824 B Q4_K token embedding, a row gather) plus 8,519,680 B of f16 KV at
the mean 65 tokens: the roofline is 164 tok/s. The consumer rows put the ceiling at 0.91 of peak
(6.72 ms for the bytes) and the fixed time at 0 / 1.78 / 4.00 ms: 149 / 118 / 93 tok/s against
111.95 measured (SP-001).
"""

from __future__ import annotations

import csv
import functools
import statistics
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .errors import InvalidSpecError, UnknownNameError
from .gpus import Gpu, get_gpu
from .kv import kv_cache_bytes
from .model import ModelSpec, load_model, tensors
from .quant import QUANTS, compute_dtype, get_quant, weight_tensors

ENGINES = ("transformers", "vllm", "llama.cpp")
# Engines whose public rows count as llama.cpp: Ollama runs llama.cpp's kernels (its runner).
ENGINE_FAMILY = {"transformers": "transformers", "vllm": "vllm", "llama.cpp": "llama.cpp", "ollama": "llama.cpp"}
COUNTERS = ("decode_tok_s", "decode_tok_s_aggregate", "prefill_tok_s")
VLLM_SPEED_QUANTS = ("bf16", "fp16", "fp8", "awq-int4", "gptq-int4")
VLLM_SPEED_KV = ("auto", "bf16", "fp16", "fp8")
LLAMACPP_KV = {"f16": "F16", "bf16": "BF16", "f32": "F32", "q8_0": "Q8_0", "q4_0": "Q4_0"}
# A class needs this many rows of its own before its range stands alone (one row is a point, not a
# range); below it the engine's rows of every class are used.
MIN_CLASS_ROWS = 2
# The host side of a llama.cpp partial offload (``n_gpu_layers`` below all), each overridable:
# dual-channel DDR5-5600 = 2 channels x 8 B x 5,600 MT/s (JEDEC JESD79-5 data rate), and PCIe 4.0
# x16 = 16 GT/s x 16 lanes x 128/130 encoding / 8 bits (PCI-SIG PCIe 4.0 base specification).
HOST_BANDWIDTH_BYTES_PER_S = 2 * 8 * 5_600_000_000
PCIE_BYTES_PER_S = 16_000_000_000 * 16 * 128 // 130 // 8
# The range's ends come from at least this many rows. The expected share of new rows inside the
# [min, max] of k exchangeable rows is (k - 1) / (k + 1) (order statistics): 9 rows give 80%. A
# class or engine with fewer rows keeps its own point and takes its ends from a wider pool.
RANGE_ROWS = 9
# llama.cpp's CUDA backend multiplies quantized weights by up to 8 tokens per step with MMVQ
# (ggml-cuda/mmvq.cuh MMVQ_MAX_BATCH_SIZE; mmvq.cu mul_mat_vec_q), above that with MMQ (tensor
# cores). MMVQ streams each weight block from memory once per step, but runs the block's whole
# dot product, unpacking included, once per token (the `for j < ncols_dst` loop around
# vec_dot_q_cuda): its integer work grows with the tokens, its bytes do not.
MMVQ_MAX_BATCH_SIZE = 8
# Integer operations per 4 weights per token of those dot products, counted as written in
# ggml-cuda/vecdotq.cuh (the vec_dot_*_q8_1 wrappers and their *_impl / *_impl_mmvq / *_impl_vmmq):
# shifts, masks and ors that unpack the weights, the byte merges of get_int_b2 for 2-byte aligned
# blocks, ggml_cuda_dp4a (4 int8 multiply-adds) and the integer scale products. Q4_0: per 32-bit
# word of 8 weights, 2 (get_int_b2 merge) + 3 (two nibble masks, one shift) + 2 dp4a = 7 -> 3.5.
# Q4_1: no merge (get_int_b4) -> 2.5. Q8_0: 2 (merge) + 1 dp4a per 4 weights -> 3. Q5_0 / Q5_1:
# Q4's work plus 4 shift-mask-or triples per 4 weights for the fifth bit (and Q5_0's merges) -> 17
# / 15. Q4_K (impl_vmmq, 16 weights a call): 6 masks / shifts, 8 dp4a (4 dot, 4 sum-of-u), 4
# scale products -> 4.5. Q5_K: Q4_K's plus the high bits (10 shifts / masks, 4 ors) -> 8. Q6_K
# (impl_mmvq, 8 weights a call): 16 unpack / subtract / dp4a / scale operations plus 4 merge ->
# 10. The wrappers' K-quant scale unpacking is not counted; other types have no count (no term).
MMVQ_INT_OPS_PER_4 = {
    "Q4_0": 3.5,
    "Q4_1": 2.5,
    "Q5_0": 17.0,
    "Q5_1": 15.0,
    "Q8_0": 3.0,
    "Q4_K": 4.5,
    "Q5_K": 8.0,
    "Q6_K": 10.0,
}
# 32-bit integer lanes per FP32 lane by architecture (the catalog's fp32 FLOPs count 2 per FP32
# lane per clock): Volta, Turing and GA100 SMs have 64 FP32 and 64 INT32 lanes (their
# whitepapers); GA10x, AD10x and GH100 SMs 128 FP32 lanes of which 64 also run INT32; RTX
# Blackwell (GB20x) SMs 128 unified INT32/FP32 lanes. Other architectures: no count.
INT32_LANES_PER_FP32_LANE = {"sm70": 1.0, "sm75": 1.0, "sm80": 1.0, "sm86": 0.5, "sm89": 0.5, "sm90": 0.5, "sm120": 1.0}
# Without flash attention llama.cpp materializes the attention scores (src/llama-graph.cpp
# build_attn_mha): the K*Q matmul writes them as F32 (ggml_mul_mat_set_prec GGML_PREC_F32),
# ggml_soft_max_ext reads and writes them, the KQV matmul reads them: 16 B per (query, key, head).
NON_FA_SCORE_BYTES = 4 * 4
# llama-bench's default micro-batch (-ub 512): the prompt reaches the GPU in chunks this long.
LLAMA_BENCH_UBATCH = 512


@dataclass(frozen=True, slots=True)
class Span:
    """A low / point / high range of one quantity (low <= point <= high)."""

    low: float
    point: float
    high: float

    def to_dict(self, digits: int = 4) -> dict[str, float]:
        return {"low": round(self.low, digits), "point": round(self.point, digits), "high": round(self.high, digits)}


@dataclass(frozen=True, slots=True)
class Fractions:
    """What one engine achieves on one GPU class, from the public rows it names.

    ``bandwidth``: the achieved fractions of peak bandwidth of the decode rows (min and median of
    the point's rows; max of the rows the range's ends come from: the fast end reads at it).
    ``ceiling``: the best point row's fraction, the one the point and the slow end read bytes at.
    ``fixed_s``: per decode step, the seconds a row took beyond its bytes at that ceiling (and
    llama.cpp's MMVQ integer work): the per-token cost that does not scale with bytes (kernel
    launches, synchronisation, sampling, the host loop); the median of the point's rows, the min
    and max of the ends' rows. ``flops``: the achieved fractions of the dense peak of the prefill
    rows, likewise.
    """

    bandwidth: Span
    fixed_s: Span
    flops: Span
    bandwidth_rows: tuple[str, ...]
    flops_rows: tuple[str, ...]
    basis: str
    validated: bool
    ceiling: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "bandwidth": self.bandwidth.to_dict(),
            "ceiling": round(self.ceiling, 4),
            "fixed_s": self.fixed_s.to_dict(6),
            "flops": self.flops.to_dict(),
            "bandwidth_rows": list(self.bandwidth_rows),
            "flops_rows": list(self.flops_rows),
            "basis": self.basis,
            "validated": self.validated,
        }


@dataclass(frozen=True, slots=True)
class Speed:
    """Predicted speed of one setting. Rates are tokens/s, times seconds; each a ``Span``.

    ``decode_tok_s`` is per sequence, ``aggregate_tok_s`` over the ``batch`` sequences decoding
    together; ``prefill_tok_s`` counts prompt tokens of the whole batch; ``ttft_s`` is the prefill
    forward. ``bound`` says which roof the decode step's point sits on.
    """

    engine: str
    model: str
    quant: str
    gpu: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    weights_read_bytes: int
    kv_read_bytes: int
    decode_flops: int
    prefill_flops: int
    decode_tok_s: Span
    aggregate_tok_s: Span
    prefill_tok_s: Span | None
    ttft_s: Span | None
    bound: str
    fractions: Fractions
    notes: tuple[str, ...] = field(default=())
    host_read_bytes: int = 0  # of the step's bytes, those a llama.cpp partial offload reads from host RAM

    @property
    def step_bytes(self) -> int:
        """Bytes one decode step reads at the mean KV length (weights + every sequence's KV)."""
        return self.weights_read_bytes + self.kv_read_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "model": self.model,
            "quant": self.quant,
            "gpu": self.gpu,
            "batch": self.batch,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "weights_read_bytes": self.weights_read_bytes,
            "kv_read_bytes": self.kv_read_bytes,
            "step_bytes": self.step_bytes,
            "host_read_bytes": self.host_read_bytes,
            "decode_flops": self.decode_flops,
            "prefill_flops": self.prefill_flops,
            "decode_tok_s": self.decode_tok_s.to_dict(2),
            "aggregate_tok_s": self.aggregate_tok_s.to_dict(2),
            "prefill_tok_s": self.prefill_tok_s.to_dict(1) if self.prefill_tok_s else None,
            "ttft_s": self.ttft_s.to_dict(5) if self.ttft_s else None,
            "bound": self.bound,
            "fractions": self.fractions.to_dict(),
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# Bytes and FLOPs of one forward.


@functools.lru_cache(maxsize=64)
def matmul_params(spec: ModelSpec, output: bool = True) -> int:
    """Elements of every matmul weight (the layers' linears, plus the output matrix with ``output``)."""
    n = sum(_numel(t.shape) for t in tensors(spec) if t.kind == "linear")
    return n + (spec.vocab_size * spec.hidden_size if output else 0)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise UnknownNameError(f"engine must be one of {', '.join(ENGINES)}: {engine!r}")
    return engine


def weights_read_bytes(spec: ModelSpec, quant: str, engine: str = "transformers", *, output: bool = True) -> int:
    """Stored weight bytes one decode step reads (per step, whatever the batch). Returns bytes.

    ``output=False`` leaves out the output matrix: a forward that keeps no logits (llama-bench's
    prompt tokens before the last) never reads it.
    """
    _check_engine(engine)
    return _weights_read_bytes(spec, quant, engine, output)


@functools.lru_cache(maxsize=256)
def _weights_read_bytes(spec: ModelSpec, quant: str, engine: str, output: bool) -> int:
    if engine == "llama.cpp":
        from .engines.llamacpp.tensors import gguf_tensors

        ts = gguf_tensors(spec, quant)
        has_output = any(t.name == "output.weight" for t in ts)
        total = 0
        for t in ts:
            if t.name == "token_embd.weight" and has_output:
                continue  # a row gather (ggml_get_rows); the untied output.weight is the matmul
            if t.name in ("output.weight", "token_embd.weight") and not output:
                continue
            total += t.nbytes
        return total
    get_quant(quant)
    total = 0
    lm_head = any(t.kind == "lm_head" for t in tensors(spec))
    for s in weight_tensors(spec, quant):
        if s.part == "buffers":
            continue
        if s.name.startswith("model.embed_tokens.") and (lm_head or not output):
            continue  # a row gather; when tied, the embedding is read once as the output matrix
        if s.name.startswith("lm_head.") and not output:
            continue
        total += s.nbytes
    return total


def kv_read_bytes(spec: ModelSpec, tokens: int, batch: int, engine: str, kv_dtype: str, quant: str) -> int:
    """KV bytes one decode step reads: every layer's K and V of ``batch`` sequences at ``tokens``."""
    if tokens <= 0:
        return 0
    if engine == "llama.cpp":
        from .engines.llamacpp.types import row_bytes

        t = LLAMACPP_KV.get(kv_dtype)
        if t is None:
            raise UnknownNameError(f"kv_dtype must be one of {', '.join(LLAMACPP_KV)} for llama.cpp: {kv_dtype!r}")
        return 2 * spec.num_hidden_layers * row_bytes(t, spec.num_key_value_heads * spec.head_dim) * tokens * batch
    if engine == "vllm":
        if kv_dtype not in VLLM_SPEED_KV:
            raise UnknownNameError(f"kv_dtype must be one of {', '.join(VLLM_SPEED_KV)} for vLLM: {kv_dtype!r}")
        kv_dtype = "auto" if kv_dtype == "auto" else kv_dtype
    compute_bytes = 4 if quant == "fp32" else 2
    return kv_cache_bytes(spec, tokens, batch, kv_dtype if kv_dtype != "auto" else _auto_kv(quant), compute_bytes)


def _auto_kv(quant: str) -> str:
    return "fp32" if quant == "fp32" else "bf16"


def llamacpp_host_bytes(
    spec: ModelSpec, quant: str, n_gpu_layers: int, kv_dtype: str, tokens: int, batch: int
) -> tuple[int, int]:
    """(weight bytes, KV bytes) a llama.cpp decode step reads from host RAM with ``n_gpu_layers``
    offloaded: the layers below ``i_gpu_start`` and, unless offloaded, the output matrix
    (``engines.llamacpp.buffers.offloaded_layers``, llama.cpp's own split). Returns bytes."""
    from .engines.llamacpp.buffers import offloaded_layers
    from .engines.llamacpp.tensors import gguf_tensors

    L = spec.num_hidden_layers
    i0, out_on_gpu = offloaded_layers(L, n_gpu_layers)
    ts = gguf_tensors(spec, quant)
    has_output = any(t.name == "output.weight" for t in ts)
    w = 0
    for t in ts:
        if t.layer is not None and t.layer < i0:
            w += t.nbytes
        elif not out_on_gpu and t.name in ("output.weight", "output_norm.weight"):
            w += t.nbytes
        elif not out_on_gpu and t.name == "token_embd.weight" and not has_output:
            w += t.nbytes  # tied: the embedding is the output matrix
    kv = kv_read_bytes(spec, tokens, batch, "llama.cpp", kv_dtype, quant) * i0 // L
    return w, kv


def dequant_bytes(spec: ModelSpec, quant: str, engine: str, tokens_per_step: int) -> int:
    """Extra bytes a step moves to dequantize: bitsandbytes 4-bit with more than one token writes and
    reads a 16-bit copy of every quantized weight (bitsandbytes ``matmul_4bit``: the gemv kernel
    reads the packed weight only when the input is one row). Returns bytes."""
    if engine != "transformers" or tokens_per_step <= 1:
        return 0
    q = get_quant(quant)
    if q.family != "bnb" or q.bits != 4:
        return 0
    return 2 * 2 * matmul_params(spec, output=False)


def attention_flops(spec: ModelSpec, queries: int, keys: int, causal: bool) -> int:
    """FLOPs of QK^T and PV for ``queries`` new tokens over ``keys`` cached + new tokens, all layers.

    Each (query, key) pair costs 2 x head_dim multiply-adds twice (scores, then values) per head:
    ``4 x heads x head_dim``. A causal kernel over a prompt skips the masked half.
    """
    per_pair = 4 * spec.num_attention_heads * spec.head_dim * spec.num_hidden_layers
    if causal and queries == keys:
        pairs = queries * (queries + 1) // 2
    else:
        pairs = queries * keys
    return per_pair * pairs


def int32_ops_per_s(gpu: Gpu) -> float | None:
    """32-bit integer operations per second (``INT32_LANES_PER_FP32_LANE`` x fp32 FLOPs / 2), or
    None where the architecture has no count or the catalog no fp32 FLOPs."""
    ratio = INT32_LANES_PER_FP32_LANE.get(gpu.arch)
    fp32 = gpu.flops("fp32")
    return ratio * fp32 / 2 if ratio and fp32 else None


def mmvq_int_ops(
    spec: ModelSpec, quant: str, *, output: bool = True, first_layer: int = 0, out_on_gpu: bool = True
) -> float:
    """Integer operations llama.cpp's MMVQ does for one token over the quantized matmul weights on
    the GPU (``MMVQ_INT_OPS_PER_4`` per 4 weights): the layers from ``first_layer`` and, with
    ``output`` and ``out_on_gpu``, the output matrix (the tied embedding where there is none)."""
    return _mmvq_int_ops(spec, quant, output, first_layer, out_on_gpu)


@functools.lru_cache(maxsize=256)
def _mmvq_int_ops(spec: ModelSpec, quant: str, output: bool, first_layer: int, out_on_gpu: bool) -> float:
    from .engines.llamacpp.tensors import gguf_tensors

    ts = gguf_tensors(spec, quant)
    has_output = any(t.name == "output.weight" for t in ts)
    ops = 0.0
    for t in ts:
        if t.layer is not None:
            if t.layer < first_layer or len(t.shape) != 2:
                continue
        elif t.name == "output.weight" or (t.name == "token_embd.weight" and not has_output):
            if not (output and out_on_gpu):
                continue
        else:
            continue
        per4 = MMVQ_INT_OPS_PER_4.get(t.ggml_type)
        if per4:
            ops += _numel(t.shape) * per4 / 4
    return ops


def mmvq_s(spec: ModelSpec, quant: str, gpu: Gpu, tokens: int, **kw: Any) -> float:
    """Seconds of MMVQ integer work a llama.cpp step of ``tokens`` tokens adds to its memory time:
    that of every token after the first. The first token's work overlaps the weight stream (one-
    token rows leave no room for it: SP-022 reads at 0.82 of peak bandwidth, where the RTX 3080
    would need 1.4 ms more for its count); each further token's adds (SP-016 to SP-019, RTX 3090
    Q4_0 at 1, 2, 4 and 8 tokens: the step grows by about the counted work per token). 0 above
    ``MMVQ_MAX_BATCH_SIZE`` (MMQ's tensor cores take over) and where the GPU has no integer rate."""
    rate = int32_ops_per_s(gpu)
    if not rate or tokens <= 1 or tokens > MMVQ_MAX_BATCH_SIZE:
        return 0.0
    return (tokens - 1) * mmvq_int_ops(spec, quant, **kw) / rate


def score_chunks(prompt: int, depth: int, ubatch: int) -> list[tuple[int, int]]:
    """(tokens, keys) of each micro-batch of a ``prompt`` after ``depth`` cached tokens: chunk i
    of ``ubatch`` tokens attends to every key up to its end (llama.cpp's non-FA K*Q covers the
    cache's used cells, masked afterwards)."""
    out, start = [], 0
    while start < prompt:
        n = min(ubatch, prompt - start)
        out.append((n, depth + start + n))
        start += n
    return out


def score_bytes(spec: ModelSpec, chunks: list[tuple[int, int]]) -> int:
    """Bytes the materialized attention scores move without flash attention (``NON_FA_SCORE_BYTES``
    per query, key and head, every layer)."""
    pairs = sum(n * k for n, k in chunks)
    return NON_FA_SCORE_BYTES * spec.num_attention_heads * spec.num_hidden_layers * pairs


def flops_dtype(engine: str, quant: str, gpu: Gpu) -> str:
    """The dense peak a forward's matmuls are measured against (``peak_flops``): the 16-bit tensor
    peak (bf16 where the compute dtype is bf16, else fp16) for the 16-bit and quantized paths, fp32
    for fp32 weights, fp8 for vLLM's fp8 on GPUs with fp8 tensor cores.

    llama.cpp's quantized prefill runs MMQ (int8 dot products over q8_1 activations). Where the GPU
    has int8 tensor cores it is measured against the 16-bit peak: the public rows reach 0.57-1.05 of
    it on GeForce Ampere / Ada / Blackwell, only 0.14-0.26 of their int8 peak (4x the 16-bit one there, 2x on
    A100 / H100), so the 16-bit peak is the one that carries across GPUs and engines. Without int8
    tensor cores (V100 and older: no int8 entry in the catalog) MMQ runs on ``dp4a``, four int8
    multiply-adds per lane per clock: 4x the fp32 rate."""
    if quant in ("fp32", "f32"):
        want = "fp32"
    elif engine == "vllm" and quant == "fp8" and gpu.flops("fp8"):
        want = "fp8"
    elif engine == "llama.cpp" and quant not in ("f16", "bf16"):
        want = "fp16" if gpu.flops("int8") or not gpu.flops("fp32") else "dp4a"
    elif engine == "llama.cpp":
        want = quant.replace("f16", "fp16")
    else:
        want = compute_dtype(quant) if quant in QUANTS else "bf16"
        want = {"float16": "fp16", "bfloat16": "bf16"}.get(want, want)
    if want == "dp4a" or gpu.flops(want):
        return want
    for d in ("bf16", "fp16"):
        if gpu.flops(d):
            return d
    return want


def peak_flops(gpu: Gpu, dtype: str) -> int | None:
    """The GPU's dense peak for ``dtype`` (``flops_dtype``): the catalog's, and for ``dp4a`` 4x its fp32."""
    if dtype == "dp4a":
        fp32 = gpu.flops("fp32")
        return 4 * fp32 if fp32 else None
    return gpu.flops(dtype)


# ---------------------------------------------------------------------------------------------
# Public measurements and the fractions they give.


@dataclass(frozen=True, slots=True)
class Row:
    """One public measurement (``data/speed-measurements.csv``)."""

    id: str
    model: str
    engine: str
    gpu: str
    quant: str
    kv_dtype: str
    depth: int  # tokens already in the KV cache before the measured ones (llama-bench's @dN)
    prompt_tokens: int
    gen_tokens: int
    batch: int
    logits: str
    counter: str
    value: float
    source: str
    flash_attn: bool = True  # the table's flash_attn: "0" is off; "1" or unstated is the model's default

    @property
    def family(self) -> str:
        return ENGINE_FAMILY[self.engine]

    @property
    def engine_for_model(self) -> str:
        return "llama.cpp" if self.family == "llama.cpp" else self.engine


@functools.lru_cache(maxsize=1)
def measurements() -> tuple[Row, ...]:
    """The committed public tok/s rows."""
    text = resources.files("estimator").joinpath("data/speed-measurements.csv").read_text(encoding="utf-8")
    rows = []
    for r in csv.DictReader(text.splitlines()):
        rows.append(
            Row(
                id=r["id"],
                model=r["model"],
                engine=r["engine"],
                gpu=r["gpu"],
                quant=r["quant"],
                kv_dtype=r["kv_dtype"],
                depth=int(r["depth"]),
                prompt_tokens=int(r["prompt_tokens"]),
                gen_tokens=int(r["gen_tokens"]),
                batch=int(r["batch"]),
                logits=r["logits"],
                counter=r["counter"],
                value=_rate(float(r["value"]), r["unit"]),
                source=r["source"],
                flash_attn=r["flash_attn"] != "0",
            )
        )
    return tuple(rows)


def _rate(value: float, unit: str) -> float:
    """A row's value as tokens/s: serving benchmarks print the time per output token (TPOT, ms),
    kept in the table as printed and inverted here (1000 / ms)."""
    return 1000.0 / value if unit.startswith("ms per") else value


def _row_step(row: Row) -> tuple[int, int]:
    """(bytes, flops) of one decode step of a row's setting at its mean KV length."""
    spec = load_model(row.model)
    eng = row.engine_for_model
    out = row.logits == "every"
    mean_kv = row.prompt_tokens + row.gen_tokens // 2
    b = weights_read_bytes(spec, row.quant, eng, output=out)
    b += kv_read_bytes(spec, mean_kv, row.batch, eng, row.kv_dtype, row.quant)
    b += dequant_bytes(spec, row.quant, eng, row.batch)
    if eng == "llama.cpp" and not row.flash_attn:
        b += score_bytes(spec, [(row.batch, mean_kv)])
    f = 2 * matmul_params(spec, output=out) * row.batch + attention_flops(spec, row.batch, mean_kv, False)
    return b, f


def _row_int_s(row: Row) -> float:
    """Seconds of MMVQ integer work in one decode step of a row (llama.cpp quantized weights)."""
    if row.engine_for_model != "llama.cpp":
        return 0.0
    return mmvq_s(load_model(row.model), row.quant, get_gpu(row.gpu), row.batch, output=row.logits == "every")


def _row_prefill(row: Row) -> tuple[int, int]:
    """(FLOPs, score bytes) of a row's prefill: its prompt's matmuls, the last token's logits and
    the attention: with flash attention causal over the prompt plus full to the ``depth`` tokens
    cached before it; without, every key of each micro-batch (``LLAMA_BENCH_UBATCH``), whose
    materialized scores also cross memory (``score_bytes``)."""
    spec = load_model(row.model)
    p = row.prompt_tokens
    if row.flash_attn or row.engine_for_model != "llama.cpp":
        attn = attention_flops(spec, p, p, True) + attention_flops(spec, p, row.depth, False)
        sb = 0
    else:
        chunks = score_chunks(p, row.depth, LLAMA_BENCH_UBATCH)
        attn = sum(attention_flops(spec, n, k, False) for n, k in chunks)
        sb = score_bytes(spec, chunks)
    flops = (2 * matmul_params(spec, output=False) * p + 2 * spec.vocab_size * spec.hidden_size + attn) * row.batch
    return flops, sb * row.batch


def _row_prefill_flops(row: Row) -> int:
    """Prefill FLOPs of a row (``_row_prefill``)."""
    return _row_prefill(row)[0]


def _row_roof_s(row: Row) -> float:
    """Seconds a row's decode step takes to read its bytes at the GPU's full peak bandwidth."""
    step_bytes, _ = _row_step(row)
    return step_bytes / (get_gpu(row.gpu).bandwidth_bytes_per_s or 1)


def achieved_fraction(row: Row) -> float:
    """The fraction of peak bandwidth (decode rows) or of peak FLOPs (prefill rows) a row achieved.
    A prefill row's time is first reduced by its score traffic at the GPU's full bandwidth (none
    with flash attention)."""
    gpu = get_gpu(row.gpu)
    if row.counter == "prefill_tok_s":
        peak = peak_flops(gpu, flops_dtype(row.engine_for_model, row.quant, gpu))
        if not peak:
            raise InvalidSpecError(f"gpu {row.gpu} has no FLOPs in the catalog (row {row.id})")
        flops, sb = _row_prefill(row)
        seconds = row.prompt_tokens * row.batch / row.value - sb / (gpu.bandwidth_bytes_per_s or 1)
        return flops / seconds / peak
    if not gpu.bandwidth_bytes_per_s:
        raise InvalidSpecError(f"gpu {row.gpu} has no bandwidth in the catalog (row {row.id})")
    per_step = row.batch / row.value if row.counter == "decode_tok_s_aggregate" else 1 / row.value
    step_bytes, _ = _row_step(row)
    return step_bytes / per_step / gpu.bandwidth_bytes_per_s


def _span(values: list[float]) -> Span:
    return Span(min(values), statistics.median(values), max(values))


def fractions(engine: str, gpu_class: str, *, exclude: str | None = None) -> Fractions:
    """The fraction ranges for ``engine`` on a GPU of ``gpu_class`` (``exclude``: a row id to leave
    out, for the leave-one-out replay)."""
    _check_engine(engine)
    return _fractions(engine, gpu_class, exclude)


@functools.lru_cache(maxsize=256)
def _fractions(engine: str, gpu_class: str, exclude: str | None) -> Fractions:
    rows = [r for r in measurements() if r.id != exclude]
    family = ENGINE_FAMILY[engine]
    own = [r for r in rows if r.family == family]
    validated = bool(own)

    def cls(r: Row) -> str:
        return get_gpu(r.gpu).cls

    def pick(counter: str) -> tuple[list[Row], list[Row], str]:
        """(the rows the point comes from, the rows the range's ends come from, the basis)."""
        mine = [r for r in own if r.counter == counter]
        lcpp = [r for r in rows if r.family == "llama.cpp" and r.counter == counter]
        if len(mine) >= MIN_CLASS_ROWS:
            cand, name = mine, engine
        else:  # too few rows of this engine: llama.cpp's rows join its own (said so)
            cand = mine + [r for r in lcpp if r not in mine]
            name = f"{engine} ({len(mine)} rows) + llama.cpp" if family != "llama.cpp" else engine
        same = [r for r in cand if cls(r) == gpu_class]
        if len(same) >= MIN_CLASS_ROWS:
            point, basis = same, f"{name} rows on {gpu_class} GPUs"
        else:
            point, basis = cand, f"{name} rows of every GPU class ({gpu_class} has {len(same)})"
        ends = list(point)
        pools = (
            ("the engine's rows of every class", cand),
            (f"llama.cpp's rows on {gpu_class} GPUs", [r for r in lcpp if cls(r) == gpu_class]),
            ("llama.cpp's rows of every class", lcpp),
            ("every row", [r for r in rows if r.counter == counter]),
        )
        widened = ""
        for label, pool in pools:
            if len(ends) >= RANGE_ROWS:
                break
            ends += [r for r in pool if r not in ends]
            widened = label
        if widened:
            basis += f"; range ends from {len(ends)} rows (with {widened})"
        return point, ends, basis

    bw_rows, bw_ends, bw_basis = pick("decode_tok_s")
    fl_rows, fl_ends, fl_basis = pick("prefill_tok_s")
    # the ceiling: the best row's bandwidth over the part of its step that streams bytes (its MMVQ
    # integer work taken out, as the model adds it back)
    ceiling = max(_row_roof_s(r) / (1 / r.value - _row_int_s(r)) for r in bw_rows)

    def fixed(r: Row) -> float:
        # a row's step time beyond its bytes at the ceiling and its MMVQ integer work (never below 0)
        return max(0.0, 1 / r.value - _row_roof_s(r) / ceiling - _row_int_s(r))

    def ranged(point: list[float], ends: list[float]) -> Span:
        return Span(min(ends), statistics.median(point), max(ends))

    bw_point = [achieved_fraction(r) for r in bw_rows]
    fast = max(ceiling, *(_row_roof_s(r) / (1 / r.value - _row_int_s(r)) for r in bw_ends))
    bw = Span(min(bw_point), statistics.median(bw_point), fast)
    fl = ranged([achieved_fraction(r) for r in fl_rows], [achieved_fraction(r) for r in fl_ends])
    fx = ranged([fixed(r) for r in bw_rows], [fixed(r) for r in bw_ends])
    return Fractions(
        bandwidth=bw,
        fixed_s=fx,
        flops=fl,
        bandwidth_rows=tuple(r.id for r in bw_rows),
        flops_rows=tuple(r.id for r in fl_rows),
        basis=f"bandwidth: {bw_basis}; FLOPs: {fl_basis}",
        validated=validated,
        ceiling=ceiling,
    )


def decode_step_s(
    device_bytes: int,
    host_s: float,
    flops: int,
    gpu: Gpu,
    peak: int | None,
    fr: Fractions,
    end: str,
    int_s: float = 0.0,
) -> tuple[float, str]:
    """(seconds, bound) of one decode step at the ``end`` of the range ("low": the slow end,
    "point", "high": the fast end): the device bytes at the bandwidth ceiling (the fast end at the
    best fraction of the range's rows) plus llama.cpp's
    MMVQ integer work (``int_s``), plus any host-RAM time at the same ceiling (``host_s`` at full
    host bandwidth), or the FLOPs at the achieved fraction if slower, plus the per-step fixed time
    (most of it at the slow end)."""
    f_fl = getattr(fr.flops, end)
    fixed = {"low": fr.fixed_s.high, "point": fr.fixed_s.point, "high": fr.fixed_s.low}[end]
    c = fr.bandwidth.high if end == "high" else fr.ceiling
    dev = device_bytes / ((gpu.bandwidth_bytes_per_s or 1) * c) + int_s
    off = host_s / c
    cmp = flops / (peak * f_fl) if peak else 0.0
    if dev + off >= cmp:
        return dev + off + fixed, "host memory" if off > dev else "memory"
    return cmp + fixed, "compute"


# ---------------------------------------------------------------------------------------------
# The estimate.


def _check_setting(engine: str, quant: str, kv_dtype: str) -> str:
    if engine == "llama.cpp":
        from .engines.llamacpp.types import GGUF_QUANTS

        if quant not in GGUF_QUANTS:
            raise UnknownNameError(f"quant must be one of {', '.join(GGUF_QUANTS)} for llama.cpp: {quant!r}")
        return "f16" if kv_dtype == "auto" else kv_dtype
    if engine == "vllm" and quant not in VLLM_SPEED_QUANTS:
        raise UnknownNameError(f"quant must be one of {', '.join(VLLM_SPEED_QUANTS)} for vLLM: {quant!r}")
    get_quant(quant)
    return kv_dtype


def speed(
    model: Any = "llama-3.2-3b",
    quant: str = "bf16",
    gpu: Any = "rtx-4090-24gb",
    *,
    engine: str = "transformers",
    context: int = 8192,
    new_tokens: int = 32,
    batch: int = 1,
    kv_dtype: str = "auto",
    attn: str = "sdpa",
    n_gpu_layers: int = -1,
    n_ubatch: int = 512,
    host_bandwidth_bytes_per_s: int = HOST_BANDWIDTH_BYTES_PER_S,
    pcie_bytes_per_s: int = PCIE_BYTES_PER_S,
    flash_attn: bool = True,
) -> Speed:
    """Decode, prefill and TTFT of one setting on one GPU. ``context`` is the window (prompt + new
    tokens), as everywhere in the estimator; ``batch`` sequences decode together.

    llama.cpp's quantized weights add MMVQ's integer work for every token after the first up to 8
    a step (``mmvq_s``); ``flash_attn=False`` adds the materialized attention scores' traffic
    (``score_bytes``; the prefill in ``n_ubatch`` chunks) and computes the masked half too.

    llama.cpp only: ``n_gpu_layers`` below all (-1) leaves the first layers on the host, read at
    ``host_bandwidth_bytes_per_s`` each decode step; a prefill of 32 tokens or more computes them on
    the GPU after copying their weights over PCIe (``pcie_bytes_per_s``) once per ``n_ubatch`` chunk
    (ggml-cuda's op offload, ``OP_OFFLOAD_MIN_BATCH``)."""
    _check_engine(engine)
    spec = load_model(model)
    g = get_gpu(gpu)
    kv_dtype = _check_setting(engine, quant, kv_dtype)
    for name, v, lo in (("context", context, 1), ("batch", batch, 1), ("new_tokens", new_tokens, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise InvalidSpecError(f"{name} must be an integer >= {lo}: {v!r}")
    if new_tokens > context - 1:
        raise InvalidSpecError(f"new_tokens must be at most context - 1 ({context - 1:,}): {new_tokens!r}")
    if attn not in ("sdpa", "eager"):
        raise UnknownNameError(f"attn must be one of sdpa, eager: {attn!r}")
    if not g.bandwidth_bytes_per_s:
        raise InvalidSpecError(f"gpu {g.key} has no memory bandwidth in the catalog: speed needs one")
    prompt = context - new_tokens
    mean_kv = prompt + new_tokens // 2
    fr = fractions(engine, g.cls)
    notes: list[str] = []
    host_w = host_kv = 0
    if engine == "llama.cpp" and 0 <= n_gpu_layers <= spec.num_hidden_layers:
        host_w, host_kv = llamacpp_host_bytes(spec, quant, n_gpu_layers, kv_dtype, mean_kv, batch)
        notes.append(
            f"partial offload: {(host_w + host_kv) / 2**30:.2f} GiB a step from host RAM at "
            f"{host_bandwidth_bytes_per_s / 1e9:g} GB/s; the same achieved fractions (no public partial-offload rows yet)"
        )
    for name, v in (("host_bandwidth_bytes_per_s", host_bandwidth_bytes_per_s), ("pcie_bytes_per_s", pcie_bytes_per_s)):
        if not isinstance(v, int) or v <= 0:
            raise InvalidSpecError(f"{name} must be a positive integer: {v!r}")
    if not fr.validated:
        notes.append(f"no public {engine} rows yet: the range borrows llama.cpp's fractions (unvalidated)")
    elif "llama.cpp" in fr.basis and engine != "llama.cpp":
        notes.append(f"few public {engine} rows: llama.cpp's rows widen the range")

    w = weights_read_bytes(spec, quant, engine)
    kv = kv_read_bytes(spec, mean_kv, batch, engine, kv_dtype, quant)
    deq = dequant_bytes(spec, quant, engine, batch)
    non_fa = engine == "llama.cpp" and not flash_attn
    scores = score_bytes(spec, [(batch, mean_kv)]) if non_fa else 0
    step_bytes = w + kv + deq + scores
    int_s = 0.0
    if engine == "llama.cpp":
        from .engines.llamacpp.buffers import offloaded_layers

        i0, out_on_gpu = (0, True)
        if 0 <= n_gpu_layers <= spec.num_hidden_layers:
            i0, out_on_gpu = offloaded_layers(spec.num_hidden_layers, n_gpu_layers)
        int_s = mmvq_s(spec, quant, g, batch, first_layer=i0, out_on_gpu=out_on_gpu)
    d_flops = 2 * matmul_params(spec) * batch + attention_flops(spec, batch, mean_kv, False)
    dt = flops_dtype(engine, quant, g)
    peak = peak_flops(g, dt)
    bw = g.bandwidth_bytes_per_s

    host = host_w + host_kv

    def step_s(end: str) -> tuple[float, str]:
        return decode_step_s(step_bytes - host, host / host_bandwidth_bytes_per_s, d_flops, g, peak, fr, end, int_s)

    t_fast, _ = step_s("high")
    t_point, bound = step_s("point")
    t_slow, _ = step_s("low")
    decode = Span(1 / t_slow, 1 / t_point, 1 / t_fast)
    aggregate = Span(batch / t_slow, batch / t_point, batch / t_fast)

    causal = not (engine == "transformers" and attn == "eager")
    p_flops = (2 * matmul_params(spec, output=False) * prompt + 2 * spec.vocab_size * spec.hidden_size) * batch
    p_scores = 0
    if non_fa:  # every key of each micro-batch, the scores through memory (rows: SP-033)
        p_chunks = score_chunks(prompt, 0, max(n_ubatch, 1))
        p_flops += sum(attention_flops(spec, n, k, False) for n, k in p_chunks) * batch
        p_scores = score_bytes(spec, p_chunks) * batch
    else:
        p_flops += attention_flops(spec, prompt, prompt, causal) * batch
    prefill: Span | None = None
    ttft: Span | None = None
    if peak:
        pw = w + deq  # one read of the weights (prefill is never faster than that)

        # host weights cross PCIe once per n_ubatch chunk (the GPU computes them: prompt >= 32)
        chunks = -(-prompt // max(n_ubatch, 1))
        copy_bytes = host_w * chunks if prompt >= 32 else 0
        host_read = host_w if prompt < 32 else 0

        def prefill_s(f_fl: float) -> float:
            f_bw = fr.ceiling
            t = max(p_flops / (peak * f_fl), pw / (bw * f_bw)) + p_scores / bw
            return t + copy_bytes / (pcie_bytes_per_s * f_bw) + host_read / (host_bandwidth_bytes_per_s * f_bw)

        s_fast = prefill_s(fr.flops.high)
        s_point = prefill_s(fr.flops.point)
        s_slow = prefill_s(fr.flops.low)
        n = prompt * batch
        prefill = Span(n / s_slow, n / s_point, n / s_fast)
        ttft = Span(s_fast, s_point, s_slow)
    else:
        notes.append(f"gpu {g.key} has no {dt} FLOPs in the catalog: no prefill or TTFT")
    return Speed(
        engine=engine,
        model=spec.name,
        quant=quant,
        gpu=g.key,
        batch=batch,
        prompt_tokens=prompt,
        new_tokens=new_tokens,
        weights_read_bytes=w + deq,
        kv_read_bytes=kv,
        decode_flops=d_flops,
        prefill_flops=p_flops,
        decode_tok_s=decode,
        aggregate_tok_s=aggregate,
        prefill_tok_s=prefill,
        ttft_s=ttft,
        bound=bound,
        fractions=fr,
        notes=tuple(notes),
        host_read_bytes=host,
    )


def max_concurrency(
    model: Any, quant: str, gpu: Any, *, engine: str = "transformers", context: int = 8192, **settings: Any
) -> int | None:
    """How many sequences of ``context`` tokens the KV capacity allows: vLLM's KV pool
    (``estimate_vllm(...).max_concurrency``), the transformers ``max_batch``; None for llama.cpp
    (its ``--parallel`` slots share one ``n_ctx`` the user sizes)."""
    _check_engine(engine)
    spec = load_model(model)
    g = get_gpu(gpu)
    if engine == "vllm":
        from .engines.vllm import estimate_vllm

        if quant not in ("bf16", "fp16", "fp8"):
            return None
        kv = settings.get("kv_dtype", "auto")
        est = estimate_vllm(
            spec,
            g.memory_bytes,
            max_model_len=context,
            dtype={"bf16": "bfloat16", "fp16": "float16"}.get(quant, "auto"),
            kv_cache_dtype=kv,
            quantization="fp8" if quant == "fp8" else None,
            gpu_name=g.name,
            gpu_arch=g.arch,
        )
        return int(est.max_concurrency)
    if engine == "transformers":
        from .solve import max_batch

        keep = {k: v for k, v in settings.items() if k in ("kv_dtype", "attn", "new_tokens")}
        return max_batch(spec, quant, context, gpu=g, **keep)
    return None


def concurrency_curve(
    model: Any,
    quant: str,
    gpu: Any,
    *,
    engine: str = "transformers",
    context: int = 8192,
    new_tokens: int = 32,
    kv_dtype: str = "auto",
    limit: int | None = None,
    cap: int | None = None,
) -> list[dict[str, Any]]:
    """Tokens/s per sequence and in aggregate at 1, 2, 4, ... concurrent sequences up to the KV
    capacity (``cap`` when the caller has it, e.g. its own vLLM estimate; else ``max_concurrency``),
    at most ``limit``. One dict per point: concurrency, per_sequence and aggregate (each a low /
    point / high dict)."""
    if cap is None:
        cap = max_concurrency(
            model, quant, gpu, engine=engine, context=context, kv_dtype=kv_dtype, new_tokens=new_tokens
        )
    top = limit if cap is None else (cap if limit is None else min(cap, limit))
    if not top or top < 1:
        return []
    points, c = [], 1
    while c < top:
        points.append(c)
        c *= 2
    points.append(top)
    out = []
    for c in points:
        s = speed(model, quant, gpu, engine=engine, context=context, new_tokens=new_tokens, batch=c, kv_dtype=kv_dtype)
        out.append(
            {"concurrency": c, "per_sequence": s.decode_tok_s.to_dict(2), "aggregate": s.aggregate_tok_s.to_dict(2)}
        )
    return out


# ---------------------------------------------------------------------------------------------
# How wrong it is: every public row replayed with its own row left out of the fractions.


def predict_row(row: Row, *, exclude_self: bool = True) -> Span:
    """The estimate of one public row's counter, its fractions computed without it."""
    gpu = get_gpu(row.gpu)
    fr = fractions(row.engine_for_model, gpu.cls, exclude=row.id if exclude_self else None)
    if row.counter == "prefill_tok_s":
        peak = peak_flops(gpu, flops_dtype(row.engine_for_model, row.quant, gpu))
        assert peak  # rows are checked against the catalog by the tests
        flops, sb = _row_prefill(row)
        n = row.prompt_tokens * row.batch
        score_s = sb / (gpu.bandwidth_bytes_per_s or 1)
        return Span(*(n / (flops / (peak * f) + score_s) for f in (fr.flops.low, fr.flops.point, fr.flops.high)))
    step_bytes, step_flops = _row_step(row)
    peak = peak_flops(gpu, flops_dtype(row.engine_for_model, row.quant, gpu))
    int_s = _row_int_s(row)
    steps = [
        decode_step_s(step_bytes, 0.0, step_flops, gpu, peak, fr, end, int_s)[0] for end in ("low", "point", "high")
    ]
    per = 1 if row.counter == "decode_tok_s" else row.batch
    return Span(*(per / t for t in steps))


def validation() -> list[dict[str, Any]]:
    """Every public row against its leave-one-out estimate: id, counter, GPU class, measured, the
    estimate's low / point / high, the point's relative error and whether the range covers it."""
    out = []
    for r in measurements():
        p = predict_row(r)
        out.append(
            {
                "id": r.id,
                "engine": r.engine,
                "model": r.model,
                "gpu": r.gpu,
                "class": get_gpu(r.gpu).cls,
                "counter": r.counter,
                "measured": r.value,
                "low": round(p.low, 2),
                "point": round(p.point, 2),
                "high": round(p.high, 2),
                "rel_error": round(abs(p.point - r.value) / r.value, 4),
                "covered": p.low <= r.value <= p.high,
            }
        )
    return out


def error_summary(rows: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Median and worst relative error and range coverage per (counter, GPU class) of ``validation()``."""
    rows = validation() if rows is None else rows
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(f"{r['counter']}/{r['class']}", []).append(r)
    summary = {}
    for key, rs in sorted(groups.items()):
        errs = [r["rel_error"] for r in rs]
        summary[key] = {
            "rows": len(rs),
            "median_rel_error": round(statistics.median(errs), 4),
            "worst_rel_error": round(max(errs), 4),
            "coverage": round(sum(r["covered"] for r in rs) / len(rs), 4),
        }
    return summary
