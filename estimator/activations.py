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
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .allocator import LARGE_SEGMENT_BYTES, block_bytes, round_size
from .model import ModelSpec

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

Poly = tuple[int, int, int]  # c0 + c1*T + c2*T^2, T = context tokens
ZERO: Poly = (0, 0, 0)


def P(c0: int = 0, c1: int = 0, c2: int = 0) -> Poly:
    return (c0, c1, c2)


def pmul(a: Poly, b: Poly) -> Poly:
    if a[2] and (b[1] or b[2]) or b[2] and a[1]:
        raise AssertionError("size of degree > 2")
    return (a[0] * b[0], a[0] * b[1] + a[1] * b[0], a[0] * b[2] + a[1] * b[1] + a[2] * b[0])


def pscale(a: Poly, k: int) -> Poly:
    return (a[0] * k, a[1] * k, a[2] * k)


def padd(a: Poly, b: Poly) -> Poly:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def peval(a: Poly, t: int) -> int:
    return a[0] + t * (a[1] + t * a[2])


@dataclass(frozen=True)
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
FRESH = "fresh"          # served by a fresh segment: allocator.block_bytes (2 MiB round-up kept whole)
CARVED = "carved"        # carved from a larger cached block: allocator.round_size
SURCHARGE = "surcharge"  # no bytes of its own: turns one carved copy of its size into a fresh one
# Tensors a forward allocates before its first decoder layer frees anything (masking_utils,
# LlamaModel.forward, LlamaRotaryEmbedding): no cached block can serve them yet.
INPUT_NAMES = ("input_ids", "position_ids", "embeds", "cos", "sin", "mask")
LAYER_TAGS = ("attention", "mlp")  # the decoder layer's own transients are freed under these


