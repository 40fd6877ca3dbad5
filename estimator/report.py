"""The one memory report: what an estimate predicts and what a measurement records, in one type.

A ``MemoryReport`` holds the byte fields of one setting (int bytes, or None for a counter the
source does not have), per-phase values, the settings, and where the numbers come from
(``source``: "estimate" or "measured"; ``engine``). The transformers estimate (``Estimate``, a
subclass with its breakdown), every engine (vLLM, llama.cpp), the runtime's measurements (read back
with ``MemoryReport.from_dict``) and the app all speak it, so comparing an estimate with a
measurement is a subtraction: ``compare(estimate, measured, counters)``.

The counters (which number each byte field predicts) are defined here once: ``COUNTERS``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# What each total predicts, and on which counter it can be checked.
COUNTERS = {
    "peak_allocated_bytes": "torch.cuda.max_memory_allocated() after loading (peak of allocated blocks)",
    "peak_reserved_bytes": "torch.cuda.max_memory_reserved() (segments the caching allocator holds), as the segments the "
    "peak's live tensors need: fragmentation left by earlier allocations is not modelled "
    "(the trace's allocator replay is higher by a median 4.6%, up to 27% with eager attention)",
    "device_used_bytes": "NVML / nvidia-smi memory used by the process (CUDA context + reserved + non-torch); "
    "reserved's fragmentation caveat applies",
    "total_bytes": "equals device_used_bytes: what must be free on the GPU",
}
# The byte fields of a phase (load, prefill, decode), in estimates and measurements alike.
PHASE_FIELDS = (
    "weights_bytes",
    "kv_cache_bytes",
    "activations_bytes",
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "device_used_bytes",
)
# The byte fields of a report: the phase fields plus the overhead (estimates split it out).
BYTE_FIELDS = PHASE_FIELDS[:3] + ("overhead_bytes",) + PHASE_FIELDS[3:]
# The range of the totals no formula derives alone (the CUDA context, allocator fragmentation):
# low <= point <= high. Peak allocated has no range: every term of it is derived (low = high =
# the point), so it has no range fields. None: the source states no range.
RANGE_FIELDS = (
    "peak_reserved_low_bytes",
    "peak_reserved_high_bytes",
    "device_used_low_bytes",
    "device_used_high_bytes",
)
VERDICTS = ("fits", "may fit", "does not fit")
PHASES = ("load", "prefill", "decode")
SOURCES = ("estimate", "measured")
MAX_BYTES = 1 << 60  # 1 EiB: a larger "byte count" in a record is not one


def _byte_value(v: Any) -> int | None:
    """An int byte count, or None when absent or not one (bool, float, text, negative, over 1 EiB)."""
    return v if type(v) is int and 0 <= v <= MAX_BYTES else None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryReport:
    """GPU memory of one setting, estimated or measured. ``*_bytes`` fields are int bytes or None."""

    settings: Any
    engine: str = "transformers"
    source: str = "estimate"
    status: str = "ok"  # measurements: "ok", "oom" or "error"
    weights_bytes: int | None = None
    kv_cache_bytes: int | None = None
    activations_bytes: int | None = None
    overhead_bytes: int | None = None
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    device_used_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    peak_reserved_low_bytes: int | None = None
    peak_reserved_high_bytes: int | None = None
    device_used_low_bytes: int | None = None
    device_used_high_bytes: int | None = None
    phases: Mapping[str, Mapping[str, int | None]] = field(default_factory=dict, compare=False)
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)  # engine- or device-specific

    @property
    def total_bytes(self) -> int | None:
        """What must be free on the GPU: the device-used counter."""
        return self.device_used_bytes

    @property
    def fits(self) -> bool | None:
        if self.gpu_memory_bytes is None or self.device_used_bytes is None:
            return None
        return self.device_used_bytes <= self.gpu_memory_bytes

    @property
    def headroom_bytes(self) -> int | None:
        if self.gpu_memory_bytes is None or self.device_used_bytes is None:
            return None
        return self.gpu_memory_bytes - self.device_used_bytes

    def value(self, counter: str) -> int | None:
        """A byte field, or a detail of that name. ``peak_live_bytes`` is the unrounded live-tensor
        peak: a cpu/trace measurement records it; an estimate's is weights + KV cache + activations
        (its peak before allocator rounding and the cuBLAS workspace)."""
        if counter in BYTE_FIELDS:
            return getattr(self, counter)  # type: ignore[no-any-return]
        v = _byte_value(self.details.get(counter))
        if v is None and counter == "peak_live_bytes" and self.source == "estimate":
            parts = (self.weights_bytes, self.kv_cache_bytes, self.activations_bytes)
            return None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]
        return v

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: settings, engine, the byte fields, total, fit and headroom, phases, then details."""
        s = self.settings.to_dict() if hasattr(self.settings, "to_dict") else dict(self.settings)
        d: dict[str, Any] = {"settings": s, "engine": self.engine}
        d.update({k: getattr(self, k) for k in BYTE_FIELDS})
        d.update(total_bytes=self.total_bytes, fits=self.fits, headroom_bytes=self.headroom_bytes)
        if self.device_used_low_bytes is not None or self.device_used_high_bytes is not None:
            d.update({k: getattr(self, k) for k in RANGE_FIELDS})
            d["fit_verdict"] = fit_verdict(self, self.gpu_memory_bytes) if self.gpu_memory_bytes else None
        if self.phases:
            d["phases"] = {k: dict(v) for k, v in self.phases.items()}
        d.update(self.details)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "measured") -> MemoryReport:
        """A report from a JSON object (a runtime result line, or ``to_dict()`` output). Byte fields
        that are not int byte counts become None; unknown keys go to ``details``."""
        own = {f.name for f in dataclasses.fields(cls)} | {"total_bytes", "fits", "headroom_bytes", "fit_verdict"}
        settings = d.get("settings")
        phases = d.get("phases")
        status = d.get("status", "ok")
        return cls(
            settings=dict(settings) if isinstance(settings, Mapping) else {},
            engine=str((settings or {}).get("engine") or d.get("engine") or "transformers")
            if isinstance(settings, Mapping)
            else str(d.get("engine") or "transformers"),
            source=source,
            status=status if isinstance(status, str) else "error",
            gpu_memory_bytes=_byte_value(d.get("gpu_memory_bytes")),
            phases={
                str(p): {k: _byte_value(v.get(k)) for k in PHASE_FIELDS}
                for p, v in phases.items()
                if isinstance(v, Mapping)
            }
            if isinstance(phases, Mapping)
            else {},
            details={k: v for k, v in d.items() if k not in own},
            **{k: _byte_value(d.get(k)) for k in BYTE_FIELDS + RANGE_FIELDS},
        )


