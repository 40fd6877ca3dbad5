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

The path, top down: ``estimate()`` reports what ``Planner.totals`` counts at the setting's prompt
length; the solvers and sweeps (``solve``) ask the same planner at other prompt lengths. It adds
the resident bytes (``Resident``: weights, cuBLAS workspace, CUDA context) to each forward's peak,
evaluated from the replay plans of the prompt interval (``plans_at``: the forwards of
``_forwards``, replayed by ``activations.trace_forward`` and kept by ``activations.plan``); the
allocator's rounding is ``allocator.py``'s.

Worked example, Llama 3.2 3B, bf16, SDPA, batch 1, context 8,224 (an 8,192-token prompt + 32 new
tokens), H100: weights 6,425,500,160 B; KV 28 x 2 x 8 x 128 x 2 B x 8,224 = 943,194,112 B; the peak
is in the last layer's MLP during prefill, with about 74 KB of temporaries per prompt token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import activations as act
from .allocator import block_bytes, pack, reserved_for
from .errors import InvalidSpecError
from .gpus import Gpu, custom_gpu, get_gpu
from .kv import KV_RESIDUAL_TOKENS, kv_layer_linear, resolve_kv_dtype
from .model import ModelSpec, load_model
from .overhead import cublas_workspace_bytes, cuda_context_bytes, cuda_context_range_bytes, fragmentation_high_bytes
from .quant import compute_dtype, get_quant, weight_bytes, weight_tensors
from .report import COUNTERS, MemoryReport, totals_fields
from .units import cdiv, check_int

if TYPE_CHECKING:
    from .speed import Speed

ATTN_IMPLS = ("sdpa", "eager")
CACHE_KINDS = ("dynamic", "static")
LOGITS_MODES = ("last", "full", "full-fp32")
BNB_COMPUTE_DTYPES = ("bf16", "fp16", "fp32")
# GPUs without FlashAttention in PyTorch SDPA (compute capability below 8.0): with enable_gqa
# SDPA falls back to the math kernel there (transformers#48633).
PRE_SM80_ARCHS = ("sm60", "sm61", "sm70", "sm75")
MAX_CONTEXT = 1 << 24  # 16M tokens: a sanity bound, far beyond any model's window
MAX_BATCH = 1 << 16


def _int(name: str, v: Any, lo: int, hi: int) -> int:
    return check_int(v, name, lo, hi)


def _choice(name: str, v: Any, options: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in options:
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
                f"context must be at most the model's window (max_position_embeddings {window:,}): {self.context!r}"
            )
        _int("batch", self.batch, 1, MAX_BATCH)
        _int("new_tokens", self.new_tokens, 0, MAX_CONTEXT)
        if self.new_tokens > self.context - 1:
            raise InvalidSpecError(
                f"new_tokens must be at most context - 1 ({self.context - 1:,}): the context is the window "
                f"(prompt + new tokens) and the prompt needs a token: {self.new_tokens!r}"
            )
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
                raise InvalidSpecError(
                    f"max_cache_len must hold the context ({self.context:,}): {self.max_cache_len!r}"
                )

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
        return {
            "model": self.model.name,
            "quant": self.quant,
            "context": self.context,
            "batch": self.batch,
            "kv_dtype": self.kv_dtype,
            "attn": self.attn,
            "new_tokens": self.new_tokens,
            "cache": self.cache,
            "padding": self.padding,
            "logits": self.logits,
            "prefill_chunk": self.prefill_chunk,
            "bnb_compute_dtype": self.bnb_compute_dtype,
            "max_cache_len": self.max_cache_len,
            "engine": "transformers",
            "gpu": self.gpu.key if self.gpu else None,
        }


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
    # The range where derivation stops (``overhead``: allocator fragmentation on reserved, the CUDA
    # context); peak allocated and the exact terms have none (low = high = the point).
    peak_reserved_low_bytes: int
    peak_reserved_high_bytes: int
    device_used_low_bytes: int
    device_used_high_bytes: int
    phases: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)
    breakdown: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)
    peak_phase: str = "prefill"
    peak_at: str = ""

    @property
    def total_bytes(self) -> int:
        return self.device_used_bytes

    @property
    def speed(self) -> Speed | None:
        """How fast this setting runs on its GPU (``estimator.speed.speed``, transformers engine):
        decode tok/s per sequence and over the batch, prefill tok/s and TTFT, each low / point / high.
        Computed on each access (microseconds after the first); None without a catalog GPU that
        has a memory bandwidth."""
        s = self.settings
        if s.gpu is None or not s.gpu.bandwidth_bytes_per_s:
            return None
        from .speed import speed

        return speed(
            s.model,
            s.quant,
            s.gpu,
            context=s.context,
            new_tokens=s.new_tokens,
            batch=s.batch,
            kv_dtype=s.kv_dtype,
            attn=s.attn,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "num_params": self.num_params,
            **totals_fields(self),
            "peak_phase": self.peak_phase,
            "peak_at": self.peak_at,
            "phases": {k: dict(v) for k, v in self.phases.items()},
            "breakdown": {k: dict(v) for k, v in self.breakdown.items()},
            "counters": dict(COUNTERS),
        }