class _Tracer:
    """Live named tensors; each allocation has an id, kept through renames."""

    def __init__(self) -> None:
        self.live: dict[str, tuple[Poly, int]] = {}
        self.first_name: list[str] = []   # alloc id -> name at allocation
        self.sizes: list[Poly] = []       # alloc id -> size
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
        custom = (mm <= BNB_FUSED_MAX_M or (cdt == 2 and n * k >= 4 * 1024 * 1024 and mm <= BNB_LARGE_W_FUSED_MAX_M)
                  or (cdt == 4 and mm < BNB_FP32_FUSED_BELOW_M))
        if not custom:  # _dequant_linear_fallback
            if f.quant.endswith("-dq"):
                blocks = -(-n * k // 64)
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
        tr.alloc(out + ".a16", pscale(m, k * 2))       # A.to(float16), a temporary argument
        tr.alloc(out + ".sca", pscale(m, FP32))        # int8_vectorwise_quant: row_stats
        tr.alloc(out + ".ca", pscale(m, k))            # out_row (int8)
        tr.alloc(out + ".abs", pscale(m, k * 2))       # A.abs() >= threshold
        tr.alloc(out + ".mask", pscale(m, k))
        tr.free(out + ".abs", out + ".mask", out + ".a16")
        tr.alloc(out + ".i32", pscale(m, n * 4))       # int8_scaled_mm: int32 accumulator
        tr.alloc(out + ".o16", pscale(m, n * 2))       # int8_mm_dequant: fp16 output
        tr.alloc(out, pscale(m, n * cb))               # out.to(bf16) while both are alive
        tr.free(out + ".i32", out + ".o16", out + ".ca", out + ".sca")
        return
    if fam == "fp8":
        tr.alloc(out + ".xq", pscale(m, k))            # activation cast to e4m3
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
        tr.alloc("k.rep", rep)                           # repeat_kv(key)
        tr.alloc("v.rep", rep)                           # repeat_kv(value)
        tr.alloc("scores.mm", pscale(scores, cb))        # matmul(q, k^T)
        tr.alloc("scores", pscale(scores, cb))           # * scaling
        tr.free("scores.mm")
        tr.alloc("scores.masked", pscale(scores, cb))    # + causal_mask
        tr.free("scores")
        # softmax(x, dtype=float32): only fp16 on CUDA has the fused half-to-float kernel;
        # bf16 is first copied to fp32 (ATen softmax: _to_copy, then _softmax).
        if not f.half_to_float:
            tr.alloc("scores32", pscale(scores, FP32))
        tr.alloc("probs32", pscale(scores, FP32))
        tr.free("scores32")
        tr.alloc("probs", pscale(scores, cb))            # .to(query dtype)
        tr.free("scores.masked", "probs32")
        tr.alloc("attn.bhtd", pscale(m, qd * cb))        # matmul(probs, v)
        tr.free("probs", "k.rep", "v.rep")
        tr.alloc("attn", pscale(m, qd * cb))             # transpose(1, 2).contiguous()
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
        tr.alloc("probs", pscale(scores, FP32))         # _safe_softmax
        tr.free("scores")
        tr.alloc("attn32", pscale(m, qd * FP32))
        tr.free("probs", "v.rep", "qs")
        tr.alloc("attn.bhtd", pscale(m, qd * cb))        # back to the query dtype
        tr.free("attn32")
        tr.alloc("attn", pscale(m, qd * cb))             # transpose(1, 2).contiguous()
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
        tr.alloc("attn", pscale(m, qd * cb))             # kernel output [b, T, h, d]
        tr.alloc("lse", pscale(f.q, b * n_h * FP32))     # logsumexp, dropped by F.sdpa
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


def trace_forward(spec: ModelSpec, f: Forward) -> list[tuple[str, tuple[tuple[Poly, str], ...]]]:
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
    tr.alloc("cos", pscale(m, spec.rotary_dim * cb))    # position_embeddings, live all forward
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
    tr.alloc("h", pscale(m, H * cb))                    # residual + attention output
    tr.free("o")
    tr.tag = "mlp"
    _rms_norm(tr, f, "n2", pscale(m, H))
    _mlp(tr, f, spec, m)
    tr.free("n2")
    tr.alloc("y", pscale(m, H * cb))                    # residual + mlp output
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


def _charged_snaps(tr: _Tracer, f: Forward, spec: ModelSpec) -> list[tuple[str, tuple[tuple[Poly, str], ...]]]:
    """Snapshots as (tag, ((size, kind), ...)). In the forward that creates the cache, the first
    layer's K and V (among the other layers' KV the caller adds as carved) are charged fresh."""
    kinds = [_kind(tr, i, f, spec) for i in range(len(tr.sizes))]
    first_kv = ()
    if f.past == ZERO and spec.num_hidden_layers > 1:
        first_kv = ((f.kv_k, SURCHARGE), (f.kv_v, SURCHARGE))
    return [(tag, tuple((tr.sizes[i], kinds[i]) for i in ids) + first_kv) for tag, ids in tr.snaps]


@dataclass(frozen=True, slots=True)
class Candidate:
    tag: str
    raw: Poly                            # sum of live sizes
    sizes: tuple[Poly, ...]              # distinct live sizes that depend on T
    counts: tuple[int, ...]              # how many tensors of each size
    const_blk: int                       # allocator bytes of the live sizes that do not depend on T
    const_pools: tuple[int, int, int]    # their rounded bytes in the (small, medium, large) pools
    slack: int                           # most the allocator can add on top of raw
    res_slack: int                       # most the segments can add on top of raw
    own_slack: int = 0                   # slack of the tensors not live in every candidate
    fresh: tuple[int, ...] = ()          # of counts: how many are charged a fresh block (the rest carved)


_MAX_SLACK = 2 * 1024 * 1024  # block_bytes(n) - n < 2 MiB for any single tensor
# The caching allocator's pools (allocator.py has the rules and their source).
_SMALL = 1 << 20       # kSmallSize
_MIN_LARGE = 10 << 20  # kMinLargeAlloc
_ROUND_LARGE = 2 << 20  # kRoundLarge
_SMALL_SEG = 2 << 20   # kSmallBuffer
_LARGE_SEG = 20 << 20  # kLargeBuffer


def _floor_bytes(n: int) -> int:
    """Bytes a tensor takes in the segment floor: 512-rounded, and for the large pool (>= 10 MiB)
    its own segment rounded up to 2 MiB; never less than ``block_bytes(n)``."""
    r = (n + 511) & ~511
    return r if r < _MIN_LARGE else -(-r // _ROUND_LARGE) * _ROUND_LARGE


def _min_on(d: Poly, lo: int, hi: int) -> int:
    """Minimum of the polynomial d over the integers lo..hi."""
    pts = [lo, hi]
    if d[2] > 0:
        v = -d[1] // (2 * d[2])
        pts += [min(max(v, lo), hi), min(max(v + 1, lo), hi)]
    return min(peval(d, t) for t in pts)


def plan(snaps: list[tuple[str, tuple[tuple[Poly, str], ...]]], t_lo: int, t_hi: int,
         persistent: tuple[tuple[Poly, int], ...] = ()) -> tuple[Candidate, ...]:
    """The snapshots that can be the allocator peak for some context in ``t_lo..t_hi``.

    A snapshot is dropped when another one contains it (as a multiset of live tensors), or
    when another one is larger by more than its rounding slack over the whole interval.
    ``persistent`` tensors (size, count) are live in every snapshot (e.g. the other layers' KV).
    """
    counted = [(tag, Counter(live)) for tag, live in snaps]  # keys: (size, kind)
    kept: list[tuple[str, Counter]] = []
    for i, (tag, c) in enumerate(counted):
        dominated = False
        for j, (_, d) in enumerate(counted):
            if i != j and len(d) >= len(c) and all(d[k] >= v for k, v in c.items()) and (d != c or j > i):
                dominated = True
                break
        if not dominated:
            kept.append((tag, c))
    for _, c in kept:
        for size, n in persistent:  # allocated by earlier layers or steps: carved
            if size != ZERO and n:
                c[(size, CARVED)] += n

    def slack_of(c: Counter) -> int:
        # The most rounding can add on top of raw bytes, both in allocated blocks (block_bytes)
        # and in the segment floor the solvers use (a large tensor's 2 MiB round-up), so that
        # pruning keeps every candidate that can set either peak.
        return sum(n * (_floor_bytes(k[0]) - k[0] if not (k[1] or k[2]) else _MAX_SLACK) for (k, _), n in c.items())

    def raw_of(c: Counter) -> Poly:
        raw = ZERO
        for (size, kind), n in c.items():
            if kind != SURCHARGE:
                raw = padd(raw, pscale(size, n))
        return raw

    # Drop b when some a is larger over the whole interval by more than the rounding that b's
    # own tensors (those a does not share) could add: then blk(a) >= blk(b) everywhere.
    survivors = []
    for i, (_, b) in enumerate(kept):
        beaten = False
        for j, (_, a) in enumerate(kept):
            if i == j:
                continue
            only_a, only_b = a - b, b - a
            if not only_a:
                continue
            d = padd(raw_of(only_a), pscale(raw_of(only_b), -1))
            if _min_on(d, t_lo, t_hi) >= slack_of(only_b) and (_min_on(d, t_lo, t_hi) > 0 or j < i):
                beaten = True
                break
        if not beaten:
            survivors.append(i)
    common = kept[survivors[0]][1].copy() if survivors else Counter()
    for i in survivors[1:]:
        common &= kept[i][1]
    cands = []
    for i in survivors:
        tag, c = kept[i]
        raw = raw_of(c)
        tot, fr = _by_size(c)
        var = sorted((k, n) for k, n in tot.items() if k[1] or k[2])
        const = sorted((k[0], n) for k, n in tot.items() if not (k[1] or k[2]))
        const_blk = sum(fr[(k, 0, 0)] * block_bytes(k) + (n - fr[(k, 0, 0)]) * round_size(k) for k, n in const)
        # reserved: each large tensor rounds up by < 2 MiB; the shared small and medium
        # segments add < 2 MiB + 20 MiB in all.
        res_slack = sum(c.values()) * (_MAX_SLACK + 512) + 2 * 1024 * 1024 + LARGE_SEGMENT_BYTES
        pools = [0, 0, 0]
        for k, n in const:
            r = (k + 511) & ~511
            if r <= _SMALL:
                pools[0] += n * r
            elif r < _MIN_LARGE:
                pools[1] += n * r
            else:
                pools[2] += n * (-(-r // _ROUND_LARGE) * _ROUND_LARGE)
        cands.append(Candidate(tag, raw, tuple(k for k, _ in var), tuple(n for _, n in var), const_blk,
                               (pools[0], pools[1], pools[2]), slack_of(c), res_slack, slack_of(c - common),
                               tuple(fr[k] for k, _ in var)))
    return tuple(cands)


def _by_size(c: Counter) -> tuple[Counter, Counter]:
    """(tensors per size, how many of them are charged a fresh block) of a (size, kind) multiset."""
    tot: Counter = Counter()
    fr: Counter = Counter()
    for (size, kind), n in c.items():
        if kind != SURCHARGE:
            tot[size] += n
        if kind != CARVED:
            fr[size] += n
    for size in fr:
        fr[size] = min(fr[size], tot[size])
    return tot, fr


def _measure(c: Candidate, t: int) -> tuple[int, int]:
    """(allocator bytes, reserved segment bytes) of a candidate's live tensors at ``t``."""
    blk, small, medium, large = pools(c, t)
    return blk, large + -(-small // _SMALL_SEG) * _SMALL_SEG + -(-medium // _LARGE_SEG) * _LARGE_SEG


def pools(c: Candidate, t: int) -> tuple[int, int, int, int]:
    """(allocator bytes, small-pool bytes, medium-pool bytes, large segment bytes) of a
    candidate's live tensors at ``t``: the small and medium pools before their round-up to whole
    2 / 20 MiB segments (``_measure`` rounds them; the solvers use the unrounded floor, which
    never decreases with t).

    The same rules as ``allocator.block_bytes`` and ``allocator.reserved_for``, fused into one
    pass because this is the innermost loop of sweeps and solvers.
    """
    blk = c.const_blk
    small, medium, large = c.const_pools
    for (c0, c1, c2), n, fr in zip(c.sizes, c.counts, c.fresh):
        v = c0 + t * (c1 + t * c2)
        if v <= 0:
            continue
        r = (v + 511) & ~511
        if r <= _SMALL:
            blk += n * r
            small += n * r
        elif r < _MIN_LARGE:
            blk += n * r
            medium += n * r
        else:
            seg = -(-r // _ROUND_LARGE) * _ROUND_LARGE
            blk += n * r + (fr * (seg - r) if seg - r <= _SMALL else 0)  # only fresh blocks stay unsplit
            large += n * seg
    return blk, small, medium, large


def evaluate(cands: tuple[Candidate, ...], t: int) -> tuple[int, int, int, str]:
    """(raw, allocator, reserved bytes, where) at the allocator peak of a plan at context ``t``."""
    if len(cands) == 1:
        c = cands[0]
        blk, res = _measure(c, t)
        r = c.raw
        return r[0] + t * (r[1] + t * r[2]), blk, res, c.tag
    scored = sorted(((r[0] + t * (r[1] + t * r[2]), i) for i, c in enumerate(cands) for r in (c.raw,)), reverse=True)
    # Tensors live in every candidate round the same way in each, so a candidate can only beat
    # the best so far by its raw lead plus the rounding of its own tensors.
    best = (-1, -1, 0, "")
    for raw, i in scored:
        c = cands[i]
        if raw + c.own_slack <= best[0]:
            break
        blk, res = _measure(c, t)
        if blk > best[1]:
            best = (raw, blk, res, c.tag)
    return best


def upper_bounds(cands: tuple[Candidate, ...], t: int) -> tuple[int, int]:
    """Upper bounds of (allocator bytes, segment bytes) of a plan at ``t``, without evaluating it."""
    blk = res = 0
    for c in cands:
        raw = peval(c.raw, t)
        blk = max(blk, raw + c.slack)
        res = max(res, raw + c.res_slack)
    return blk, res
