"""vLLM startup memory accounting: weights, profile-run peak, non-torch, CUDA graphs, KV pool.

vLLM does not grow a cache; at startup it measures what the model needs and hands the rest of
``total x gpu_memory_utilization`` to a paged KV pool (``vllm/worker/worker.py``
``determine_num_available_blocks`` for V0, ``vllm/v1/worker/gpu_worker.py``
``determine_available_memory`` for V1, both through ``memory_profiling`` in ``vllm/utils``)::

    requested     = total_gpu_memory x gpu_memory_utilization
    non_kv        = weights + activation_peak + non_torch (+ cudagraph_estimate, V1 >= 0.2x)
    kv_pool       = requested - non_kv
    num_blocks    = kv_pool // (block_size x bytes per token, all layers)     block_size 16
    concurrency   = num_blocks x 16 / max_model_len          (V0; V1 uses ceil(max_model_len/16) blocks)

Accounting variants (``accounting``; ``estimator.engines.vllm_releases`` maps each vLLM release to
one, with the release ranges of every memory-relevant behaviour and their sources):

- ``"v0-0.6"``  vLLM <= 0.6.x: non-torch = everything on the device that torch did not allocate,
  including the CUDA context and other processes (``torch.cuda.mem_get_info`` after profiling).
- ``"v0"``      V0 engine 0.6.5-0.10: a baseline snapshot is taken before the model loads, so the
  CUDA context and other processes are outside the budget; non-torch is only the growth.
  CUDA graphs are captured after the KV pool is allocated, outside the budget.
- ``"v1"``      V1 engine (default from 0.8.0, the only one from 0.11.0): as ``v0``, a startup check
  that the requested memory is free and, from 0.21.0, the CUDA-graph memory estimate subtracted
  from the budget (earlier V1 releases captured the graphs after the KV allocation).

Worked example (V0 0.8.2, Llama 3.2 3B fp16, T4 14.74 GiB, util 0.894, 192 seqs, 2048 batched tokens):
weights 6,459,054,080 B (params x 2 + the 32 MiB rotary cos_sin_cache), profile peak 0.884 GiB
(sampler over 192 x 128,256 logits), non-torch 0.0625 GiB: pool 6.21 GiB, 3632 blocks of 1.75 MiB,
28.4x concurrency at 2048 tokens (log: 6.22 GiB, 3637 blocks, 28.41x).

As the one report type (``estimator.report.MemoryReport``, engine "vllm"): ``report`` from an
estimate, ``estimate_report`` / ``fit_report`` from settings.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import EstimatorError, InvalidSpecError, UnknownNameError
from ..gpus import Gpu, gpu_catalog
from ..model import ModelSpec, Tensor, tensors
from ..report import MemoryReport
from ..solve import largest_true
from .vllm_releases import NEWEST_RELEASE as NEWEST_RELEASE
from .vllm_releases import Release as Release
from .vllm_releases import graph_capture
from .vllm_releases import resolve_release as resolve_release

GiB = 1 << 30
MiB = 1 << 20

VLLM_VERSIONS = ("v0", "v1")
ACCOUNTINGS = ("v0-0.6", "v0", "v1")
BLOCK_SIZE = 16  # CacheConfig.DEFAULT_BLOCK_SIZE (vllm/config/cache.py); the CUDA attention backends use it
VOCAB_PADDING = 64  # DEFAULT_VOCAB_PADDING_SIZE, vllm/model_executor/layers/vocab_parallel_embedding.py
DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2}
# --quantization choices modelled for an unquantized (bf16/fp16) checkpoint: in-flight quantization
# of every linear layer at load; the embedding, lm_head and norms stay in the model dtype.
# - "bitsandbytes" (vllm/model_executor/model_loader/bitsandbytes_loader.py ``_unquantized_generator``):
#   ``quantize_4bit(w, compress_statistics=True, quant_type="nf4")`` per checkpoint shard (q, k, v,
#   o, gate, up, down), then ``dequantize_dq`` at the end of loading turns the nested absmax back into
#   fp32. Per shard: packed uint8 numel/2, fp32 absmax numel/64 (blocksize 64), and the 16-entry fp32
#   NF4 code table of its QuantState.
# - "fp8" (vllm/model_executor/layers/quantization/fp8.py ``Fp8LinearMethod.process_weights_after_loading``,
#   online dynamic quantization): fp8_e4m3 weights, one fp32 scale per logical shard.
QUANTIZATIONS = ("bitsandbytes", "fp8")
# The weight formats one "quant" names for vLLM: a ``--dtype`` or an in-flight ``--quantization``.
DTYPES = ("auto", "bf16", "fp16", "fp32")
QUANT_CHOICES = DTYPES + QUANTIZATIONS
# Minimum compute capability vLLM accepts for each (QuantizationConfig.get_min_capability: 70 for
# bitsandbytes, 80 for fp8; sm80-sm88 run fp8 through Marlin weight-only kernels).
QUANT_MIN_SM = {"bitsandbytes": 70, "fp8": 80}
NF4_BLOCKSIZE = 64
NF4_CODE_BYTES = 16 * 4
KV_DTYPE_BYTES = {
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "fp16": 2,
    "bf16": 2,
    "float16": 2,
    "bfloat16": 2,
    "fp32": 4,
    "float32": 4,
}

# Non-torch growth between the baseline snapshot and the end of the profile run: CUDA modules
# loaded lazily by the kernels the profile launches (CUDA_MODULE_LOADING=LAZY), cuBLAS/cuBLASLt
# handles, attention-backend workspaces. Not derivable from the model; an engineering default of
# 64 MiB. Public vLLM logs print 0.03 GiB (0.6.4, GTX 1080) to 0.05 GiB (0.8.2, T4), and ~0.2 GiB
# on H100 with 0.33 (shared/reference/memory-model.md section 7).
NON_TORCH_GROWTH_BYTES = 64 * MiB
# Its range, the spread of the public single-GPU logs, each widened by half its printed digit:
# low 0.03 GiB (GTX 1080, 0.6.4: memory_usage_post_profile 2.76 - initial_memory_usage 2.73, GT-030's
# log line), high 0.13 GiB (H100, 0.11 V1, the llm-d source below); 0.05 GiB (T4, 0.8.2, GT-003) lies
# between. The TP>1 term has one source (TP=2 on H100), so it has no range: low = point = high there.
NON_TORCH_GROWTH_RANGE_BYTES = (int(0.025 * GiB), int(0.135 * GiB))
# Measured on H100 (79.18 GiB), vLLM 0.11 V1: "non-torch forward increase memory" 0.13 GiB at TP=1
# and 0.54-0.55 GiB at TP=2 (llm-d/llm-d-benchmark config_explorer/empirical-vllm-memory-results.md).
NON_TORCH_GROWTH_BY_ARCH = {"sm90": int(0.13 * GiB)}
TP_NON_TORCH_BY_ARCH = {"sm90": int(0.42 * GiB)}  # the TP=2 increase over TP=1 on H100 (same source)

# Tensor-parallel communication buffers per GPU (non-torch), where no measurement exists for the arch:
# vLLM custom all-reduce IPC buffer
# (custom_all_reduce.py max_size 8 MiB, plus the same again for registered rank data) and NCCL
# channel buffers (NCCL_BUFFSIZE 4 MiB per channel, assumed 8 ring channels on NVLink/PCIe).
CUSTOM_AR_BYTES = 2 * 8 * MiB
NCCL_BUFFERS_BYTES = 8 * 4 * MiB

# torch.sort over a [num_reqs, vocab] fp32 tensor on CUDA, rows > 4096 elements
# (aten/src/ATen/native/cuda/SortStable.cu launch_stable_sort_kernel), bytes per logit element:
# outputs values fp32 (4) + indices int64 (8), plus the temporaries of the path it takes:
# - num_reqs >= 128 (segmented_sort_pairs): int64 reverse indices (8) + cub's alternate key/value
#   buffers (4 + 8)                                                     -> 32
# - 2..127 rows (segmented_sort_pairs_by_full_sort): int2 index/segment pairs twice (8 + 8), the
#   keys_out buffer radix_sort_pairs allocates for nullptr (4), cub alternates (4 + 8)  -> 44
# - one row (segmented_sort_large_segments): int64 indices (8) + cub alternates (4 + 8)  -> 32
SORT_BYTES_PER_ELEMENT = 4 + 8 + 8 + 4 + 8


def sort_bytes_per_element(num_rows: int) -> int:
    """Bytes per element live during torch.sort of [num_rows, vocab] on CUDA (see above)."""
    return 4 + 8 + 8 + 4 + 4 + 8 + 8 if 1 < num_rows < 128 else SORT_BYTES_PER_ELEMENT


class EngineRefusal(EstimatorError):
    """A serving engine would refuse to start; ``str(e)`` is the engine's own reason."""