def device_used_range(report: MemoryReport) -> tuple[int, int] | None:
    """(low, high) of the device-used counter: the report's range, or the point when it has none
    (None: no device-used value)."""
    point = report.device_used_bytes
    if point is None:
        return None
    low, high = report.device_used_low_bytes, report.device_used_high_bytes
    return (point if low is None else low, point if high is None else high)


def totals_fields(report: MemoryReport) -> dict[str, Any]:
    """The totals an estimate's JSON carries, in one order (``Estimate`` and the training estimate
    both use it): the byte fields, total, GPU memory, fit and headroom, the range and its verdict."""
    d: dict[str, Any] = {k: getattr(report, k) for k in BYTE_FIELDS}
    d.update(
        total_bytes=report.total_bytes,
        gpu_memory_bytes=report.gpu_memory_bytes,
        fits=report.fits,
        headroom_bytes=report.headroom_bytes,
    )
    d.update({k: getattr(report, k) for k in RANGE_FIELDS})
    d["fit_verdict"] = fit_verdict(report, report.gpu_memory_bytes) if report.gpu_memory_bytes else None
    return d


def fit_verdict(report: MemoryReport, capacity_bytes: int) -> str:
    """ "fits" when the high end of device used fits ``capacity_bytes``, "does not fit" when even the
    low end does not, else "may fit". A report without a range is judged on its point.

    Raises ValueError for a report without a device-used value."""
    r = device_used_range(report)
    if r is None:
        raise ValueError("the report has no device-used value to judge a fit on")
    low, high = r
    if high <= capacity_bytes:
        return "fits"
    return "does not fit" if low > capacity_bytes else "may fit"


def relative_error(estimate: int | None, measured: int | None) -> float | None:
    """(estimate - measured) / measured, or None when either is missing or measured is 0."""
    if estimate is None or measured is None or measured == 0:
        return None
    return (estimate - measured) / measured