# ---------------------------------------------------------------------------------------------
# The entry points: settings from loose inputs, and one setting's report.


def make_settings(model: Any = "llama-3.2-3b", *, gpu: Any = None, **kw: Any) -> Settings:
    """Settings from loose inputs: a model reference (preset, path, dict, spec) and a GPU key."""
    return Settings(model=load_model(model), gpu=get_gpu(gpu) if gpu is not None else None, **kw)


def estimate(
    model: Any = "llama-3.2-3b",
    quant: str = "bf16",
    context: int = 8192,
    batch: int = 1,
    *,
    gpu: Any = None,
    gpu_memory_bytes: int | None = None,
    **kw: Any,
) -> Estimate:
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


def _estimate(s: Settings, gpu_memory_bytes: int | None) -> Estimate:
    """The report of one setting: ``Planner.totals`` with every forward replayed, per phase
    (load, prefill, decode), with the weights and the overhead broken down."""
    planner = Planner(s)
    r = planner.resident
    tot = planner.totals(s.prompt_tokens, every_phase=True)
    phases: dict[str, dict[str, int]] = {
        "load": {
            "weights_bytes": r.weights,
            "kv_cache_bytes": 0,
            "activations_bytes": 0,
            "peak_allocated_bytes": r.weights_allocated,
            "peak_reserved_bytes": r.weights_reserved,
            "device_used_bytes": r.weights_reserved + r.cuda_context_bytes,
        }
    }
    for phase, peak in (("prefill", tot.prefill), ("decode", tot.decode)):
        if peak is not None:
            phases[phase] = {
                "weights_bytes": r.weights,
                "kv_cache_bytes": peak.kv_cache_bytes,
                "activations_bytes": max(0, peak.raw - r.raw - peak.kv_cache_bytes),
                "peak_allocated_bytes": peak.allocated,
                "peak_reserved_bytes": peak.reserved,
                "device_used_bytes": peak.reserved + r.cuda_context_bytes,
            }
    rounding = tot.peak_allocated_bytes - (r.raw + tot.kv_cache_bytes + tot.activations_bytes)
    overhead = {
        "cublas_workspace": r.workspace,
        "allocator_rounding": rounding,
        "reserved_slack": tot.peak_reserved_bytes - tot.peak_allocated_bytes,
        "cuda_context": r.cuda_context_bytes,
        "non_torch": 0,
    }
    wb = weight_bytes(s.model, s.quant)
    breakdown = {
        "weights": {
            "parameters": wb.parameters_bytes,
            "quant_state": wb.quant_state_bytes,
            "buffers": wb.buffers_bytes,
        },
        "overhead": overhead,
    }
    # The range: reserved from the estimate (no fragmentation) to the most the trace's allocator
    # replay put above it; device used adds the CUDA context's range for the GPU class.
    ctx_low, ctx_high = cuda_context_range_bytes(s.gpu.cls if s.gpu else "generic")
    reserved_high = tot.peak_reserved_bytes + fragmentation_high_bytes(s.attn, tot.peak_reserved_bytes, r.weights)
    est = Estimate(
        settings=s,
        num_params=s.model.num_params,
        weights_bytes=r.weights,
        kv_cache_bytes=tot.kv_cache_bytes,
        activations_bytes=tot.activations_bytes,
        overhead_bytes=sum(overhead.values()),
        peak_allocated_bytes=tot.peak_allocated_bytes,
        peak_reserved_bytes=tot.peak_reserved_bytes,
        device_used_bytes=tot.device_used_bytes,
        peak_reserved_low_bytes=tot.peak_reserved_bytes,
        peak_reserved_high_bytes=reserved_high,
        device_used_low_bytes=tot.peak_reserved_bytes + ctx_low,
        device_used_high_bytes=reserved_high + ctx_high,
        gpu_memory_bytes=gpu_memory_bytes,
        phases=phases,
        breakdown=breakdown,
        peak_phase=tot.peak_phase,
        peak_at=tot.peak_at,
    )
    if est.weights_bytes + est.kv_cache_bytes + est.activations_bytes + est.overhead_bytes != est.total_bytes:
        raise AssertionError("estimate components do not add up to the total")
    return est


