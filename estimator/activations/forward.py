"""The replay of one forward: the allocations and frees of its last decoder layer, tensor by tensor.

``trace_forward`` walks what transformers 5.x allocates and frees in one forward of
``LlamaForCausalLM`` (read from ``modeling_llama.py``, ``integrations/sdpa_attention.py``,
``cache_utils.py``, ``masking_utils.py`` and ``generation/utils.py``) and returns, after every
allocation, the live tensors, each with its size (a ``Poly`` in the context) and how the caching
allocator charges it (``FRESH``, ``CARVED`` or ``SURCHARGE``). The package docstring
(``estimator.activations``) has the per-token result and the quantized linears' sources.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import ModelSpec
from ..units import cdiv
from .poly import ZERO, P, Poly, padd, pmul, pscale

INT64 = 8
FP32 = 4

# Kernel choices that depend on M = tokens in the forward (batch x new tokens):
# bitsandbytes 0.50 backends/cuda/ops.py: the fused 4-bit kernel for M <= 4
# (_GEMM_4BIT_CUSTOM_FLOOR_M); for bf16/fp16 weights of >= 4M elements it keeps winning up to
# M = 512 (_gemm_4bit_use_custom_cuda); fp32 has no MMA kernel, fused only for M < 8.
BNB_FUSED_MAX_M = 4
BNB_LARGE_W_FUSED_MAX_M = 512
BNB_FP32_FUSED_BELOW_M = 8
# AutoAWQ WQLinear_GEMM: dequantize the whole weight when M >= 1024, else the fused GEMM.
AWQ_DEQUANT_MIN_M = 1024
# The M values at which one of these choices flips (the first M of the new regime).
KERNEL_M_THRESHOLDS = (BNB_FUSED_MAX_M + 1, BNB_FP32_FUSED_BELOW_M, BNB_LARGE_W_FUSED_MAX_M + 1, AWQ_DEQUANT_MIN_M)


@dataclass(frozen=True, slots=True)
class Forward:
    """One forward pass, with sizes as polynomials in the context T.

    q: new tokens per sequence; past: cached tokens before this forward; S: keys attended.
    kv_k/kv_v: bytes of the last layer's K and V after the update; kv_old_*: before it.
    """

    batch: int
    q: Poly
    past: Poly
    S: Poly
    cb: int
    quant: str
    quant_family: str
    bnb_compute_bytes: int
    attn: str
    padding: bool
    logits: str
    cache: str
    kv_k: Poly
    kv_v: Poly
    kv_old_k: Poly
    kv_old_v: Poly
    has_mask: bool
    m_max: int  # the actual b*q at the context being planned (kernel choices depend on it)
    sdpa_math: bool = False  # SDPA falls back to ATen's math kernel (pre-sm80 GPUs with enable_gqa)
    half_to_float: bool = False  # compute dtype is fp16: softmax(dtype=float32) is fused on CUDA

    @property
    def decode(self) -> bool:
        """A decode step: one token per sequence on top of a cache that grows with the prompt
        (``estimate._forwards``: past = T + N - 1). Prefill forwards have no past or a constant
        one (the chunks before the last)."""
        return self.q == P(1) and self.past[1] > 0


# How the caching allocator charges a tensor (allocator.py has the rules and their source):
FRESH = "fresh"  # served by a fresh segment: allocator.block_bytes (2 MiB round-up kept whole)
CARVED = "carved"  # carved from a larger cached block: allocator.round_size
SURCHARGE = "surcharge"  # no bytes of its own: turns one carved copy of its size into a fresh one
# Tensors a forward allocates before its first decoder layer frees anything (masking_utils,
# LlamaModel.forward, LlamaRotaryEmbedding): no cached block can serve them yet.
INPUT_NAMES = ("input_ids", "position_ids", "embeds", "cos", "sin", "mask")
LAYER_TAGS = ("attention", "mlp")  # the decoder layer's own transients are freed under these

# One snapshot: where (the tag of the code that allocated) and the live (size, kind) pairs.
Snapshot = tuple[str, tuple[tuple[Poly, str], ...]]


class _Tracer:
    """Live named tensors; each allocation has an id, kept through renames."""

    def __init__(self) -> None:
        self.live: dict[str, tuple[Poly, int]] = {}
        self.first_name: list[str] = []  # alloc id -> name at allocation
        self.sizes: list[Poly] = []  # alloc id -> size
        self.snaps: list[tuple[str, tuple[int, ...]]] = []
        self.layer_freed: set[Poly] = set()  # sizes the decoder layer frees (cached blocks after it)
        self.tag = ""

    def alloc(self, name: str, size: Poly) -> None:
        if size == ZERO:
            return
        if name in self.live:
            raise AssertionError(f"double alloc of {name}")
        self.live[name] = (size, len(self.sizes))
        self.first_name.append(name)
        self.sizes.append(size)
        self.snaps.append((self.tag, tuple(i for _, i in self.live.values())))

    def free(self, *names: str) -> None:
        for n in names:
            hit = self.live.pop(n, None)
            if hit is not None and self.tag in LAYER_TAGS:
                self.layer_freed.add(hit[0])

    def rename(self, old: str, new: str) -> None:
        self.live[new] = self.live.pop(old)


def _linear(tr: _Tracer, f: Forward, out: str, m: Poly, k: int, n: int) -> None:
    """Output [m, n] of a linear layer with input [m, k], plus the layer's own transients."""
    cb, fam = f.cb, f.quant_family
    if fam == "bnb" and f.quant != "int8":
        cdt = f.bnb_compute_bytes
        if cdt != cb:  # Linear4bit.forward: x.to(compute_dtype)
            tr.alloc(out + ".x", pscale(m, k * cdt))
        # bitsandbytes 0.50 gemm_4bit dispatch: the fused kernel for M <= 4; for larger M the
        # per-arch heuristic (_gemm_4bit_use_custom_cuda) keeps it up to M = 512 for large bf16
        # weights; fp32 has no MMA kernel (custom only for M < 8). Otherwise dequantize + F.linear.
        mm = f.m_max
        custom = (
            mm <= BNB_FUSED_MAX_M
            or (cdt == 2 and n * k >= 4 * 1024 * 1024 and mm <= BNB_LARGE_W_FUSED_MAX_M)
            or (cdt == 4 and mm < BNB_FP32_FUSED_BELOW_M)
        )
        if not custom:  # _dequant_linear_fallback
            if f.quant.endswith("-dq"):
                blocks = cdiv(n * k, 64)
                tr.alloc(out + ".absmax_dq", P(blocks * FP32))
                tr.alloc(out + ".absmax", P(blocks * FP32))
            tr.alloc(out + ".w", P(n * k * cdt))
        tr.alloc(out + ".o", pscale(m, n * cdt))
        tr.free(out + ".w", out + ".absmax_dq", out + ".absmax", out + ".x")
        if cdt != cb:  # .to(inp_dtype)
            tr.alloc(out, pscale(m, n * cb))
            tr.free(out + ".o")
        else:
            tr.rename(out + ".o", out)
        return
    if f.quant == "int8":  # MatMul8bitLt.forward, llm_int8_threshold 6.0, bitsandbytes 0.50 CUDA ops
        tr.alloc(out + ".a16", pscale(m, k * 2))  # A.to(float16), a temporary argument
        tr.alloc(out + ".sca", pscale(m, FP32))  # int8_vectorwise_quant: row_stats
        tr.alloc(out + ".ca", pscale(m, k))  # out_row (int8)
        tr.alloc(out + ".abs", pscale(m, k * 2))  # A.abs() >= threshold
        tr.alloc(out + ".mask", pscale(m, k))
        tr.free(out + ".abs", out + ".mask", out + ".a16")
        tr.alloc(out + ".i32", pscale(m, n * 4))  # int8_scaled_mm: int32 accumulator
        tr.alloc(out + ".o16", pscale(m, n * 2))  # int8_mm_dequant: fp16 output
        tr.alloc(out, pscale(m, n * cb))  # out.to(bf16) while both are alive
        tr.free(out + ".i32", out + ".o16", out + ".ca", out + ".sca")
        return
    if fam == "fp8":
        tr.alloc(out + ".xq", pscale(m, k))  # activation cast to e4m3
        tr.alloc(out, pscale(m, n * cb))
        tr.free(out + ".xq")
        return
    if fam == "awq" and f.m_max >= AWQ_DEQUANT_MIN_M:  # AutoAWQ: dequantize, then matmul
        tr.alloc(out + ".w", P(n * k * 2))
        tr.alloc(out, pscale(m, n * cb))
        tr.free(out + ".w")
        return
    tr.alloc(out, pscale(m, n * cb))