class VllmStartupError(EngineRefusal):
    """vLLM would refuse to start; the message is the engine's own."""


def _dtype_bytes(dtype: str, spec: ModelSpec) -> int:
    if dtype in (None, "auto"):
        dtype = spec.torch_dtype or "bfloat16"
        if dtype == "float32":
            # vLLM "auto": fp32 checkpoints are served in fp16 (ModelConfig._get_and_verify_dtype)
            return 2
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise UnknownNameError(f"dtype must be one of auto, {', '.join(DTYPE_BYTES)}: {dtype!r}") from None


def _kv_bytes(kv_dtype: str, dtype_bytes: int) -> int:
    if kv_dtype in (None, "auto"):
        return dtype_bytes
    try:
        return KV_DTYPE_BYTES[kv_dtype]
    except KeyError:
        raise UnknownNameError(
            f"kv_dtype must be one of auto, {', '.join(KV_DTYPE_BYTES)} for vLLM: {kv_dtype!r}"
        ) from None


def _pad(n: int, m: int) -> int:
    return -(-n // m) * m


def pp_layers(n_layers: int, pp: int, rank: int) -> tuple[int, int]:
    """Layer range of PP rank ``rank`` (vllm/distributed/utils.py get_pp_indices: even split,
    the remainder goes to the last ranks)."""
    per = n_layers // pp
    partitions = [per] * pp
    for i in range(n_layers % pp):
        partitions[pp - 1 - i] += 1
    start = sum(partitions[:rank])
    return start, start + partitions[rank]


def kv_heads_per_gpu(spec: ModelSpec, tp: int) -> int:
    """KV heads each TP rank holds: split when tp <= n_kv_heads, else replicated (one per rank)."""
    return max(1, spec.num_key_value_heads // tp)


def linear_bytes(numel: int, shards: int, dtype_bytes: int, quantization: str | None) -> int:
    """Bytes of linear-layer weights with ``numel`` elements in ``shards`` checkpoint shards, as
    loaded under ``--quantization`` (None: the model dtype). See QUANTIZATIONS."""
    if quantization is None:
        return numel * dtype_bytes
    if quantization == "bitsandbytes":
        return numel // 2 + 4 * -(-numel // NF4_BLOCKSIZE) + shards * NF4_CODE_BYTES
    if quantization == "fp8":
        return numel + shards * 4
    raise UnknownNameError(f"quantization must be one of {', '.join(QUANTIZATIONS)} for vLLM: {quantization!r}")


# How tensor parallelism splits the tensors of a decoder layer (vllm/model_executor/layers/linear.py):
# ColumnParallelLinear / MergedColumnParallelLinear split the output rows of q, gate and up (and their
# bias); QKVParallelLinear splits k and v by KV head, replicating a head when tp > num_key_value_heads;
# RowParallelLinear splits the input columns of o and down and keeps their bias whole; norms are whole.
_COLUMN_PARALLEL = ("q_proj", "gate_proj", "up_proj")
_KV_PARALLEL = ("k_proj", "v_proj")
_ROW_PARALLEL = ("o_proj", "down_proj")


def _numel_per_gpu(t: Tensor, spec: ModelSpec, tp: int) -> int:
    """Elements of one layer tensor of the model (``estimator.model.tensors``) on one TP rank."""
    proj = t.name.split(".")[-2]
    cols = t.shape[1] if t.kind == "linear" else 1
    if proj in _KV_PARALLEL:
        return kv_heads_per_gpu(spec, tp) * spec.head_dim * cols
    if proj in _COLUMN_PARALLEL:
        return t.shape[0] // tp * cols
    if proj in _ROW_PARALLEL and t.kind == "linear":
        return t.shape[0] * (cols // tp)
    return t.numel


@functools.lru_cache(maxsize=256)
def _layer_numels(spec: ModelSpec, tp: int) -> tuple[int, int, int]:
    """(linear weight elements, linear weight tensors, other elements) of one decoder layer on one
    TP rank, from the model's own tensor list (every layer has the same tensors as layer 0)."""
    linear = shards = other = 0
    for t in tensors(spec):
        if t.layer != 0:
            continue
        n = _numel_per_gpu(t, spec, tp)
        if t.kind == "linear":
            linear, shards = linear + n, shards + 1
        else:
            other += n
    return linear, shards, other


def weights_bytes_per_gpu(
    spec: ModelSpec, dtype_bytes: int, tp: int = 1, pp: int = 1, rank: int = 0, quantization: str | None = None
) -> dict[str, int]:
    """Bytes vLLM's loader allocates on one GPU: parameters plus the rotary ``cos_sin_cache``.

    - The parameters are the model's (``estimator.model.tensors``), each split as vLLM's parallel
      layers split it: q/o/gate/up/down by TP (Column/RowParallelLinear), k/v by KV heads (replicated
      when tp > n_kv_heads, QKVParallelLinear); embedding and lm_head along the vocabulary padded to
      64 (VocabParallelEmbedding); norms replicated. Linear weights load as ``quantization`` says
      (``linear_bytes``, one checkpoint shard per linear weight), the rest in the model dtype.
    - ``cos_sin_cache``: RotaryEmbedding registers [max_position_embeddings, rotary_dim] in the model
      dtype (vllm/model_executor/layers/rotary_embedding.py ``_compute_cos_sin_cache``), one per model.
    - PP: rank 0 holds the embedding, the last rank the final norm and lm_head; with tied embeddings the
      last rank also holds its own embedding (LlamaModel creates embed_tokens there for tying).
    """
    if spec.num_attention_heads % tp:
        raise InvalidSpecError(
            f"tensor_parallel_size must divide num_attention_heads ({spec.num_attention_heads}): {tp}"
        )
    if spec.num_key_value_heads < tp and tp % spec.num_key_value_heads:
        raise InvalidSpecError(
            f"tensor_parallel_size must divide or be a multiple of num_key_value_heads "
            f"({spec.num_key_value_heads}): {tp}"
        )
    d = dtype_bytes
    lo, hi = pp_layers(spec.num_hidden_layers, pp, rank)
    n_local = hi - lo
    linear, shards, other = _layer_numels(spec, tp)
    per_layer = linear_bytes(linear, shards, d, quantization) + other * d
    whole = {t.kind: t for t in tensors(spec) if t.layer is None and t.kind in ("embedding", "norm")}
    vocab, hidden = whole["embedding"].shape
    emb = _pad(vocab, VOCAB_PADDING) // tp * hidden * d
    first, last = rank == 0, rank == pp - 1
    parts = {
        "layers": n_local * per_layer,
        "embedding": emb if (first or (last and spec.tie_word_embeddings)) else 0,
        "lm_head": emb if (last and not spec.tie_word_embeddings) else 0,
        "final_norm": whole["norm"].numel * d if last else 0,
        "cos_sin_cache": spec.max_position_embeddings * spec.rotary_dim * d if n_local else 0,
    }
    return parts


def kv_bytes_per_block(
    spec: ModelSpec, kv_dtype_bytes: int, tp: int = 1, n_layers: int | None = None, block_size: int = BLOCK_SIZE
) -> int:
    """``page_size_bytes`` summed over layers: 2 x block_size x kv_heads x head_dim x dtype per layer
    (vllm/v1/kv_cache_interface.py AttentionSpec.page_size_bytes; V0 CacheEngine.get_cache_block_size)."""
    L = spec.num_hidden_layers if n_layers is None else n_layers
    return L * 2 * block_size * kv_heads_per_gpu(spec, tp) * spec.head_dim * kv_dtype_bytes


def sampler_peak_bytes(num_reqs: int, vocab_size: int, logits_bytes: int) -> int:
    """Peak of the sampler in the profile run: top-k/top-p over [num_reqs, vocab].

    The dummy run samples with top_p < 1 and top_k = vocab - 1 (V0 model_runner ``_dummy_run``,
    V1 ``_dummy_sampler_run``), so ``_apply_top_k_top_p`` sorts the fp32 logits. Live at the sort:
    the model-dtype logits (held by the caller), their fp32 copy (``logits.to(torch.float)``;
    the same tensor when already fp32), and the sort's outputs and temporaries.
    """
    n = num_reqs * vocab_size
    fp32_copy = 0 if logits_bytes == 4 else 4
    return n * (logits_bytes + fp32_copy + sort_bytes_per_element(num_reqs))


def forward_peak_bytes(
    spec: ModelSpec, tokens: int, dtype_bytes: int, tp: int = 1, quantization: str | None = None
) -> int:
    """Peak of one forward over ``tokens`` tokens (vLLM's fused Llama layer): residual and hidden
    [T, H], then gate_up [T, 2I/tp] and the SiLU-and-mul output [T, I/tp] in the MLP.

    ``bitsandbytes``: for more than one token, ``_apply_bnb_4bit`` fills the merged output one shard
    at a time with ``matmul_4bit``, which dequantizes the shard to a model-dtype [out, in] matrix
    (bitsandbytes MatMul4Bit.forward) and returns a [T, out] product copied into place: at gate_up
    the dequantized up shard and its [T, I/tp] product are live on top. ``fp8``: the input is
    quantized per token to fp8 ([T, in], 1 byte) before the scaled matmul."""
    I = spec.intermediate_size // tp
    mlp = tokens * dtype_bytes * (2 * spec.hidden_size + 3 * I)
    if quantization == "bitsandbytes" and tokens > 1:
        mlp += I * spec.hidden_size * dtype_bytes + tokens * I * dtype_bytes
    elif quantization == "fp8":
        mlp += tokens * spec.hidden_size
    attn = tokens * dtype_bytes * (2 * spec.hidden_size + (spec.q_dim + 2 * spec.kv_dim) // tp + spec.q_dim // tp)
    return max(mlp, attn)


def capture_sizes(
    max_num_seqs: int, version: str, release: str | None = None, max_num_batched_tokens: int | None = None
) -> list[int]:
    """Decode batch sizes captured as (piecewise) CUDA graphs, by release (``vllm_releases`` rule
    "cudagraph_capture_sizes"): V0 ``_BATCH_SIZES_TO_CAPTURE`` = [1, 2, 4] + 8k up to 256, capped at
    max_num_seqs (padded to 8); V1 [1, 2, 4] + 8k up to 512 (before 0.10), up to min(2 x max_num_seqs,
    512) (0.10-0.11), and from 0.12 8k below 256 then 16k up to that cap; V1 drops sizes above
    max_num_batched_tokens. ``release`` None: the newest release's rule."""
    if version != "v1":
        cap = min(256, _pad(max_num_seqs, 8))
        return [s for s in [1, 2, 4] + [8 * i for i in range(1, 33)] if s <= cap]
    rule, _ = graph_capture(release, "v1")
    cap = 512 if rule == "v1-step8-512" else min(512, 2 * max_num_seqs)
    if rule == "v1-step16":
        sizes = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, 513, 16))
    else:
        sizes = [1, 2, 4] + list(range(8, 513, 8))
    tokens = max_num_batched_tokens if max_num_batched_tokens is not None else cap
    return [s for s in sizes if s <= cap and s <= tokens]


def full_decode_sizes(sizes: list[int], max_num_seqs: int, version: str, release: str | None = None) -> list[int]:
    """Batch sizes captured a second time as full CUDA graphs for uniform decode batches (V1 from
    0.11: default cudagraph_mode FULL_AND_PIECEWISE, PR #25444): the capture ``sizes``
    (``capture_sizes``) up to max_num_seqs.
    An attention backend without full-graph support captures fewer, so counting them keeps the
    high end of the CUDA-graph range an upper bound."""
    if version != "v1" or not graph_capture(release, "v1")[1]:
        return []
    return [s for s in sizes if s <= max_num_seqs]


def cuda_graph_pool_bytes(
    spec: ModelSpec, sizes: list[int], dtype_bytes: int, tp: int = 1, quantization: str | None = None
) -> int:
    """Lower bound of CUDA-graph memory: the private pool that holds the largest captured batch's
    forward temporaries (reused by smaller graphs, captured largest first) and each graph's
    output buffer, in 2 MiB segments. Excludes the driver's cudaGraphExec memory, which the
    public logs show to dominate (0.17-0.24 GiB for 27-35 graphs); its upper bound is
    ``CUDA_GRAPH_EXEC_PER_GRAPH_BYTES`` per graph (``VllmEstimate.cuda_graph_high_bytes``).
    ``sizes``: the batch sizes captured (``capture_sizes``)."""
    if not sizes:
        return 0
    peak = forward_peak_bytes(spec, max(sizes), dtype_bytes, tp, quantization)
    outputs = sum(_pad(b * spec.hidden_size * dtype_bytes, 512) for b in sizes)
    return _pad(peak, 2 * MiB) + _pad(outputs, 2 * MiB)


def num_cuda_graphs(
    max_num_seqs: int, version: str, release: str | None = None, max_num_batched_tokens: int | None = None
) -> int:
    """Every CUDA graph captured at startup: the piecewise (or V0) sizes plus V1's full decode graphs."""
    sizes = capture_sizes(max_num_seqs, version, release, max_num_batched_tokens)
    return len(sizes) + len(full_decode_sizes(sizes, max_num_seqs, version, release))


# Upper bound of the driver's cudaGraphExec state per captured graph (not in torch's pool): the
# largest (logged capture - cuda_graph_pool_bytes) / len(capture_sizes) over every public vLLM row
# that logs its graph memory, the logged value taken at the top of its print rounding, rounded up to
# a MiB. Two rows inform it (a spread of two logs, both from the same rows the calibration counts):
#   GT-007 (0.8.2 V0, T4, Llama 3.2 3B fp16, 27 graphs):        (0.175 - 0.0273) / 27 = 5.60 MiB
#   GT-033 (0.6.4.post1 V0, GTX 1080, Llama 3.2 1B, 35 graphs): (0.245 - 0.0313) / 35 = 6.25 MiB
# -> 7 MiB. Recomputed from the CSV by ``estimator.engines.public.graph_exec_per_graph_observed()``
# (tests/engines/test_vllm_ranges.py).
CUDA_GRAPH_EXEC_PER_GRAPH_BYTES = 7 * MiB


def is_large_gpu(gpu_memory_bytes: int, gpu_name: str | None = None) -> bool:
    """EngineArgs.get_batch_defaults: device memory >= 70 GiB and not an A100 (H100/H200/B200 class)."""
    return gpu_memory_bytes >= 70 * GiB and "a100" not in (gpu_name or "").lower()


def default_max_num_seqs(version: str, gpu_memory_bytes: int, gpu_name: str | None = None) -> int:
    """V1 default max_num_seqs: 1024 on large GPUs, else 256 (EngineArgs.get_batch_defaults); V0: 256."""
    return 1024 if version == "v1" and is_large_gpu(gpu_memory_bytes, gpu_name) else 256


def default_max_num_batched_tokens(
    version: str, max_model_len: int, gpu_memory_bytes: int, api_server: bool = True, gpu_name: str | None = None
) -> int:
    """V1: EngineArgs.get_batch_defaults (8192 API server / 16384 LLM on >= 70 GiB non-A100 GPUs,
    2048 / 8192 elsewhere). V0: max(max_model_len, 2048) without chunked prefill; chunked prefill
    is enabled for max_model_len > 32K with a 2048-token budget (512 before 0.7)."""
    if version == "v1":
        big = is_large_gpu(gpu_memory_bytes, gpu_name)
        return (8192 if big else 2048) if api_server else (16384 if big else 8192)
    if version == "v0-0.6":
        return max(max_model_len, 2048) if max_model_len <= 32768 else 512
    return max(max_model_len, 2048) if max_model_len <= 32768 else 2048


@dataclass(frozen=True, slots=True)
class VllmEstimate:
    """vLLM startup accounting for one GPU (the most loaded rank). ``*_bytes`` are bytes.

    ``device_used_bytes`` is what nvidia-smi shows for the process after startup: the requested
    budget (weights + peak + non-torch + KV pool, all inside it) plus CUDA graphs captured outside
    it (V0) plus the CUDA context (outside the baseline).
    """

    accounting: str
    total_gpu_memory_bytes: int
    requested_memory_bytes: int
    weights_bytes: int
    activation_peak_bytes: int
    sampler_peak_bytes: int
    forward_peak_bytes: int
    non_torch_bytes: int
    cuda_graph_bytes: int
    cuda_graph_in_budget: bool
    kv_pool_bytes: int
    block_bytes: int
    num_gpu_blocks: int
    kv_cache_tokens: int
    max_concurrency: float
    max_model_len: int
    max_num_batched_tokens: int
    max_num_seqs: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    cuda_context_bytes: int
    starts: bool
    refusal: str | None
    breakdown: dict[str, Any]
    release: str | None = None  # the vLLM release modelled (``vllm_releases``), or None: the accounting only
    # Ranges of the terms not derivable from the settings (None: the point). Non-torch growth:
    # NON_TORCH_GROWTH_RANGE_BYTES; CUDA graphs: the pool (low) to the pool plus
    # CUDA_GRAPH_EXEC_PER_GRAPH_BYTES per captured graph (high). The KV pool and blocks move the
    # other way (both terms are inside the budget, graphs only when ``cuda_graph_in_budget``).
    non_torch_low_bytes: int | None = None
    non_torch_high_bytes: int | None = None
    cuda_graph_high_bytes: int | None = None
    kv_pool_low_bytes: int | None = None
    kv_pool_high_bytes: int | None = None
    num_gpu_blocks_low: int | None = None
    num_gpu_blocks_high: int | None = None
    # the concurrency and KV tokens those block counts give (``concurrency``)
    max_concurrency_low: float | None = None
    max_concurrency_high: float | None = None
    kv_cache_tokens_low: int | None = None
    kv_cache_tokens_high: int | None = None
    # vLLM starts at the pool's low end (for certain) / at its high end (it may start)
    starts_certain: bool | None = None
    starts_possible: bool | None = None
    num_cuda_graphs: int = 0  # captured at startup (``num_cuda_graphs``): the CUDA-graph high end counts them

    def starts_on(self, bound: str = "point") -> bool:
        """Whether vLLM starts: "point" (``starts``), "high" (the range's high end of memory, so the
        pool's low end: for certain) or "low" (the pool's high end: it may start)."""
        if bound == "point":
            return self.starts
        if bound not in ("high", "low"):
            raise InvalidSpecError(f"bound must be one of point, high, low: {bound!r}")
        v = self.starts_certain if bound == "high" else self.starts_possible
        return self.starts if v is None else v

    def _used(self, non_torch: int, graphs: int, pool: int) -> int:
        used = self.weights_bytes + self.activation_peak_bytes + non_torch + max(pool, 0)
        if self.accounting != "v0-0.6":
            used += self.cuda_context_bytes
        return used + graphs  # inside the budget (V1 estimate) or captured on top of it (V0)

    @property
    def device_used_low_bytes(self) -> int:
        """Device used at the low end of non-torch and CUDA graphs (the pool grows to match)."""
        nt = self.non_torch_bytes if self.non_torch_low_bytes is None else self.non_torch_low_bytes
        pool = self.kv_pool_bytes if self.kv_pool_high_bytes is None else self.kv_pool_high_bytes
        return self._used(nt, self.cuda_graph_bytes, pool)

    @property
    def device_used_high_bytes(self) -> int:
        """Device used at the high end of non-torch and CUDA graphs."""
        nt = self.non_torch_bytes if self.non_torch_high_bytes is None else self.non_torch_high_bytes
        g = self.cuda_graph_bytes if self.cuda_graph_high_bytes is None else self.cuda_graph_high_bytes
        pool = self.kv_pool_bytes if self.kv_pool_low_bytes is None else self.kv_pool_low_bytes
        return self._used(nt, g, pool)

    @property
    def device_used_bytes(self) -> int:
        return self._used(self.non_torch_bytes, self.cuda_graph_bytes, self.kv_pool_bytes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["device_used_bytes"] = self.device_used_bytes
        d["device_used_low_bytes"] = self.device_used_low_bytes
        d["device_used_high_bytes"] = self.device_used_high_bytes
        for k in ("max_concurrency", "max_concurrency_low", "max_concurrency_high"):
            v = d[k]
            d[k] = None if v is None else round(v, 4)
        return d


def estimate_vllm(
    spec: ModelSpec,
    gpu_memory_bytes: int,
    *,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    dtype: str = "auto",
    kv_cache_dtype: str = "auto",
    version: str = "v1",
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    enforce_eager: bool = False,
    block_size: int = BLOCK_SIZE,
    non_torch_bytes: int | None = None,
    device_baseline_bytes: int = 0,
    cuda_context_bytes: int = 0,
    free_memory_bytes: int | None = None,
    checkpoint_weights_bytes: int | None = None,
    gpu_name: str | None = None,
    gpu_arch: str | None = None,
    cudagraph_in_budget: bool | None = None,
    quantization: str | None = None,
    release: str | None = None,
) -> VllmEstimate:
    """vLLM's startup accounting on each GPU of ``tensor_parallel_size x pipeline_parallel_size``.

    ``version``: "v0", "v1" or the older "v0-0.6" accounting. ``device_baseline_bytes``: device
    memory in use before the profile that torch did not allocate (CUDA context, other processes);
    only the "v0-0.6" accounting charges it. ``non_torch_bytes`` overrides the non-torch growth.
    ``free_memory_bytes`` (V1): free memory at startup; V1 refuses when below the requested memory.
    ``checkpoint_weights_bytes``: exact parameter bytes read from a safetensors header (already cast
    to ``dtype``; single GPU only), used instead of the derived parameters; the rope cache is added.
    ``gpu_name`` / ``gpu_arch`` pick vLLM's batch defaults (H100-class) and the measured non-torch terms.
    ``cudagraph_in_budget``: V1 subtracts its CUDA-graph estimate from the budget (default for "v1",
    as from 0.21.0); V1 up to 0.20 captured graphs after the KV allocation (pass False).
    ``quantization``: None, "bitsandbytes" (in-flight NF4) or "fp8" (online fp8) for the linear layers.
    ``release``: the vLLM release these settings model, echoed in the result; take ``version`` and
    ``cudagraph_in_budget`` from ``resolve_release(release).estimate_kw()``.
    """
    if version not in ACCOUNTINGS:
        raise UnknownNameError(f"vllm version must be one of {', '.join(VLLM_VERSIONS)}: {version!r}")
    if not 0 < gpu_memory_utilization <= 1:
        raise InvalidSpecError(f"gpu_memory_utilization must be in (0, 1]: {gpu_memory_utilization}")
    tp, pp = tensor_parallel_size, pipeline_parallel_size
    if tp < 1 or pp < 1:
        raise InvalidSpecError(f"tensor/pipeline parallel size must be >= 1: {tp}, {pp}")
    if pp > spec.num_hidden_layers:
        raise InvalidSpecError(f"pipeline_parallel_size must be <= num_hidden_layers ({spec.num_hidden_layers}): {pp}")
    max_model_len = max_model_len or spec.max_position_embeddings
    if max_model_len < 1:
        raise InvalidSpecError(f"max_model_len must be >= 1: {max_model_len}")
    if max_model_len > spec.max_position_embeddings:
        # vLLM refuses unless VLLM_ALLOW_LONG_MAX_MODEL_LEN is set (ModelConfig._get_and_verify_max_len)
        raise VllmStartupError(
            f"User-specified max_model_len ({max_model_len}) is greater than the derived max_model_len "
            f"(max_position_embeddings={spec.max_position_embeddings} in model's config.json)."
        )
    d = _dtype_bytes(dtype, spec)
    kvb = _kv_bytes(kv_cache_dtype, d)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise UnknownNameError(f"quantization must be one of {', '.join(QUANTIZATIONS)} for vLLM: {quantization!r}")
    if quantization is not None and checkpoint_weights_bytes is not None:
        raise InvalidSpecError("checkpoint_weights_bytes reads an unquantized checkpoint: drop quantization")
    eng = "v1" if version == "v1" else "v0"
    max_num_seqs = max_num_seqs or default_max_num_seqs(version, gpu_memory_bytes, gpu_name)
    if max_num_batched_tokens is None:
        max_num_batched_tokens = default_max_num_batched_tokens(
            version, max_model_len, gpu_memory_bytes, gpu_name=gpu_name
        )
    if max_num_batched_tokens < 1 or max_num_seqs < 1:
        raise InvalidSpecError(
            f"max_num_batched_tokens and max_num_seqs must be >= 1: {max_num_batched_tokens}, {max_num_seqs}"
        )
    requested = (
        int(math.ceil(gpu_memory_bytes * gpu_memory_utilization))
        if eng == "v1"
        else int(gpu_memory_bytes * gpu_memory_utilization)
    )

    # CUDA graphs: the same on every rank (the pool, and the graphs counted for the high end)
    sizes = [] if enforce_eager else capture_sizes(max_num_seqs, eng, release, max_num_batched_tokens)
    graphs = cuda_graph_pool_bytes(spec, sizes, d, tp, quantization)
    n_graphs = len(sizes) + len(full_decode_sizes(sizes, max_num_seqs, eng, release))
    graphs_hi = graphs + n_graphs * CUDA_GRAPH_EXEC_PER_GRAPH_BYTES
    in_budget = (version == "v1") if cudagraph_in_budget is None else (cudagraph_in_budget and version == "v1")
    # Per rank; the last PP rank (lm_head + sampler) and rank 0 (embedding) are the candidates.
    cands = []
    for rank in range(pp):
        parts = weights_bytes_per_gpu(spec, d, tp, pp, rank, quantization)
        if checkpoint_weights_bytes is not None:
            if tp * pp != 1:
                raise InvalidSpecError("checkpoint_weights_bytes applies to a single GPU: use tp = pp = 1")
            parts = {"checkpoint": checkpoint_weights_bytes, "cos_sin_cache": parts["cos_sin_cache"]}
        weights = sum(parts.values())
        lo, hi = pp_layers(spec.num_hidden_layers, pp, rank)
        num_reqs = min(max_num_seqs, max_num_batched_tokens)
        fwd = forward_peak_bytes(spec, max_num_batched_tokens, d, tp, quantization)
        samp = 0
        if rank == pp - 1:
            # logits are gathered to one full [num_reqs, vocab] tensor before sampling
            samp = sampler_peak_bytes(num_reqs, spec.vocab_size, d)
            samp += max_num_batched_tokens * spec.hidden_size * d + num_reqs * spec.hidden_size * d
        act = max(fwd, samp)
        nt = (
            NON_TORCH_GROWTH_BY_ARCH.get(gpu_arch or "", NON_TORCH_GROWTH_BYTES)
            if non_torch_bytes is None
            else non_torch_bytes
        )
        nt_lo, nt_hi = (
            (min(nt, NON_TORCH_GROWTH_RANGE_BYTES[0]), max(nt, NON_TORCH_GROWTH_RANGE_BYTES[1]))
            if non_torch_bytes is None
            else (nt, nt)
        )
        extra = 0
        if tp > 1 or pp > 1:
            extra += TP_NON_TORCH_BY_ARCH.get(gpu_arch or "", CUSTOM_AR_BYTES * (tp > 1) + NCCL_BUFFERS_BYTES)
        if version == "v0-0.6":
            extra += device_baseline_bytes
        nt, nt_lo, nt_hi = nt + extra, nt_lo + extra, nt_hi + extra
        pool = requested - weights - act - nt - (graphs if in_budget else 0)
        pool_lo = requested - weights - act - nt_hi - (graphs_hi if in_budget else 0)
        pool_hi = requested - weights - act - nt_lo - (graphs if in_budget else 0)
        blk = kv_bytes_per_block(spec, kvb, tp, hi - lo, block_size)
        blocks = max(pool // blk, 0) if blk else 0
        rng = (nt_lo, nt_hi, pool_lo, pool_hi)
        cands.append((blocks, rank, parts, weights, act, samp, fwd, nt, pool, blk, rng))
    # the rank with the fewest KV blocks (the first of equals)
    blocks, rank, parts, weights, act, samp, fwd, nt, pool, blk, rng = min(cands, key=lambda c: c[0])
    nt_lo, nt_hi, pool_lo, pool_hi = rng
    conc, tokens = concurrency(blocks, block_size, max_model_len, eng)
    blocks_lo = max(pool_lo // blk, 0) if blk else 0
    blocks_hi = max(pool_hi // blk, 0) if blk else 0
    conc_lo, tokens_lo = concurrency(blocks_lo, block_size, max_model_len, eng)
    conc_hi, tokens_hi = concurrency(blocks_hi, block_size, max_model_len, eng)
    refusal = None
    sm = _sm(gpu_arch)
    if quantization is not None and sm is not None and sm < QUANT_MIN_SM[quantization]:
        # VllmConfig._get_quantization_config: capability < quant_config.get_min_capability() -> ValueError
        refusal = (
            f"The quantization method {quantization} is not supported for the current GPU. Minimum "
            f"capability: {QUANT_MIN_SM[quantization]}. Current capability: {sm}."
        )
    elif weights > gpu_memory_bytes:
        # the load itself fails: torch's allocator error while creating the parameters
        refusal = (
            f"CUDA out of memory while loading the model weights: {weights / GiB:.2f} GiB per GPU "
            f"on a GPU with {gpu_memory_bytes / GiB:.2f} GiB total capacity."
        )
    elif eng == "v1" and free_memory_bytes is not None and free_memory_bytes < requested:
        refusal = (
            f"Free memory on device ({free_memory_bytes / GiB:.2f}/{gpu_memory_bytes / GiB:.2f} GiB) on "
            f"startup is less than desired GPU memory utilization ({gpu_memory_utilization}, "
            f"{requested / GiB:.2f} GiB). Decrease GPU memory utilization or reduce GPU memory "
            f"used by other processes."
        )
    # the refusals above do not depend on the KV pool; those below are the pool's (one request of
    # max_model_len must fit in it), checked again at each end of its range
    pool_starts = (
        refusal is None and _holds_one_request(b, block_size, max_model_len, eng) for b in (blocks_lo, blocks_hi)
    )
    starts_certain, starts_possible = pool_starts
    if refusal is None:
        if blocks <= 0:
            refusal = (
                "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
                "when initializing the engine."
            )
        elif eng == "v0" and max_model_len > blocks * block_size:
            refusal = (
                f"The model's max seq len ({max_model_len}) is larger than the maximum number of tokens "
                f"that can be stored in KV cache ({blocks * block_size}). Try increasing "
                f"`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
            )
        elif eng == "v1" and -(-max_model_len // block_size) > blocks:
            needed = -(-max_model_len // block_size) * blk
            est = blocks * block_size
            refusal = (
                f"To serve at least one request with the models's max seq len ({max_model_len}), "
                f"({needed / GiB:.2f} GiB KV cache is needed, which is larger than the available KV "
                f"cache memory ({max(pool, 0) / GiB:.2f} GiB). Based on the available memory, the "
                f"estimated maximum model length is {est}. Try increasing `gpu_memory_utilization` "
                f"or decreasing `max_model_len` when initializing the engine."
            )
    return VllmEstimate(
        accounting=version,
        total_gpu_memory_bytes=gpu_memory_bytes,
        requested_memory_bytes=requested,
        weights_bytes=weights,
        activation_peak_bytes=act,
        sampler_peak_bytes=samp,
        forward_peak_bytes=fwd,
        non_torch_bytes=nt,
        cuda_graph_bytes=graphs,
        cuda_graph_in_budget=in_budget,
        kv_pool_bytes=pool,
        block_bytes=blk,
        num_gpu_blocks=blocks,
        kv_cache_tokens=tokens,
        max_concurrency=conc,
        max_model_len=max_model_len,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        cuda_context_bytes=cuda_context_bytes,
        starts=refusal is None,
        refusal=refusal,
        breakdown={"rank": rank, "weights": parts},
        release=release,
        non_torch_low_bytes=nt_lo,
        non_torch_high_bytes=nt_hi,
        cuda_graph_high_bytes=graphs_hi,
        kv_pool_low_bytes=pool_lo,
        kv_pool_high_bytes=pool_hi,
        num_gpu_blocks_low=blocks_lo,
        num_gpu_blocks_high=blocks_hi,
        max_concurrency_low=conc_lo,
        max_concurrency_high=conc_hi,
        kv_cache_tokens_low=tokens_lo,
        kv_cache_tokens_high=tokens_hi,
        starts_certain=starts_certain,
        starts_possible=starts_possible,
        num_cuda_graphs=n_graphs,
    )


def _holds_one_request(blocks: int, block_size: int, max_model_len: int, engine: str) -> bool:
    """The pool takes one request of max_model_len: V1 ``check_enough_kv_cache_memory`` (ceil(len /
    block_size) blocks), V0 ``_verify_and_get_model_len``-era check (len <= blocks x block_size)."""
    if blocks <= 0:
        return False
    return -(-max_model_len // block_size) <= blocks if engine == "v1" else max_model_len <= blocks * block_size


def concurrency(blocks: int, block_size: int, max_model_len: int, engine: str) -> tuple[float, int]:
    """(maximum concurrency, KV cache tokens) that ``blocks`` KV blocks give, as vLLM logs them.
    V1 (``kv_cache_utils``): a request of max_model_len holds ceil(max_model_len / block_size)
    blocks, so concurrency = blocks / that, tokens = int(concurrency x max_model_len). V0
    (``executor_base``/``gpu_executor``): blocks x block_size tokens over max_model_len."""
    if engine == "v1":
        conc = blocks / -(-max_model_len // block_size)
        return conc, int(conc * max_model_len) if blocks else 0
    return blocks * block_size / max_model_len, blocks * block_size


def _sm(arch: str | None) -> int | None:
    """Compute capability as vLLM prints it (75 for "sm75"); None for other or unknown architectures."""
    if arch and arch.startswith("sm") and arch[2:].isdigit():
        return int(arch[2:])
    return None


def _monotone_pieces(version: str, cap: int, batched_given: bool) -> list[int]:
    """Ends of the max_model_len ranges on which vLLM's startup can only get harder as the length
    grows. V0's default token budget is max(max_model_len, 2048) up to 32K and a fixed chunked-prefill
    budget above (``default_max_num_batched_tokens``), so a longer window can start where a shorter
    one does not; V1's budget and an explicit one do not depend on the length."""
    if version == "v1" or batched_given:
        return [cap]
    return [e for e in (2048, 32768) if e < cap] + [cap]


def max_model_len_vllm(spec: ModelSpec, gpu_memory_bytes: int, bound: str = "point", **kw: Any) -> int:
    """The largest max_model_len (a multiple of 16, or the model's window when all of it starts)
    such that vLLM starts with it and with every shorter max_model_len; 0 if 16 does not start.
    ``bound``: as ``VllmEstimate.starts_on`` ("high": starts for certain; "low": may start).

    Within each range of ``_monotone_pieces`` starting is monotone, so each is binary searched in
    order and the first failure ends the search."""
    cap = spec.max_position_embeddings

    def ok(n: int) -> bool:
        try:
            return estimate_vllm(spec, gpu_memory_bytes, max_model_len=n, **kw).starts_on(bound)
        except VllmStartupError:
            return False

    best = 0
    for end in _monotone_pieces(kw.get("version", "v1"), cap, kw.get("max_num_batched_tokens") is not None):
        if ok(end):
            best = end
            continue
        k_lo, k_hi = best // 16 + 1, (end - 1) // 16  # the multiples of 16 in (best, end)
        if k_hi < k_lo:
            return best
        k = largest_true(lambda k: ok(16 * k), k_lo, k_hi)
        return 16 * k if k >= k_lo else best
    return best


def smallest_utilization(spec: ModelSpec, gpu_memory_bytes: int, step: float = 0.01, **kw: Any) -> float | None:
    """The smallest gpu_memory_utilization, a multiple of ``step``, at which vLLM starts these settings
    (one request of max_model_len fits the pool); None if 1.0 does not. Starting is monotone in the
    utilization: every other term of the budget is fixed, the pool is what is left."""
    n = round(1 / step)

    def fails(k: int) -> bool:
        try:
            return not estimate_vllm(spec, gpu_memory_bytes, gpu_memory_utilization=k / n, **kw).starts
        except VllmStartupError:
            return True

    k = largest_true(fails, 1, n) + 1
    return None if k > n else k / n


def smallest_gpu_set(
    spec: ModelSpec, max_model_len: int | None = None, gpus: Iterable[Gpu] | None = None, max_gpus: int = 8, **kw: Any
) -> dict[str, Any] | None:
    """The smallest set of identical catalog GPUs (fewest GPUs, then least memory per GPU) on which
    vLLM starts with ``max_model_len``, trying TP 1/2/4/8 and then TP x PP. Returns
    {"gpu", "tensor_parallel_size", "pipeline_parallel_size", "num_gpus", "estimate"} or None."""
    if gpus is None:
        gpus = gpu_catalog()
    gpus = [g for g in gpus if getattr(g, "vendor", "nvidia") == "nvidia"]
    layouts = sorted(
        {(tp, pp) for tp in (1, 2, 4, 8) for pp in (1, 2, 4, 8) if tp * pp <= max_gpus},
        key=lambda x: (x[0] * x[1], x[1]),
    )
    for tp, pp in layouts:
        for g in sorted(gpus, key=lambda g: g.memory_bytes):
            try:
                e = estimate_vllm(
                    spec,
                    g.memory_bytes,
                    max_model_len=max_model_len,
                    tensor_parallel_size=tp,
                    pipeline_parallel_size=pp,
                    gpu_name=getattr(g, "name", None),
                    gpu_arch=getattr(g, "arch", None),
                    **kw,
                )
            except (InvalidSpecError, VllmStartupError):
                continue
            if e.starts:
                return {
                    "gpu": g,
                    "tensor_parallel_size": tp,
                    "pipeline_parallel_size": pp,
                    "num_gpus": tp * pp,
                    "estimate": e,
                }
    return None


# --- the one report type -------------------------------------------------------------------------

# estimate_vllm keywords that describe one GPU of the layout, not the settings a GPU set is searched for.
_PER_GPU_KEYWORDS = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "gpu_name",
    "gpu_arch",
    "cuda_context_bytes",
    "checkpoint_weights_bytes",
    "free_memory_bytes",
    "non_torch_bytes",
    "device_baseline_bytes",
)


def report(e: VllmEstimate, settings: Mapping[str, Any], **details: Any) -> MemoryReport:
    """vLLM's startup accounting on one GPU as the one report type (engine "vllm").

    Byte fields: the weights as loaded, the KV pool (0 when negative), the profile run's activation
    peak, and as overhead the rest of device used (non-torch memory, CUDA graphs, CUDA context);
    ``gpu_memory_bytes`` is the GPU's total, so ``headroom_bytes`` = total - used. ``details``: vLLM's
    own fields, and ``fits`` = vLLM starts (vLLM's test is not used <= total: it refuses a KV pool
    too small for one request, and the CUDA context lies outside its budget), then ``details``
    given here. ``settings`` is kept as given."""
    kv = max(e.kv_pool_bytes, 0)
    used = e.device_used_bytes
    own = {
        "fits": e.starts,
        "kv_pool_bytes": e.kv_pool_bytes,
        "num_gpu_blocks": e.num_gpu_blocks,
        "block_bytes": e.block_bytes,
        "max_concurrency": round(e.max_concurrency, 4),
        "kv_cache_tokens": e.kv_cache_tokens,
        "requested_memory_bytes": e.requested_memory_bytes,
        "non_torch_bytes": e.non_torch_bytes,
        "cuda_graph_bytes": e.cuda_graph_bytes,
        "cuda_context_bytes": e.cuda_context_bytes,
        "non_torch_low_bytes": e.non_torch_low_bytes,
        "non_torch_high_bytes": e.non_torch_high_bytes,
        "cuda_graph_high_bytes": e.cuda_graph_high_bytes,
        "num_cuda_graphs": e.num_cuda_graphs,
        "kv_pool_low_bytes": e.kv_pool_low_bytes,
        "kv_pool_high_bytes": e.kv_pool_high_bytes,
        "num_gpu_blocks_low": e.num_gpu_blocks_low,
        "num_gpu_blocks_high": e.num_gpu_blocks_high,
        "max_concurrency_low": None if e.max_concurrency_low is None else round(e.max_concurrency_low, 4),
        "max_concurrency_high": None if e.max_concurrency_high is None else round(e.max_concurrency_high, 4),
        "kv_cache_tokens_low": e.kv_cache_tokens_low,
        "kv_cache_tokens_high": e.kv_cache_tokens_high,
        "sampler_peak_bytes": e.sampler_peak_bytes,
        "forward_peak_bytes": e.forward_peak_bytes,
        "max_model_len": e.max_model_len,
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "max_num_seqs": e.max_num_seqs,
        "tensor_parallel_size": e.tensor_parallel_size,
        "pipeline_parallel_size": e.pipeline_parallel_size,
        "num_gpus": e.tensor_parallel_size * e.pipeline_parallel_size,
        "per_gpu": True,
        "refusal": e.refusal,
    }
    return MemoryReport(
        settings=settings,
        engine="vllm",
        source="estimate",
        weights_bytes=e.weights_bytes,
        kv_cache_bytes=kv,
        activations_bytes=e.activation_peak_bytes,
        overhead_bytes=used - e.weights_bytes - kv - e.activation_peak_bytes,
        device_used_bytes=used,
        gpu_memory_bytes=e.total_gpu_memory_bytes,
        device_used_low_bytes=e.device_used_low_bytes,
        device_used_high_bytes=e.device_used_high_bytes,
        details={**own, **details},
    )


def gpu_set_summary(spec: ModelSpec, max_model_len: int, **kw: Any) -> dict[str, Any] | None:
    """``smallest_gpu_set`` as JSON: {"gpu" (catalog key), "tensor_parallel_size",
    "pipeline_parallel_size", "num_gpus", "memory_bytes_per_gpu", "num_gpu_blocks"}, or None when no
    set starts (or the settings are invalid). ``kw``: estimate_vllm keywords; those of one GPU of a
    layout (parallel sizes, GPU name and arch, CUDA context, checkpoint bytes, ...) are ignored."""
    kw = {k: v for k, v in kw.items() if k not in _PER_GPU_KEYWORDS}
    try:
        r = smallest_gpu_set(spec, max_model_len, **kw)
    except EstimatorError:
        return None
    if r is None:
        return None
    return {
        "gpu": r["gpu"].key,
        "tensor_parallel_size": r["tensor_parallel_size"],
        "pipeline_parallel_size": r["pipeline_parallel_size"],
        "num_gpus": r["num_gpus"],
        "memory_bytes_per_gpu": r["gpu"].memory_bytes,
        "num_gpu_blocks": r["estimate"].num_gpu_blocks,
    }


def estimate_report(
    spec: ModelSpec,
    gpu_memory_bytes: int,
    settings: Mapping[str, Any] | None = None,
    *,
    smallest_set: bool = True,
    **kw: Any,
) -> MemoryReport:
    """vLLM's startup on a GPU of ``gpu_memory_bytes`` (``estimate_vllm`` keywords ``kw``) as a report.

    ``settings``: the engine, model, quant, KV dtype, GPU memory, context (max_model_len) and vLLM's
    settings, its defaults resolved (max_num_batched_tokens, max_num_seqs), updated with the
    ``settings`` given (how the caller names the quant, KV dtype and GPU). With ``smallest_set``,
    ``details["smallest_gpu_set"]`` is ``gpu_set_summary`` at this max_model_len. Raises
    ``VllmStartupError`` with vLLM's own reason when it would not start."""
    e = estimate_vllm(spec, gpu_memory_bytes, **kw)
    if not e.starts:
        raise VllmStartupError(e.refusal)
    s: dict[str, Any] = {
        "engine": "vllm",
        "model": spec.name,
        "quant": kw.get("quantization") or kw.get("dtype", "auto"),
        "kv_dtype": kw.get("kv_cache_dtype", "auto"),
        "gpu": None,
        "gpu_memory_bytes": gpu_memory_bytes,
        "context": e.max_model_len,
        "gpu_memory_utilization": kw.get("gpu_memory_utilization", 0.9),
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "max_num_seqs": e.max_num_seqs,
        "enforce_eager": kw.get("enforce_eager", False),
        "vllm_version": e.accounting,
        "vllm_release": e.release or e.accounting,
        "tensor_parallel_size": e.tensor_parallel_size,
        "pipeline_parallel_size": e.pipeline_parallel_size,
    }
    s.update(settings or {})
    extra = {}
    if smallest_set:
        extra["smallest_gpu_set"] = gpu_set_summary(
            spec, e.max_model_len, **{k: v for k, v in kw.items() if k != "max_model_len"}
        )
    return report(e, s, **extra)


def fit_report(
    spec: ModelSpec, gpu_memory_bytes: int, settings: Mapping[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    """The largest max_model_len vLLM starts with on a GPU of ``gpu_memory_bytes`` (``max_model_len_vllm``)
    and the report there: {"engine": "vllm", "max_context", "max_context_low" (starts for certain),
    "max_context_high" (may start), "gpu_memory_bytes",
    "max_position_embeddings", "whole_window_fits", "estimate": MemoryReport (``estimate_report``)}.
    Raises ``VllmStartupError`` with vLLM's reason (at max_model_len 16) when no length starts."""
    t = max_model_len_vllm(spec, gpu_memory_bytes, **kw)
    if t == 0:
        e = estimate_vllm(spec, gpu_memory_bytes, max_model_len=16, **kw)
        raise VllmStartupError(e.refusal or "vLLM does not start at any max_model_len on this GPU")
    window = spec.max_position_embeddings
    return {
        "engine": "vllm",
        "max_context": t,
        "max_context_low": max_model_len_vllm(spec, gpu_memory_bytes, bound="high", **kw),  # starts for certain
        "max_context_high": max_model_len_vllm(spec, gpu_memory_bytes, bound="low", **kw),  # may start
        "gpu_memory_bytes": gpu_memory_bytes,
        "max_position_embeddings": window,
        "whole_window_fits": t == window,
        "estimate": estimate_report(spec, gpu_memory_bytes, settings, max_model_len=t, **kw),
    }