# ---------------------------------------------------------------------------------------------
# The one path to the numbers: a setting at any prompt length (estimate() and the solvers).


# Peak and Totals are made once per evaluation, the innermost step of sweeps and solvers, so they
# are not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, which
# made a sweep some 20% slower. Nothing changes them after they are made.
@dataclass(slots=True)
class Peak:
    """One phase's allocator peak at a prompt length, the resident bytes (``Resident``) included."""

    raw: int  # live tensor bytes, unrounded
    allocated: int  # as the caching allocator charges them (memory_allocated)
    reserved: int  # the segments mapped by the end of the phase (memory_reserved)
    kv_cache_bytes: int  # the KV cache after the phase's (last) forward
    at: str  # where in the forward


@dataclass(slots=True)
class Totals:
    """The top-level numbers of a setting at one prompt length (the seven byte fields of
    ``Estimate``), the phase and place of the allocator peak, and the phases' peaks."""

    weights_bytes: int
    kv_cache_bytes: int  # at the end: after the decode step if there is one
    activations_bytes: int  # at the allocator peak, beyond weights, workspace and KV cache
    overhead_bytes: int  # device_used minus the three above
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_used_bytes: int  # peak_reserved_bytes + the CUDA context
    peak_phase: str
    peak_at: str
    prefill: Peak
    decode: Peak | None  # None: no new tokens, or a decode step not replayed (``Planner.totals``)

    def to_dict(self) -> dict[str, int]:
        """The seven byte fields, in this order (a sweep's row)."""
        return {
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "activations_bytes": self.activations_bytes,
            "overhead_bytes": self.overhead_bytes,
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "device_used_bytes": self.device_used_bytes,
        }