def _rms_norm(tr: _Tracer, f: Forward, out: str, elems: Poly) -> None:
    """LlamaRMSNorm: x.to(fp32); pow(2).mean(-1); x * rsqrt(var); weight * x.to(input dtype)."""
    if f.cb != FP32:
        tr.alloc(out + ".x32", pscale(elems, FP32))
    tr.alloc(out + ".pow", pscale(elems, FP32))
    tr.free(out + ".pow")
    tr.alloc(out + ".h32", pscale(elems, FP32))
    tr.free(out + ".x32")
    if f.cb != FP32:
        tr.alloc(out + ".h", pscale(elems, f.cb))
    tr.alloc(out, pscale(elems, f.cb))
    tr.free(out + ".h", out + ".h32")


def _attention(tr: _Tracer, f: Forward, spec: ModelSpec, m: Poly) -> None:
    H, qd, kvd, cb, b = spec.hidden_size, spec.q_dim, spec.kv_dim, f.cb, f.batch
    _linear(tr, f, "q", m, H, qd)
    _linear(tr, f, "k", m, H, kvd)
    _linear(tr, f, "v", m, H, kvd)
    if spec.qk_norm:  # Qwen3: q_norm / k_norm over head_dim before rope
        for t, d in (("q", qd), ("k", kvd)):
            _rms_norm(tr, f, t + "n", pscale(m, d))
            tr.free(t)
            tr.rename(t + "n", t)
    # apply_rotary_pos_emb: (x * cos) + (rotate_half(x) * sin); rotate_half = cat(-x2, x1).
    for t, d in (("q", qd), ("k", kvd)):
        e = pscale(m, d * cb)
        tr.alloc(t + ".cos", e)
        tr.alloc(t + ".neg", pscale(m, d * cb // 2))
        tr.alloc(t + ".rot", e)
        tr.free(t + ".neg")
        tr.alloc(t + ".sin", e)
        tr.free(t + ".rot")
        tr.alloc(t + "e", e)
        tr.free(t + ".cos", t + ".sin", t)
    # Cache update. Dynamic: torch.cat([old, new], dim=-2) allocates the grown tensor while the
    # old one is still referenced (cache_utils.DynamicLayer.update). Static: index_copy_ into
    # the tensors allocated at the layer's first update (StaticLayer.lazy_initialization).
    # The attention's own key_states/value_states ("ke", "v") stay referenced by its locals until
    # update() returns, so the new K is alive during the V cat.
    if f.cache == "dynamic":
        tr.alloc("kv.k", f.kv_k)
        tr.free("kv.k.old")
        tr.alloc("kv.v", f.kv_v)
        tr.free("kv.v.old", "ke", "v")
    else:
        if "kv.k.old" in tr.live:
            tr.rename("kv.k.old", "kv.k")
            tr.rename("kv.v.old", "kv.v")
        else:
            tr.alloc("kv.k", f.kv_k)
            tr.alloc("kv.v", f.kv_v)
        tr.free("ke", "v")
    n_h = spec.num_attention_heads
    rep = pscale(f.S, b * n_h * spec.head_dim * cb)
    scores = pscale(pmul(f.q, f.S), b * n_h)
    if f.attn == "eager":  # eager_attention_forward
        tr.alloc("k.rep", rep)  # repeat_kv(key)
        tr.alloc("v.rep", rep)  # repeat_kv(value)
        tr.alloc("scores.mm", pscale(scores, cb))  # matmul(q, k^T)
        tr.alloc("scores", pscale(scores, cb))  # * scaling
        tr.free("scores.mm")
        tr.alloc("scores.masked", pscale(scores, cb))  # + causal_mask
        tr.free("scores")
        # softmax(x, dtype=float32): only fp16 on CUDA has the fused half-to-float kernel;
        # bf16 is first copied to fp32 (ATen softmax: _to_copy, then _softmax).
        if not f.half_to_float:
            tr.alloc("scores32", pscale(scores, FP32))
        tr.alloc("probs32", pscale(scores, FP32))
        tr.free("scores32")
        tr.alloc("probs", pscale(scores, cb))  # .to(query dtype)
        tr.free("scores.masked", "probs32")
        tr.alloc("attn.bhtd", pscale(m, qd * cb))  # matmul(probs, v)
        tr.free("probs", "k.rep", "v.rep")
        tr.alloc("attn", pscale(m, qd * cb))  # transpose(1, 2).contiguous()
        tr.free("attn.bhtd")
    elif f.sdpa_math and not f.has_mask:
        # Pre-sm80 GPUs have no flash kernel, and enable_gqa=True rules out the efficient one, so
        # SDPA runs ATen's math kernel (transformers#48633). With the default
        # allow_fp16_bf16_reduction_math_sdp(False) it upcasts to fp32, repeats K/V per query
        # head, scales q and k^T, and materialises fp32 scores and probabilities.
        tr.alloc("q32", pscale(m, qd * FP32))
        tr.alloc("k.rep", pscale(f.S, b * n_h * spec.head_dim * FP32))
        tr.alloc("v.rep", pscale(f.S, b * n_h * spec.head_dim * FP32))
        tr.alloc("qs", pscale(m, qd * FP32))
        tr.free("q32")
        tr.alloc("kt", pscale(f.S, b * n_h * spec.head_dim * FP32))
        tr.alloc("scores", pscale(scores, FP32))
        tr.free("kt", "k.rep")
        tr.alloc("probs", pscale(scores, FP32))  # _safe_softmax
        tr.free("scores")
        tr.alloc("attn32", pscale(m, qd * FP32))
        tr.free("probs", "v.rep", "qs")
        tr.alloc("attn.bhtd", pscale(m, qd * cb))  # back to the query dtype
        tr.free("attn32")
        tr.alloc("attn", pscale(m, qd * cb))  # transpose(1, 2).contiguous()
        tr.free("attn.bhtd")
    else:
        # SDPA: with no mask, GQA goes to the kernel (enable_gqa=True, no copies); with a mask,
        # or head_dim > 256 (transformers#46960), repeat_kv materialises K and V for every query
        # head; with a mask ATen also converts the bool mask to a float mask in the query dtype
        # (convert_boolean_attn_mask).
        if f.has_mask or spec.head_dim > 256:
            tr.alloc("k.rep", rep)
            tr.alloc("v.rep", rep)
            tr.alloc("mask.float", pscale(pmul(f.q, f.S), b * cb))
        tr.alloc("attn", pscale(m, qd * cb))  # kernel output [b, T, h, d]
        tr.alloc("lse", pscale(f.q, b * n_h * FP32))  # logsumexp, dropped by F.sdpa
        tr.free("lse", "mask.float", "k.rep", "v.rep")
    tr.free("qe")
    _linear(tr, f, "o", m, qd, H)
    tr.free("attn")


def _mlp(tr: _Tracer, f: Forward, spec: ModelSpec, m: Poly) -> None:
    """down_proj(act_fn(gate_proj(x)) * up_proj(x)): gate is freed once act exists."""
    I, H, cb = spec.intermediate_size, spec.hidden_size, f.cb
    _linear(tr, f, "gate", m, H, I)
    tr.alloc("act", pscale(m, I * cb))
    tr.free("gate")
    _linear(tr, f, "up", m, H, I)
    tr.alloc("prod", pscale(m, I * cb))
    tr.free("act", "up")
    _linear(tr, f, "mo", m, I, H)
    tr.free("prod")


def _generate_state(tr: _Tracer, f: Forward) -> None:
    """What ``generate()``'s decode loop holds across a decode forward, beyond what the caller
    passes as ``extra`` (``estimate._forwards``: the previous step's fp32 next-token logits
    [b, V] and ``past`` tokens of ``input_ids``) and the forward's own inputs (the [b, 1] clones
    ``prepare_inputs_for_generation`` makes of the last id and position, allocated below).

    transformers 5.24 ``generation/utils.py`` ``_sample``: ``input_ids`` holds past + 1 tokens at
    step i (the prompt, the prefill's token and one per earlier step), one more than ``extra``;
    ``_update_model_kwargs_for_generation`` grows ``model_kwargs["position_ids"]`` by ``cat`` to
    [b, past + 1]; ``next_tokens`` (argmax, [b] int64) and ``unfinished_sequences`` ([b] int64)
    live from one step to the next. runtime/generate.py reproduces the same loop."""
    if not f.decode:
        return
    b = f.batch
    tr.alloc("gen.position_ids", pscale(padd(f.past, f.q), b * INT64))
    tr.alloc("gen.input_ids.last", P(b * INT64))
    tr.alloc("gen.next_tokens", P(b * INT64))
    tr.alloc("gen.unfinished", P(b * INT64))


def trace_forward(spec: ModelSpec, f: Forward) -> list[Snapshot]:
    """Snapshots (tag, live (size, kind) pairs) after every allocation of one forward's last
    layer; the kind (``_kind``) says how the caching allocator charges the tensor."""
    tr = _Tracer()
    b, cb, H, V = f.batch, f.cb, spec.hidden_size, spec.vocab_size
    m = pscale(f.q, b)
    tr.tag = "inputs"
    tr.alloc("kv.k.old", f.kv_old_k)
    tr.alloc("kv.v.old", f.kv_old_v)
    _generate_state(tr, f)
    # generate() (transformers 5.24) passes input_ids and position_ids [b, T] (int64); the
    # all-ones attention_mask is dropped before the forward when there is no padding.
    tr.alloc("input_ids", pscale(m, INT64))
    tr.alloc("position_ids", pscale(m, INT64))
    tr.alloc("embeds", pscale(m, H * cb))
    tr.alloc("cos", pscale(m, spec.rotary_dim * cb))  # position_embeddings, live all forward
    tr.alloc("sin", pscale(m, spec.rotary_dim * cb))
    if f.has_mask:
        # 4-D mask. SDPA: bool, built once with batch 1 and expanded unless there is padding;
        # eager: additive in the model dtype (torch.where over the expanded bool), [b, 1, q, S].
        if f.attn == "eager":
            tr.alloc("mask", pscale(pmul(f.q, f.S), b * cb))
        else:
            tr.alloc("mask", pscale(pmul(f.q, f.S), b if f.padding else 1))
    # The last layer's input is the previous layer's output (LlamaModel keeps inputs_embeds).
    x = "embeds"
    if spec.num_hidden_layers > 1:
        tr.alloc("x", pscale(m, H * cb))
        x = "x"
    tr.tag = "attention"
    _rms_norm(tr, f, "n1", pscale(m, H))
    _attention(tr, f, spec, m)
    tr.free("n1")
    tr.alloc("h", pscale(m, H * cb))  # residual + attention output
    tr.free("o")
    tr.tag = "mlp"
    _rms_norm(tr, f, "n2", pscale(m, H))
    _mlp(tr, f, spec, m)
    tr.free("n2")
    tr.alloc("y", pscale(m, H * cb))  # residual + mlp output
    tr.free("mo", "h")
    if x == "x":
        tr.free("x")
    tr.tag = "final norm"
    _rms_norm(tr, f, "yn", pscale(m, H))
    tr.free("y", "embeds", "cos", "sin", "mask")  # input_ids and position_ids belong to the caller
    tr.tag = "logits"
    if f.logits == "last":
        # generate(): logits_to_keep=1, then logits[:, -1].to(copy=True, dtype=float32).
        tr.alloc("logits", P(b * V * cb))
        tr.free("yn")
        tr.alloc("next_logits", P(b * V * FP32))
        tr.free("logits")
    else:
        tr.alloc("logits", pscale(m, V * cb))
        tr.free("yn")  # the forward returns; the caller keeps the logits
        if f.logits == "full-fp32":  # the caller's logits.float()
            tr.alloc("logits32", pscale(m, V * FP32))
    return _charged_snaps(tr, f, spec)


def _dominated(p: Poly, by: set[Poly]) -> bool:
    """Some size in ``by`` is at least ``p`` for every context, and differs from it."""
    return any(q != p and all(x >= y for x, y in zip(q, p)) for q in by)


def _kind(tr: _Tracer, i: int, f: Forward, spec: ModelSpec) -> str:
    """How the allocator charges allocation ``i`` (memory-model.md 5.1, "fresh or carved").

    Best fit looks in the cached free blocks before it maps a segment, and a large block is split
    when more than 1 MiB remains (``get_free_block``, ``should_split``). From the second decoder
    layer on, the pool holds the blocks the previous (identical) layer freed; a request smaller
    than one of them is carved to its rounded size. The forward's inputs come before any free
    (fresh), and so does the first layer's K/V in the forward that creates the cache; the K/V
    of a later forward are carved from blocks the earlier forwards cached (the prefill's MLP
    temporaries are larger). A tensor that no freed block of the layer exceeds (the layer's
    largest transient, full logits) gets a fresh segment."""
    name, size = tr.first_name[i], tr.sizes[i]
    if name in INPUT_NAMES:
        return FRESH
    if name.startswith("kv."):
        if f.past != ZERO:
            return CARVED
        if spec.num_hidden_layers == 1:  # the replayed layer is the first one
            return FRESH
    return CARVED if _dominated(size, tr.layer_freed) else FRESH


def _charged_snaps(tr: _Tracer, f: Forward, spec: ModelSpec) -> list[Snapshot]:
    """Snapshots as (tag, ((size, kind), ...)). In the forward that creates the cache, the first
    layer's K and V (among the other layers' KV the caller adds as carved) are charged fresh."""
    kinds = [_kind(tr, i, f, spec) for i in range(len(tr.sizes))]
    first_kv: tuple[tuple[Poly, str], ...] = ()
    if f.past == ZERO and spec.num_hidden_layers > 1:
        first_kv = ((f.kv_k, SURCHARGE), (f.kv_v, SURCHARGE))
    return [(tag, tuple((tr.sizes[i], kinds[i]) for i in ids) + first_kv) for tag, ids in tr.snaps]