def compare(estimate: MemoryReport, measured: MemoryReport, counters: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per counter: the estimate, the measurement and the relative error (the one comparison the
    runtime's ``validate`` and the app's Validation page both use)."""
    out = {}
    for c in counters:
        e, m = estimate.value(c), measured.value(c)
        out[c] = {"estimate": e, "measured": m, "rel_error": relative_error(e, m)}
    return out


# ---------------------------------------------------------------------------- measured records

# Counters a measurement can be checked on, by the device it ran on:
# - all: weights and KV cache (both expected exact);
# - cpu / trace: activations and the live-tensor peak (``peak_live_bytes``), which has no allocator
#   blocks and no cuBLAS workspace;
# - trace also: allocated and reserved SIMULATED by replaying the traced allocations through the
#   caching-allocator model (runtime/allocsim.py) for the GPU in ``details.allocator_sim.gpu``;
# - cuda: the three torch / NVML counters.
COMPARED = {
    "cpu": ("weights_bytes", "kv_cache_bytes", "activations_bytes", "peak_live_bytes"),
    "trace": (
        "weights_bytes",
        "kv_cache_bytes",
        "activations_bytes",
        "peak_live_bytes",
        "peak_allocated_bytes",
        "peak_reserved_bytes",
    ),
    "cuda": ("weights_bytes", "kv_cache_bytes", "peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes"),
}
# Settings keys of a measured record that ``estimator.estimate`` takes (besides model and gpu).
ESTIMATE_KEYS = (
    "quant",
    "context",
    "batch",
    "kv_dtype",
    "attn",
    "new_tokens",
    "cache",
    "padding",
    "logits",
    "prefill_chunk",
    "bnb_compute_dtype",
    "max_cache_len",
)


def simulated_gpu(record: Mapping[str, Any]) -> str | None:
    """The catalog GPU a trace's allocator simulation stands for (None: no simulation)."""
    details = record.get("details")
    sim = details.get("allocator_sim") if isinstance(details, Mapping) else None
    gpu = sim.get("gpu") if isinstance(sim, Mapping) else None
    return gpu if isinstance(gpu, str) else None


def measured_gpu(environment: Mapping[str, Any] | None) -> Any:
    """The catalog GPU matching a cuda run's environment (total memory and compute capability;
    ``gpus.match_gpu``), or None when the environment names no GPU."""
    if not isinstance(environment, Mapping) or not _byte_value(environment.get("gpu_total_memory_bytes")):
        return None
    from .gpus import match_gpu

    return match_gpu(
        int(environment["gpu_total_memory_bytes"]), "sm" + str(environment.get("gpu_capability") or "").replace(".", "")
    )


def estimate_arguments(record: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``estimator.estimate`` for a measured record's point: its settings and
    the GPU it stands for (the settings' own, a trace's simulated GPU, or the catalog GPU matching a
    cuda run's environment: its arch sets the cuBLAS workspace and the CUDA context)."""
    s = record["settings"]
    kw = {k: s[k] for k in ESTIMATE_KEYS if s.get(k) is not None}
    kw["model"] = s["model"]
    gpu = s.get("gpu") or simulated_gpu(record) or measured_gpu(record.get("environment"))
    if gpu:
        kw["gpu"] = gpu
    return kw


def measured_report(record: Mapping[str, Any]) -> MemoryReport:
    """A runtime result line as a report. A trace from before the allocator simulation has
    live-tensor peaks in its allocated/reserved fields: they are not those counters, so None."""
    r = MemoryReport.from_dict(record, source="measured")
    s = record.get("settings")
    if isinstance(s, Mapping) and s.get("device") == "trace" and simulated_gpu(record) is None:
        r = dataclasses.replace(r, peak_allocated_bytes=None, peak_reserved_bytes=None)
    details = record.get("details")
    live = details.get("peak_live_bytes") if isinstance(details, Mapping) else None
    return dataclasses.replace(r, details={**r.details, "peak_live_bytes": live})


def device_class(device: Any) -> str:
    """ "cuda" (any GPU device: cuda:0, rocm, hip), "trace", "cpu", or "" when unknown."""
    d = str(device or "").lower()
    if d.startswith("trace"):
        return "trace"
    if d.startswith(("cuda", "gpu", "rocm", "hip")):
        return "cuda"
    return "cpu" if d.startswith("cpu") else ""


def compare_record(record: Mapping[str, Any], estimate: MemoryReport) -> dict[str, dict[str, Any]]:
    """The counters a measured record's device can be checked on (``COMPARED``), each with
    estimate, measured and relative error."""
    device = device_class(record["settings"].get("device"))
    return compare(estimate, measured_report(record), COMPARED.get(device, ()))


# Speed: a cuda record's measured rates (runtime/measure.py: all sequences of the batch) against the
# estimate's range (``Estimate.speed``, estimator.speed). Kept apart from ``compare_record`` so the
# memory validation reports stay as they are. CPU runs are labelled, not compared: the speed model
# is a GPU roofline.
SPEED_COMPARED = {"prefill_tokens_per_s": "prefill_tok_s", "decode_tokens_per_s": "aggregate_tok_s"}


def compare_speed(record: Mapping[str, Any], estimate: Any) -> dict[str, dict[str, Any]]:
    """Measured prefill / decode tokens/s of a cuda record against the estimate's speed: per field
    the estimate's point, low and high, the measurement, the point's relative error and whether the
    range holds it. Empty for a record not on a GPU, or an estimate without a speed."""
    if device_class(record["settings"].get("device")) != "cuda":
        return {}
    sp = getattr(estimate, "speed", None)
    details = record.get("details")
    if sp is None or not isinstance(details, Mapping):
        return {}
    out = {}
    for key, attr in SPEED_COMPARED.items():
        m, span = details.get(key), getattr(sp, attr)
        if span is None or not isinstance(m, (int, float)) or isinstance(m, bool) or m <= 0:
            continue
        out[key] = {
            "estimate": round(span.point, 1),
            "low": round(span.low, 1),
            "high": round(span.high, 1),
            "measured": m,
            "rel_error": (span.point - m) / m,
            "in_range": span.low <= m <= span.high,
        }
    return out