class Planner:
    """One setting at any prompt length (context minus new tokens; every other field is the
    setting's): the resident bytes, the replay plans, and ``totals``, the numbers that
    ``estimate()``, the solvers and the sweeps all take.

    The plans come from ``plans_at`` (cached per prompt interval); the planner keeps the interval
    it used last, so a caller stepping through prompt lengths looks each interval up once.
    """

    __slots__ = ("settings", "resident", "_kv_tensors", "_plans")

    def __init__(self, s: Settings) -> None:
        self.settings = s
        self.resident = resident(s)
        self._kv_tensors = 2 * s.model.num_hidden_layers  # a K and a V per layer
        self._plans: Plans | None = None

    def plans(self, prompt: int) -> Plans:
        """The replay plans that hold at prompt length ``prompt`` (``plans_at``)."""
        p = self._plans
        if p is None or not p.lo <= prompt <= p.hi:
            p = self._plans = plans_at(self.settings, prompt)
        return p

    def totals(self, prompt: int, *, every_phase: bool = False) -> Totals:
        """The top-level numbers at prompt length ``prompt``.

        The decode step is replayed only where it can set either peak (``Plans.decode_until``,
        then ``activations.upper_bounds`` against the prefill's peak); elsewhere only its KV
        cache is counted, which changes no number. ``every_phase`` replays it anyway, for a
        report of each phase (``Totals.decode``).
        """
        plans = self.plans(prompt)
        r = self.resident
        prefill = self.peak(plans.prefill, prompt)
        if plans.chunks:
            prefill = self._with_chunks(prefill, plans.chunks, prompt)
        peak, phase, reserved, kv = prefill, "prefill", prefill.reserved, prefill.kv_cache_bytes
        decode = None
        d = plans.decode
        if d is not None:
            if every_phase or prompt <= plans.decode_until and self._may_peak(d, prompt, prefill):
                decode = self.peak(d, prompt)
                if decode.allocated > peak.allocated:
                    peak, phase = decode, "decode"
                reserved = max(reserved, decode.reserved)
                kv = decode.kv_cache_bytes
            else:
                kv = self._kv_tensors * act.peval(d.kv, prompt)
        activations = max(0, peak.raw - r.raw - kv)
        device = reserved + r.cuda_context_bytes
        # in field order (weights, kv_cache, activations, overhead, allocated, reserved, device used)
        return Totals(
            r.weights,
            kv,
            activations,
            device - r.weights - kv - activations,
            peak.allocated,
            reserved,
            device,
            phase,
            peak.at,
            prefill,
            decode,
        )

    def peak(self, p: PhasePlan, prompt: int) -> Peak:
        """One forward's peak at prompt length ``prompt``, on top of the resident bytes.

        Reserved is at least allocated, and at least the resident segments plus the most any
        moment of the forward needs (``activations.evaluate``)."""
        raw, blk, res, at = act.evaluate(p.cands, prompt)
        r = self.resident
        blk += r.allocated
        return Peak(r.raw + raw, blk, max(blk, r.reserved + res), self._kv_tensors * act.peval(p.kv, prompt), at)

    def _with_chunks(self, p: Peak, chunks: tuple[PhasePlan, ...], prompt: int) -> Peak:
        """The prefill's peak ``p`` (of its last forward) with its earlier chunks: a chunk's where
        that allocates more (named after the chunk); reserved the most of any; the KV cache the last's."""
        for chunk in chunks:
            c = self.peak(chunk, prompt)
            if c.allocated > p.allocated:
                p = Peak(
                    raw=c.raw,
                    allocated=c.allocated,
                    reserved=max(p.reserved, c.reserved),
                    kv_cache_bytes=p.kv_cache_bytes,
                    at=f"{chunk.name}: {c.at}",
                )
            elif c.reserved > p.reserved:
                p = replace(p, reserved=c.reserved)
        return p

    def _may_peak(self, decode: PhasePlan, prompt: int, prefill: Peak) -> bool:
        """Whether the decode step's bounds reach above the prefill's allocated or reserved peak."""
        ub_blk, ub_res = act.upper_bounds(decode.cands, prompt)
        r = self.resident
        return r.allocated + ub_blk > prefill.allocated or r.reserved + ub_res > prefill.reserved


# ---------------------------------------------------------------------------------------------
# Resident bytes: what every phase holds besides its forward.


@dataclass(frozen=True, slots=True)
class Resident:
    """Bytes held from the load on: the loaded weights, the cuBLAS workspace (allocated at the
    first GEMM and never freed) and, outside torch, the CUDA context."""

    weights: int  # raw bytes of the loaded weights
    weights_allocated: int  # as the caching allocator charges them
    weights_reserved: int  # their segments
    workspace: int  # the cuBLAS workspace
    raw: int  # weights + workspace
    allocated: int  # weights + workspace as the allocator charges them
    reserved: int  # their segments
    cuda_context_bytes: int  # seen by NVML only


