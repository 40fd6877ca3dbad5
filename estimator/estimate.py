"""``estimate()``: GPU memory of Hugging Face transformers ``generate()`` for one setting.

What is counted (all ints, bytes):

- weights: every tensor the loaded model holds, exact (``quant.weight_bytes``);
- KV cache: K and V of every layer at the end of generation: ``context`` tokens, the window
  (a prompt of ``context - new_tokens`` tokens, then ``new_tokens`` decode steps);
- activations: transient tensors at the peak, replayed allocation by allocation
  (``activations``), on top of the weights and the KV present at that moment;
- overhead: cuBLAS workspace, allocator block rounding, reserved-but-unallocated segment
  space, and the CUDA context (NVML only).

Three totals, one per counter:

- ``peak_allocated_bytes`` predicts ``torch.cuda.max_memory_allocated()`` after loading;
- ``peak_reserved_bytes`` predicts ``torch.cuda.max_memory_reserved()``;
- ``device_used_bytes`` predicts the process's memory in NVML / nvidia-smi, which is what
  must be free on the GPU. ``total_bytes`` equals it, and equals
  weights + kv_cache + activations + overhead.

"Context" is the window, as vLLM's ``max_model_len`` and llama.cpp's ``n_ctx``: the tokens the KV
cache holds at the end. It is at most the model's ``max_position_embeddings``.

Worked example, Llama 3.2 3B, bf16, SDPA, batch 1, context 8,224 (an 8,192-token prompt + 32 new
tokens), H100: weights 6,425,500,160 B; KV 28 x 2 x 8 x 128 x 2 B x 8,224 = 943,194,112 B; the peak
is in the last layer's MLP during prefill, with about 74 KB of temporaries per prompt token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any

from . import activations as act
from .allocator import block_bytes, pack, reserved_for
from .errors import InvalidSpecError
from .gpus import Gpu, custom_gpu, get_gpu
from .kv import KV_RESIDUAL_TOKENS, kv_layer_linear, resolve_kv_dtype
from .model import ModelSpec, load_model
from .overhead import cublas_workspace_bytes, cuda_context_bytes
from .quant import compute_dtype, get_quant, weight_bytes, weight_tensors
from .report import COUNTERS, MemoryReport
from .units import cdiv, check_int

ATTN_IMPLS = ("sdpa", "eager")
CACHE_KINDS = ("dynamic", "static")
LOGITS_MODES = ("last", "full", "full-fp32")
BNB_COMPUTE_DTYPES = ("bf16", "fp16", "fp32")
# GPUs without FlashAttention in PyTorch SDPA (compute capability below 8.0): with enable_gqa
# SDPA falls back to the math kernel there (transformers#48633).
PRE_SM80_ARCHS = ("sm60", "sm61", "sm70", "sm75")
MAX_CONTEXT = 1 << 24   # 16M tokens: a sanity bound, far beyond any model's window
MAX_BATCH = 1 << 16

def _int(name: str, v: Any, lo: int, hi: int) -> int:
    return check_int(v, name, lo, hi)


def _choice(name: str, v: Any, options: tuple[str, ...]) -> str:
    if v not in options:
        raise InvalidSpecError(f"{name} must be one of {', '.join(options)}: {v!r}")
    return v


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """One inference setting for the transformers engine. See docs/api.md for each field."""

    model: ModelSpec
    quant: str = "bf16"
    context: int = 8192
    batch: int = 1
    kv_dtype: str = "auto"
    attn: str = "sdpa"
    new_tokens: int = 32
    cache: str = "dynamic"
    padding: bool = False
    logits: str = "last"
    prefill_chunk: int | None = None
    bnb_compute_dtype: str = "bf16"
    max_cache_len: int | None = None
    gpu: Gpu | None = None

    def __post_init__(self) -> None:
        get_quant(self.quant)
        _int("context", self.context, 1, MAX_CONTEXT)
        window = self.model.max_position_embeddings
        if self.context > window:
            raise InvalidSpecError(
                f"context must be at most the model's window (max_position_embeddings {window:,}): {self.context!r}")
        _int("batch", self.batch, 1, MAX_BATCH)
        _int("new_tokens", self.new_tokens, 0, MAX_CONTEXT)
        if self.new_tokens > self.context - 1:
            raise InvalidSpecError(
                f"new_tokens must be at most context - 1 ({self.context - 1:,}): the context is the window "
                f"(prompt + new tokens) and the prompt needs a token: {self.new_tokens!r}")
        resolve_kv_dtype(self.kv_dtype, 2)
        _choice("attn", self.attn, ATTN_IMPLS)
        _choice("cache", self.cache, CACHE_KINDS)
        _choice("logits", self.logits, LOGITS_MODES)
        _choice("bnb_compute_dtype", self.bnb_compute_dtype, BNB_COMPUTE_DTYPES)
        if not isinstance(self.padding, bool):
            raise InvalidSpecError(f"padding must be true or false: {self.padding!r}")
        if self.prefill_chunk is not None:
            _int("prefill_chunk", self.prefill_chunk, 1, MAX_CONTEXT)
        if self.max_cache_len is not None:
            _int("max_cache_len", self.max_cache_len, 1, MAX_CONTEXT)
            if self.max_cache_len < self.context:
                raise InvalidSpecError(f"max_cache_len must hold the context ({self.context:,}): {self.max_cache_len!r}")

    @property
    def compute_bytes(self) -> int:
        return get_quant(self.quant).compute_bytes if self.quant != "fp32" else 4

    @property
    def compute_dtype(self) -> str:
        """Activation dtype (``quant.compute_dtype``): fp32 for fp32, fp16 for fp16/GPTQ/AWQ, bf16 otherwise."""
        return compute_dtype(self.quant)

    @property
    def kv_resolved(self) -> str:
        return resolve_kv_dtype(self.kv_dtype, self.compute_bytes)

    @property
    def prompt_tokens(self) -> int:
        """Tokens prefilled before decoding: the context (window) minus the new tokens."""
        return self.context - self.new_tokens

    @property
    def final_tokens(self) -> int:
        """Tokens in the KV cache at the end: the context."""
        return self.context

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.name, "quant": self.quant, "context": self.context, "batch": self.batch,
                "kv_dtype": self.kv_dtype, "attn": self.attn, "new_tokens": self.new_tokens,
                "cache": self.cache, "padding": self.padding, "logits": self.logits,
                "prefill_chunk": self.prefill_chunk, "bnb_compute_dtype": self.bnb_compute_dtype,
                "max_cache_len": self.max_cache_len, "engine": "transformers",
                "gpu": self.gpu.key if self.gpu else None}


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate(MemoryReport):
    """Predicted GPU memory of one transformers setting: the one report type (``MemoryReport``) with
    every byte field an int, the typed ``Settings``, and the breakdown of weights and overhead."""

    settings: Settings
    num_params: int
    weights_bytes: int
    kv_cache_bytes: int
    activations_bytes: int
    overhead_bytes: int
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_used_bytes: int
    phases: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)
    breakdown: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)
    peak_phase: str = "prefill"
    peak_at: str = ""

    @property
    def total_bytes(self) -> int:
        return self.device_used_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "num_params": self.num_params,
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "activations_bytes": self.activations_bytes,
            "overhead_bytes": self.overhead_bytes,
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "device_used_bytes": self.device_used_bytes,
            "total_bytes": self.total_bytes,
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "fits": self.fits,
            "headroom_bytes": self.headroom_bytes,
            "peak_phase": self.peak_phase,
            "peak_at": self.peak_at,
            "phases": {k: dict(v) for k, v in self.phases.items()},
            "breakdown": {k: dict(v) for k, v in self.breakdown.items()},
            "counters": dict(COUNTERS),
        }


# ---------------------------------------------------------------------------------------------
# KV tensor sizes as polynomials in the context T.

def _kv_layer_poly(s: Settings, tokens: act.Poly, tokens_at: int) -> act.Poly:
    """Bytes of one layer's K (or V) tensor holding ``tokens`` tokens (a polynomial in T);
    ``tokens_at`` is its value at the planned context (a quantized cache's residual regime)."""
    per_token, const = kv_layer_linear(s.model, s.batch, s.kv_resolved, s.compute_bytes, tokens_at)
    return act.padd(act.pscale(tokens, per_token), act.P(const))


def _cache_len_poly(s: Settings) -> act.Poly:
    return act.P(s.max_cache_len) if s.max_cache_len else act.P(s.new_tokens, 1)


def _forwards(s: Settings) -> dict[str, tuple[act.Forward, act.Poly, act.Poly, act.Poly]]:
    """The forwards to replay: phase -> (forward, tokens in the other layers' K/V, extra live bytes).

    Returns polys of T, the prompt (``s.context - s.new_tokens``). The regime (kernel choices,
    chunking) is fixed by ``s.prompt_tokens``.
    """
    q_meta = get_quant(s.quant)
    fam = "float" if q_meta.family == "executorch" else q_meta.family
    cbn = {"bf16": 2, "fp16": 2, "fp32": 4}[s.bnb_compute_dtype]
    T, N, b = s.prompt_tokens, s.new_tokens, s.batch
    common = dict(batch=b, cb=s.compute_bytes, quant=s.quant, quant_family=fam, bnb_compute_bytes=cbn,
                  attn=s.attn, padding=s.padding, cache=s.cache,
                  sdpa_math=s.gpu is not None and s.gpu.arch in PRE_SM80_ARCHS,
                  half_to_float=s.compute_dtype == "fp16")
    static = s.cache == "static"
    out = {}
    S_at = (s.max_cache_len or T + N) if static else T
    cache_len = _cache_len_poly(s)
    # Prefill: the whole prompt in one forward, or chunks of prefill_chunk tokens C. With chunks,
    # the peak is in the last chunk (q = T - kC tokens on top of kC cached, k = (T-1)//C), in the
    # full chunk before it (C tokens on top of (k-1)C), or in the first chunk (C tokens, nothing
    # cached): the continuation chunks in between are each smaller than the one before the last.
    # The first chunk differs in kind: it has no 4-D mask (a chunk that does not start at 0 needs
    # one: q_len < kv_len, masking_utils._ignore_causal_mask_sdpa), so on pre-sm80 GPUs it alone
    # runs SDPA's math kernel with its fp32 scores. All three are replayed, so the forwards of a
    # context are a superset of those of any shorter one.
    chunked = s.prefill_chunk is not None and s.prefill_chunk < T
    if chunked:
        C = s.prefill_chunk
        k = (T - 1) // C
        alts = [("prefill", act.P(-k * C, 1), act.P(k * C), b * (T - k * C), act.P(0, 1), T),
                ("prefill:first", act.P(C), act.ZERO, b * C, act.P(C), C)]
        if k >= 2:  # the previous chunk is itself a continuation (k == 1: it is the first chunk)
            alts.append(("prefill:prev", act.P(C), act.P((k - 1) * C), b * C, act.P(k * C), k * C))
    else:
        alts = [("prefill", act.P(0, 1), act.ZERO, b * T, act.P(0, 1), T)]
    for name, q, past, m_max, S_dyn, S_dyn_at in alts:
        S = cache_len if static else S_dyn
        kv_new = _kv_layer_poly(s, S, S_at if static else S_dyn_at)
        if static:
            kv_old = kv_new if past != act.ZERO else act.ZERO
        else:
            kv_old = _kv_layer_poly(s, past, act.peval(past, T)) if past != act.ZERO else act.ZERO
        continuation = past != act.ZERO
        f = act.Forward(q=q, past=past, S=S, logits=s.logits, kv_k=kv_new, kv_v=kv_new, kv_old_k=kv_old,
                        kv_old_v=kv_old, has_mask=s.attn == "eager" or s.padding or continuation,
                        m_max=m_max, **common)
        # Chunked: the caller still holds the whole prompt's input_ids (the replay counts this
        # chunk's), and after the first chunk the previous chunk's fp32 last-token logits.
        extra = act.pscale(act.padd(act.P(0, 1), act.pscale(q, -1)), 8 * b) if chunked else act.ZERO
        if continuation:
            extra = act.padd(extra, act.P(b * s.model.vocab_size * act.FP32))
        out[name] = (f, kv_new, extra)
    if N >= 1:
        # Last decode step: one token per sequence on top of T + N - 1 cached tokens.
        past = act.P(N - 1, 1)
        S = _cache_len_poly(s) if static else act.P(N, 1)
        kv_new = _kv_layer_poly(s, S, S_at if static else T + N)
        kv_old = kv_new if static else _kv_layer_poly(s, past, T + N - 1)
        # generate() keeps the previous step's fp32 next-token logits and the growing input_ids.
        extra = act.padd(act.P(b * s.model.vocab_size * act.FP32), act.pscale(past, b * act.INT64))
        f = act.Forward(q=act.P(1), past=past, S=S, logits="last", kv_k=kv_new, kv_v=kv_new, kv_old_k=kv_old,
                        kv_old_v=kv_old, has_mask=s.attn == "eager" or s.padding or static, m_max=b, **common)
        out["decode"] = (f, kv_new, extra)
    return out


def _thresholds(s: Settings, T: int) -> list[int]:
    """Contexts at which the replay changes shape (kernel choices, chunk count, KV residual)."""
    b, N, C = s.batch, s.new_tokens, s.prefill_chunk
    R = KV_RESIDUAL_TOKENS  # a quantized cache changes shape when its residual fills
    th = [R, R + 1 - N, R - N]
    start = 0  # where the last prefill forward starts
    if C is not None and T > C:
        start = (T - 1) // C * C
        th += [start + 1, start + C + 1, start - C + R, start + R, start - 2 * C + R]
    elif C is not None:
        th.append(C + 1)
    th += [start + cdiv(m, b) for m in act.KERNEL_M_THRESHOLDS]
    return sorted({t for t in th if t > 1})


def _regime(s: Settings, T: int) -> tuple[int, int]:
    """The context interval [lo, hi] around ``T`` in which the replay keeps its shape."""
    lo, hi = 1, MAX_CONTEXT
    for t in _thresholds(s, T):
        if t <= T:
            lo = t
        else:
            hi = t - 1
            break
    return lo, hi


_PLANS: dict[tuple, dict[str, Any]] = {}
# The forwards that belong to the prefill phase besides the last (prefill) one.
PREFILL_ALTS = ("prefill:first", "prefill:prev")


def _plans(s: Settings, T: int) -> tuple[dict[str, Any], int]:
    """Replay plans per phase for prompt length T, cached per setting and prompt interval.

    Returns the plans and the last prompt length of the interval they are valid for.
    """
    lo, hi = _regime(s, T)
    key = (s.model, s.quant, s.batch, s.kv_dtype, s.attn, s.new_tokens, s.cache, s.padding, s.logits,
           s.prefill_chunk, s.bnb_compute_dtype, s.max_cache_len, s.gpu is not None and s.gpu.arch in PRE_SM80_ARCHS,
           lo)
    hit = _PLANS.get(key)
    if hit is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        at = s if s.prompt_tokens == T else replace(s, context=T + s.new_tokens)
        n_other = 2 * (s.model.num_hidden_layers - 1)  # the other layers' finished K and V
        hit = {phase: (act.plan(act.trace_forward(s.model, f), lo, hi, ((kv_poly, n_other), (extra, 1))), kv_poly, extra)
               for phase, (f, kv_poly, extra) in _forwards(at).items()}
        # Where the decode step can never reach the prefill's peak over the whole interval (its
        # live bytes plus every rounding it could get stay below the prefill's raw live bytes),
        # the lean path (sweeps) skips it. estimate() always replays both.
        if "decode" in hit:
            p = hit["prefill"][0][0].raw

            def settled(x: int) -> bool:  # prefill stays ahead of decode for every T in [x, hi]
                return all(act._min_on(act.padd(p, act.pscale(d.raw, -1)), x, hi) >= max(d.slack, d.res_slack)
                           for d in hit["decode"][0])

            a, z = lo, hi + 1  # smallest x with settled(x) (z = hi + 1: never settled)
            if settled(lo):
                z = lo
            else:
                while z - a > 1:
                    mid = (a + z) // 2
                    a, z = (a, mid) if settled(mid) else (mid, z)
            hit["decode_until"] = z - 1  # decode may set a peak only for T <= this
        _PLANS[key] = hit
    return hit, hi


@functools.lru_cache(maxsize=512)
def _weights(spec: ModelSpec, quant: str) -> tuple[int, int, int]:
    """(raw bytes, allocator-charged bytes, reserved segment bytes) of the loaded weights: the
    stored tensors allocated in module order and never freed (``allocator.pack``), as the trace
    replays them. A real checkpoint load may allocate in another order (and quantize through
    temporaries); the order changes only which medium blocks share a 20 MiB segment."""
    blk, res = pack([t.nbytes for t in weight_tensors(spec, quant)])
    return weight_bytes(spec, quant).total_bytes, blk, res


def _phase(s: Settings, T: int, cands, kv_poly, base: tuple[int, int, int]) -> tuple[int, int, int, int, str]:
    """(raw, allocator, reserved, kv cache) bytes at one forward's peak at prompt T, and where it is.

    Reserved is the most any candidate moment needs, not only the allocated peak's: the caching
    allocator keeps every segment it has mapped until ``empty_cache()``, so the segments of each
    moment's live tensors are all still reserved at the end of the forward.
    """
    raw, blk, res, tag = act.evaluate(cands, T)
    if len(cands) > 1:
        res = max(act._measure(c, T)[1] for c in cands)
    blk += base[1]
    return base[0] + raw, blk, max(blk, base[2] + res), 2 * s.model.num_hidden_layers * act.peval(kv_poly, T), tag


def _base(s: Settings) -> tuple[tuple[int, int, int], int, int]:
    """((raw, allocator, reserved) bytes of weights + cuBLAS workspace), workspace, CUDA context."""
    w_raw, w_blk, w_res = _weights(s.model, s.quant)
    arch = s.gpu.arch if s.gpu else "generic"
    ws = cublas_workspace_bytes(arch)
    ctx = cuda_context_bytes(s.gpu.cls if s.gpu else "generic")
    return (w_raw + ws, w_blk + block_bytes(ws), w_res + reserved_for((ws,))), ws, ctx


def _totals(s: Settings, T: int, plans, base, ws: int, ctx: int) -> tuple[int, ...]:
    """Top-level numbers at prompt length T (for sweeps and solvers): skips the decode replay
    when bounds show it cannot set either peak.

    Returns (weights, kv_cache, activations, overhead, peak_allocated, peak_reserved, device_used).
    """
    w_raw = base[0] - ws
    c, kvp, _ = plans["prefill"]
    if len(c) == 1:  # inline _phase for the common single-candidate plan
        c0 = c[0]
        blk, res = act._measure(c0, T)
        r = c0.raw
        raw = base[0] + r[0] + T * (r[1] + T * r[2])
        blk += base[1]
        res = max(blk, base[2] + res)
        kv = 2 * s.model.num_hidden_layers * (kvp[0] + T * (kvp[1] + T * kvp[2]))
    else:
        raw, blk, res, kv, _ = _phase(s, T, c, kvp, base)
    for alt in PREFILL_ALTS:
        if alt in plans:
            c, kvp, _ = plans[alt]
            p_raw, p_blk, p_res, _, _ = _phase(s, T, c, kvp, base)
            if p_blk > blk:
                raw, blk = p_raw, p_blk
            res = max(res, p_res)
    if "decode" in plans:
        c, kvp, _ = plans["decode"]
        kv = 2 * s.model.num_hidden_layers * act.peval(kvp, T)
        if T <= plans["decode_until"]:
            ub_blk, ub_res = act.upper_bounds(c, T)
        if T <= plans["decode_until"] and (base[1] + ub_blk > blk or base[2] + ub_res > res):
            d_raw, d_blk, d_res, kv, _ = _phase(s, T, c, kvp, base)
            if d_blk > blk:
                raw, blk = d_raw, d_blk
            res = max(res, d_res)
    activations = max(0, raw - w_raw - ws - kv)
    device = res + ctx
    return w_raw, kv, activations, device - w_raw - kv - activations, blk, res, device


def _estimate(s: Settings, gpu_memory_bytes: int | None) -> Estimate:
    spec = s.model
    T = s.prompt_tokens
    plans, _ = _plans(s, T)
    base, ws, context_bytes = _base(s)
    w_raw = base[0] - ws
    phases: dict[str, dict[str, int]] = {
        "load": {"weights_bytes": w_raw, "kv_cache_bytes": 0, "activations_bytes": 0,
                 "peak_allocated_bytes": base[1] - block_bytes(ws), "peak_reserved_bytes": base[2] - reserved_for((ws,)),
                 "device_used_bytes": base[2] - reserved_for((ws,)) + context_bytes}}
    best: tuple[str, int, int, str] | None = None
    for phase, plan in plans.items():
        if phase == "decode_until":
            continue
        cands, kv_poly, _ = plan
        raw, blk, res, kv_total, tag = _phase(s, T, cands, kv_poly, base)
        if phase in PREFILL_ALTS:  # an earlier chunk: part of the prefill phase
            p = phases["prefill"]
            p["peak_reserved_bytes"] = max(p["peak_reserved_bytes"], res)
            p["device_used_bytes"] = p["peak_reserved_bytes"] + context_bytes
            if blk > p["peak_allocated_bytes"]:
                p["peak_allocated_bytes"] = blk
                p["activations_bytes"] = max(0, raw - w_raw - ws - p["kv_cache_bytes"])
            if best is not None and blk > best[1]:
                best = ("prefill", blk, raw, f"{phase.split(':')[1]} chunk: {tag}")
            continue
        phases[phase] = {
            "weights_bytes": w_raw, "kv_cache_bytes": kv_total,
            "activations_bytes": max(0, raw - w_raw - ws - kv_total),
            "peak_allocated_bytes": blk, "peak_reserved_bytes": res,
            "device_used_bytes": res + context_bytes,
        }
        if best is None or blk > best[1]:
            best = (phase, blk, raw, tag)
    assert best is not None
    peak_phase, peak_alloc, peak_raw, peak_tag = best
    peak_res = max(p["peak_reserved_bytes"] for p in phases.values())
    device_used = peak_res + context_bytes
    kv_end = phases["decode" if "decode" in phases else "prefill"]["kv_cache_bytes"]
    activations = max(0, peak_raw - w_raw - ws - kv_end)
    rounding = peak_alloc - (w_raw + ws + kv_end + activations)
    overhead = {"cublas_workspace": ws, "allocator_rounding": rounding,
                "reserved_slack": peak_res - peak_alloc, "cuda_context": context_bytes, "non_torch": 0}
    wb = weight_bytes(spec, s.quant)
    breakdown = {"weights": {"parameters": wb.parameters_bytes, "quant_state": wb.quant_state_bytes,
                             "buffers": wb.buffers_bytes},
                 "overhead": overhead}
    est = Estimate(settings=s, num_params=spec.num_params, weights_bytes=w_raw, kv_cache_bytes=kv_end,
                   activations_bytes=activations, overhead_bytes=sum(overhead.values()),
                   peak_allocated_bytes=peak_alloc, peak_reserved_bytes=peak_res, device_used_bytes=device_used,
                   gpu_memory_bytes=gpu_memory_bytes, phases=phases, breakdown=breakdown,
                   peak_phase=peak_phase, peak_at=peak_tag)
    if est.weights_bytes + est.kv_cache_bytes + est.activations_bytes + est.overhead_bytes != est.total_bytes:
        raise AssertionError("estimate components do not add up to the total")
    return est


def make_settings(model: Any = "llama-3.2-3b", *, gpu: Any = None, **kw: Any) -> Settings:
    """Settings from loose inputs: a model reference (preset, path, dict, spec) and a GPU key."""
    return Settings(model=load_model(model), gpu=get_gpu(gpu) if gpu is not None else None, **kw)


def estimate(model: Any = "llama-3.2-3b", quant: str = "bf16", context: int = 8192, batch: int = 1, *,
             gpu: Any = None, gpu_memory_bytes: int | None = None, **kw: Any) -> Estimate:
    """Estimate GPU memory for one setting (see module docstring and docs/api.md)."""
    if isinstance(model, Settings):
        s = model
    else:
        s = make_settings(model, gpu=gpu, quant=quant, context=context, batch=batch, **kw)
    return estimate_settings(s, gpu_memory_bytes)


def estimate_settings(s: Settings, gpu_memory_bytes: int | None = None) -> Estimate:
    if gpu_memory_bytes is not None:
        _int("gpu_memory_bytes", gpu_memory_bytes, 1, 1 << 50)
        if s.gpu is None:
            s = replace(s, gpu=custom_gpu(gpu_memory_bytes))
    mem = gpu_memory_bytes if gpu_memory_bytes is not None else (s.gpu.memory_bytes if s.gpu else None)
    return _estimate(s, mem)