def resident(s: Settings) -> Resident:
    """The resident bytes of a setting (its model, quantization and GPU)."""
    gpu = s.gpu
    return _resident(s.model, s.quant, gpu.arch if gpu else "generic", gpu.cls if gpu else "generic")


@functools.lru_cache(maxsize=512)
def _resident(spec: ModelSpec, quant: str, arch: str, gpu_class: str) -> Resident:
    w_raw, w_blk, w_res = _weights(spec, quant)
    ws = cublas_workspace_bytes(arch)
    return Resident(
        weights=w_raw,
        weights_allocated=w_blk,
        weights_reserved=w_res,
        workspace=ws,
        raw=w_raw + ws,
        allocated=w_blk + block_bytes(ws),
        reserved=w_res + reserved_for((ws,)),
        cuda_context_bytes=cuda_context_bytes(gpu_class),
    )


@functools.lru_cache(maxsize=512)
def _weights(spec: ModelSpec, quant: str) -> tuple[int, int, int]:
    """(raw bytes, allocator-charged bytes, reserved segment bytes) of the loaded weights: the
    stored tensors allocated in module order and never freed (``allocator.pack``), as the trace
    replays them. A real checkpoint load may allocate in another order (and quantize through
    temporaries); the order changes only which medium blocks share a 20 MiB segment."""
    blk, res = pack([t.nbytes for t in weight_tensors(spec, quant)])
    return weight_bytes(spec, quant).total_bytes, blk, res


# ---------------------------------------------------------------------------------------------
# Replay plans: the forwards of a setting, planned once per interval of prompt lengths.


@dataclass(frozen=True, slots=True)
class PhasePlan:
    """The plan of one forward: the candidates for its allocator peak (``activations.plan``) and
    the bytes of one layer's K (or V) after it, a polynomial in the prompt length."""

    name: str
    cands: tuple[act.Candidate, ...]
    kv: act.Poly


@dataclass(frozen=True, slots=True)
class Plans:
    """The plans of a setting's forwards for the prompt lengths lo..hi (the replay keeps its
    shape there: ``_regime``)."""

    lo: int
    hi: int
    prefill: PhasePlan  # the prefill's last (or only) forward
    chunks: tuple[PhasePlan, ...]  # earlier prefill chunks that can hold the prefill's peak
    decode: PhasePlan | None  # the last decode step; None without new tokens
    decode_until: int  # the decode step may set a peak only for prompts up to this

    @property
    def phases(self) -> tuple[PhasePlan, ...]:
        """Every forward's plan: the prefill, its earlier chunks, the decode step."""
        return (self.prefill, *self.chunks) + ((self.decode,) if self.decode is not None else ())


_PLANS: dict[tuple[object, ...], Plans] = {}


def plans_at(s: Settings, prompt: int) -> Plans:
    """The replay plans of ``s`` at prompt length ``prompt``: cached per setting (less its
    context) and prompt interval, so they hold for ``prompt`` in ``lo..hi``."""
    lo, hi = _regime(s, prompt)
    key = (
        s.model,
        s.quant,
        s.batch,
        s.kv_dtype,
        s.attn,
        s.new_tokens,
        s.cache,
        s.padding,
        s.logits,
        s.prefill_chunk,
        s.bnb_compute_dtype,
        s.max_cache_len,
        s.gpu is not None and s.gpu.arch in PRE_SM80_ARCHS,
        lo,
    )
    hit = _PLANS.get(key)
    if hit is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        at = s if s.prompt_tokens == prompt else replace(s, context=prompt + s.new_tokens)
        n_other = 2 * (s.model.num_hidden_layers - 1)  # the other layers' finished K and V
        planned = [
            PhasePlan(
                p.name, act.plan(act.trace_forward(s.model, p.forward), lo, hi, ((p.kv, n_other), (p.extra, 1))), p.kv
            )
            for p in _forwards(at)
        ]
        decode = planned.pop() if planned[-1].name == "decode" else None
        prefill = planned[0]
        # Where the decode step can never reach the prefill's peak, the lean path skips it.
        until = _decode_until(prefill, decode, lo, hi) if decode is not None else lo - 1
        hit = _PLANS[key] = Plans(
            lo=lo, hi=hi, prefill=prefill, chunks=tuple(planned[1:]), decode=decode, decode_until=until
        )
    return hit


def _decode_until(prefill: PhasePlan, decode: PhasePlan, lo: int, hi: int) -> int:
    """The last prompt length in lo..hi at which the decode step may set a peak (lo - 1: none).

    From the next one on, the decode step can never reach the prefill's peak over the rest of the
    interval: its live bytes plus every rounding it could get stay below the prefill's raw live
    bytes, so ``Planner.totals`` skips it. estimate() always replays both."""
    p = prefill.cands[0].raw

    def settled(x: int) -> bool:  # prefill stays ahead of decode for every T in [x, hi]
        return all(
            act.min_on(act.padd(p, act.pscale(d.raw, -1)), x, hi) >= max(d.slack, d.res_slack) for d in decode.cands
        )

    if settled(lo):
        return lo - 1
    a, z = lo, hi + 1  # smallest x with settled(x) (z = hi + 1: never settled)
    while z - a > 1:
        mid = (a + z) // 2
        a, z = (a, mid) if settled(mid) else (mid, z)
    return z - 1


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


# ---------------------------------------------------------------------------------------------
# The forwards to replay, with KV tensor sizes as polynomials in the prompt length T.


@dataclass(frozen=True, slots=True)
class _Pass:
    """One forward to replay, named after its phase (or prefill chunk)."""

    name: str
    forward: act.Forward
    kv: act.Poly  # bytes of one layer's K (or V) after it; the other layers' finished K/V are as large
    extra: act.Poly  # live bytes the caller holds besides the forward's own tensors


def _forwards(s: Settings) -> list[_Pass]:
    """The forwards to replay: the prefill's last forward, its earlier chunks that can hold the
    peak ("first chunk", "prev chunk"), then the last decode step.

    Sizes are polys of T, the prompt (``s.context - s.new_tokens``). The regime (kernel choices,
    chunking) is fixed by ``s.prompt_tokens``.
    """
    q_meta = get_quant(s.quant)
    fam = "float" if q_meta.family == "executorch" else q_meta.family
    cbn = {"bf16": 2, "fp16": 2, "fp32": 4}[s.bnb_compute_dtype]
    T, N, b = s.prompt_tokens, s.new_tokens, s.batch
    common: dict[str, Any] = dict(
        batch=b,
        cb=s.compute_bytes,
        quant=s.quant,
        quant_family=fam,
        bnb_compute_bytes=cbn,
        attn=s.attn,
        padding=s.padding,
        cache=s.cache,
        sdpa_math=s.gpu is not None and s.gpu.arch in PRE_SM80_ARCHS,
        half_to_float=s.compute_dtype == "fp16",
    )
    static = s.cache == "static"
    S_at = (s.max_cache_len or T + N) if static else T
    cache_len = _cache_len_poly(s)
    C = s.prefill_chunk or T  # without chunks: one chunk of the whole prompt
    chunked = C < T

    def prefill(name: str, q: act.Poly, past: act.Poly, m_max: int, S_dyn: act.Poly, S_dyn_at: int) -> _Pass:
        """A prefill forward of ``q`` tokens per sequence on top of ``past`` cached ones (``m_max``
        tokens in all at the planned context); a dynamic cache then holds ``S_dyn`` tokens
        (``S_dyn_at`` at the planned context)."""
        S = cache_len if static else S_dyn
        kv_new = _kv_layer_poly(s, S, S_at if static else S_dyn_at)
        if static:
            kv_old = kv_new if past != act.ZERO else act.ZERO
        else:
            kv_old = _kv_layer_poly(s, past, act.peval(past, T)) if past != act.ZERO else act.ZERO
        continuation = past != act.ZERO
        f = act.Forward(
            q=q,
            past=past,
            S=S,
            logits=s.logits,
            kv_k=kv_new,
            kv_v=kv_new,
            kv_old_k=kv_old,
            kv_old_v=kv_old,
            has_mask=s.attn == "eager" or s.padding or continuation,
            m_max=m_max,
            **common,
        )
        # Chunked: the caller still holds the whole prompt's input_ids (the replay counts this
        # chunk's), and after the first chunk the previous chunk's fp32 last-token logits.
        extra = act.pscale(act.padd(act.P(0, 1), act.pscale(q, -1)), 8 * b) if chunked else act.ZERO
        if continuation:
            extra = act.padd(extra, act.P(b * s.model.vocab_size * act.FP32))
        return _Pass(name, f, kv_new, extra)

    # Prefill: the whole prompt in one forward, or chunks of prefill_chunk tokens C. With chunks,
    # the peak is in the last chunk (q = T - kC tokens on top of kC cached, k = (T-1)//C), in the
    # full chunk before it (C tokens on top of (k-1)C), or in the first chunk (C tokens, nothing
    # cached): the continuation chunks in between are each smaller than the one before the last.
    # The first chunk differs in kind: it has no 4-D mask (a chunk that does not start at 0 needs
    # one: q_len < kv_len, masking_utils._ignore_causal_mask_sdpa), so on pre-sm80 GPUs it alone
    # runs SDPA's math kernel with its fp32 scores. All three are replayed, so the forwards of a
    # context are a superset of those of any shorter one.
    if chunked:
        k = (T - 1) // C
        passes = [
            prefill("prefill", act.P(-k * C, 1), act.P(k * C), b * (T - k * C), act.P(0, 1), T),
            prefill("first chunk", act.P(C), act.ZERO, b * C, act.P(C), C),
        ]
        if k >= 2:  # the previous chunk is itself a continuation (k == 1: it is the first chunk)
            passes.append(prefill("prev chunk", act.P(C), act.P((k - 1) * C), b * C, act.P(k * C), k * C))
    else:
        passes = [prefill("prefill", act.P(0, 1), act.ZERO, b * T, act.P(0, 1), T)]
    if N >= 1:
        # Last decode step: one token per sequence on top of T + N - 1 cached tokens.
        past = act.P(N - 1, 1)
        S = _cache_len_poly(s) if static else act.P(N, 1)
        kv_new = _kv_layer_poly(s, S, S_at if static else T + N)
        kv_old = kv_new if static else _kv_layer_poly(s, past, T + N - 1)
        # generate() keeps the previous step's fp32 next-token logits and the growing input_ids.
        extra = act.padd(act.P(b * s.model.vocab_size * act.FP32), act.pscale(past, b * act.INT64))
        f = act.Forward(
            q=act.P(1),
            past=past,
            S=S,
            logits="last",
            kv_k=kv_new,
            kv_v=kv_new,
            kv_old_k=kv_old,
            kv_old_v=kv_old,
            has_mask=s.attn == "eager" or s.padding or static,
            m_max=b,
            **common,
        )
        passes.append(_Pass("decode", f, kv_new, extra))
    return passes


def _kv_layer_poly(s: Settings, tokens: act.Poly, tokens_at: int) -> act.Poly:
    """Bytes of one layer's K (or V) tensor holding ``tokens`` tokens (a polynomial in T);
    ``tokens_at`` is its value at the planned context (a quantized cache's residual regime)."""
    per_token, const = kv_layer_linear(s.model, s.batch, s.kv_resolved, s.compute_bytes, tokens_at)
    return act.padd(act.pscale(tokens, per_token), act.P(const))


def _cache_len_poly(s: Settings) -> act.Poly:
    return act.P(s.max_cache_len) if s.max_cache_len else act.P(s.new_tokens, 1)
