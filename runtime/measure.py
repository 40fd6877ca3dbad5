"""Measure one point: load, prefill, decode, with real counters per phase.

Result schema (one JSON object; one line of a sweep's JSONL). Byte fields use the estimator's
names (docs/api.md), so ``measured - estimated`` is a subtraction per field:

- ``settings``: the estimator's Settings keys + ``device``, ``weights``, ``isolation``.
- ``status``: "ok", "oom" or "error" (``error`` holds the message).
- top level, for the whole run: ``weights_bytes`` (exact tensor bytes the loaded model holds),
  ``kv_cache_bytes`` (K/V tensor bytes at the end: the context, i.e. prompt + new_tokens tokens),
  ``peak_allocated_bytes`` (max over prefill and decode; peaks are reset after load),
  ``peak_reserved_bytes``, ``device_used_bytes``; ``null`` where the device cannot measure it.
- ``phases``: the same fields for "load", "prefill", "decode".
- ``weights``: parameters/quant_state/buffers split (estimator ``WeightBytes`` names).
- ``counters``: what each number is on this device. ``details``: extra per-device numbers.
- ``environment``: GPU name and memory, driver, CUDA, torch, transformers, bitsandbytes.

What the counters are per device:

- cuda: ``peak_allocated_bytes`` = ``torch.cuda.max_memory_allocated()``, ``peak_reserved_bytes`` =
  ``max_memory_reserved()``, ``device_used_bytes`` = NVML used memory of this process (null when
  the driver hides per-process usage, e.g. in some containers); NVML device-wide used and psutil
  host RSS are in ``details``.
- cpu (real tensors) and trace (fake tensors): ``peak_allocated_bytes`` = peak of live tensor
  storage bytes, each rounded up to 512 B as the CUDA allocator does; no block slack, no cuBLAS
  workspace. The unrounded peak is ``details.peak_live_bytes``. Reserved and NVML are null.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from importlib import metadata
from typing import Any

from estimator.report import PHASE_FIELDS as FIELDS  # a measurement's byte fields: the report's
from estimator.units import shown

from .settings import BNB_QUANTS, SettingsError, make_settings


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "bitsandbytes": _version("bitsandbytes"),
        "accelerate": _version("accelerate"),
        "cuda": torch.version.cuda,
        "gpu_name": None,
        "gpu_total_memory_bytes": None,
        "gpu_capability": None,
        "driver": None,
        "host": platform.node(),
    }
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu_name=p.name, gpu_total_memory_bytes=p.total_memory, gpu_capability=f"{p.major}.{p.minor}")
        try:
            import pynvml

            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
            h = _nvml_handle()
            env["nvml_total_memory_bytes"] = pynvml.nvmlDeviceGetMemoryInfo(h).total
        except Exception as e:  # NVML missing is not fatal: only the NVML counters go null
            env["nvml_error"] = str(e)
    return env


def _nvml_handle():
    import pynvml
    import torch

    uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", ""))
    if uuid:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            u = pynvml.nvmlDeviceGetUUID(h)
            u = u.decode() if isinstance(u, bytes) else u
            if u.replace("GPU-", "") == uuid.replace("GPU-", ""):
                return h
    return pynvml.nvmlDeviceGetHandleByIndex(0)


_NVML_BASELINE: dict[str, int] = {}  # device used before this process created its CUDA context


def nvml_baseline() -> None:
    """Record the device's NVML used memory before torch touches CUDA (call first thing).

    Containers often hide per-process usage (``usedGpuMemory`` is None); then this process's
    usage is taken as device used now minus this baseline, which is right while no other process
    allocates on the GPU. ``details.device_used_source`` says which one a result used."""
    if "bytes" in _NVML_BASELINE:
        return
    try:
        import pynvml

        pynvml.nvmlInit()
        vis = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
        h = pynvml.nvmlDeviceGetHandleByIndex(int(vis)) if vis.isdigit() else pynvml.nvmlDeviceGetHandleByUUID(vis)
        _NVML_BASELINE["bytes"] = int(pynvml.nvmlDeviceGetMemoryInfo(h).used)
    except Exception:
        pass


def _nvml_used() -> tuple[int | None, int | None]:
    """(this process's used bytes, device used bytes) from NVML; None where unavailable."""
    try:
        import pynvml

        h = _nvml_handle()
        dev = pynvml.nvmlDeviceGetMemoryInfo(h).used
        mine = None
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
            if p.pid == os.getpid() and p.usedGpuMemory is not None:
                mine = int(p.usedGpuMemory)
        if mine is None and "bytes" in _NVML_BASELINE:
            mine = int(dev) - _NVML_BASELINE["bytes"]
            _NVML_BASELINE["fallback_used"] = 1
        return mine, int(dev)
    except Exception:
        return None, None


def _rss() -> int | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except Exception:
        return None


# Config fields that decide what a model stores and allocates (estimator.model.ModelSpec names,
# defaults filled as the estimator fills them); a --weights checkpoint must match --model on each.
ARCH_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
    "attention_bias",
    "attention_out_bias",
    "mlp_bias",
    "qk_norm",
)


def _spec(cfg: Any, what: str):
    from estimator.errors import EstimatorError
    from estimator.model import load_model

    try:
        return load_model(cfg)
    except EstimatorError as e:
        raise SettingsError(f"{what}: {e}") from None


def weights_mismatch(model_cfg: Any, weights_cfg: Any) -> str:
    """The ``ARCH_FIELDS`` where a checkpoint's config differs from the model's, in words ("" if none).
    Either config is what ``estimator.model.load_model`` takes (a preset, a path, a dict)."""
    m, w = _spec(model_cfg, "model"), _spec(weights_cfg, "weights")
    return ", ".join(
        f"{f} {getattr(w, f)!r} (model: {getattr(m, f)!r})" for f in ARCH_FIELDS if getattr(m, f) != getattr(w, f)
    )


def check_weights(s: dict[str, Any]) -> None:
    """Refuse ``--weights`` that is not a checkpoint of ``--model`` (SettingsError naming weights).

    A local folder's config.json is compared now; a hub id is compared once loaded
    (``runtime.load.load``), except in trace mode, which builds from --model's config and cannot
    read a hub config offline, so it refuses hub ids."""
    w = s["weights"]
    if w == "random":
        return
    if not os.path.isdir(w):
        if s["device"] == "trace":
            raise SettingsError(
                "weights: trace mode builds the model from --model's config and cannot check a "
                f"hub id's config offline; use random or a local checkpoint folder: {shown(w)}"
            )
        return
    if not os.path.isfile(os.path.join(w, "config.json")):
        raise SettingsError(f"weights: the checkpoint folder holds no config.json: {shown(w)}")
    diff = weights_mismatch(s["model"], w)
    if diff:
        raise SettingsError(f"weights: the checkpoint is not {s['model']!r}: {diff}: {shown(w)}")


# Host (CPU) allocation failures that torch raises as RuntimeError, e.g. c10 alloc_cpu.cpp:
# "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes. Error code 12".
HOST_OOM_MARKERS = ("can't allocate memory", "DefaultCPUAllocator")


def failure_status(e: BaseException) -> str:
    """ "oom" for an out-of-memory (CUDA OOM, MemoryError, torch's host allocator), else "error"."""
    import torch

    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return "oom"
    if isinstance(e, RuntimeError) and any(m in str(e) for m in HOST_OOM_MARKERS):
        return "oom"
    return "error"


def _oom_message(e: BaseException) -> str:
    """First line of an out-of-memory error, host ones marked as such (500 characters at most)."""
    import torch

    first = (str(e).strip().splitlines() or [""])[0]
    return (first if isinstance(e, torch.cuda.OutOfMemoryError) else f"host {type(e).__name__}: {first}")[:500]


def _empty_result(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": s,
        "status": "ok",
        "error": None,
        **{f: None for f in FIELDS},
        "phases": {p: {f: None for f in FIELDS} for p in ("load", "prefill", "decode")},
        "weights": None,
        "counters": {},
        "details": {},
        "environment": None,
    }


def _finish(r: dict[str, Any]) -> dict[str, Any]:
    """Top-level fields from the phases: weights at load, KV at the end, peaks over prefill+decode."""
    ph = r["phases"]
    r["weights_bytes"] = ph["load"]["weights_bytes"]
    r["kv_cache_bytes"] = ph["decode"]["kv_cache_bytes"]
    if r["kv_cache_bytes"] is None:
        r["kv_cache_bytes"] = ph["prefill"]["kv_cache_bytes"]
    for f in ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes"):
        vals = [ph[p][f] for p in ("prefill", "decode") if ph[p][f] is not None]
        r[f] = max(vals) if vals else None
    return r


SIMULATE_OOM_ENV = "RUNTIME_SIMULATE_OOM_ABOVE"  # test hook: contexts above this raise a CUDA OOM


def measure(settings: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """Measure one point. ``settings`` (or keywords) as in ``runtime.settings.make_settings``.

    Never raises for a failed measurement: out-of-memory gives ``status="oom"`` and any other
    exception ``status="error"``, both with what was measured before it. Bad settings raise
    ``SettingsError`` (the CLI turns that into exit code 2)."""
    s = make_settings(**{**(settings or {}), **kw})
    return next(measure_points([s]))


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Points that can share one loaded model."""
    keys = ("model", "quant", "weights", "device", "attn", "bnb_compute_dtype")
    return all(a[k] == b[k] for k in keys)


def measure_points(points: list[dict[str, Any]]):
    """Measure points that share one model (``same_model``) in this process, loading it once.

    Yields one result per point, in order. Between points the cache and generation state are
    dropped, ``gc.collect()`` and ``torch.cuda.empty_cache()`` run and peak statistics are reset,
    so a point sees only the model (and the cuBLAS workspace, once created). Run contexts in
    ascending order so a point never inherits a larger point's segments."""
    import torch

    points = [make_settings(**p) for p in points]
    if points and points[0]["device"] == "cuda":
        nvml_baseline()
    for p in points[1:]:
        if not same_model(points[0], p):
            raise ValueError("measure_points: all points must share model, quant, weights, device, attn")
    if points:
        check_weights(points[0])  # all points share the model and the weights
    env = environment(points[0]["device"])
    loaded: dict[str, Any] = {}
    for s in points:
        r = _empty_result(s)
        r["environment"] = env
        t0 = time.perf_counter()
        try:
            runner = {"cuda": _measure_cuda, "cpu": _measure_cpu, "trace": _measure_trace}[s["device"]]
            runner(s, r, loaded)
        except SettingsError:
            raise
        except Exception as e:
            r["status"] = failure_status(e)
            if r["status"] == "oom":
                r["error"] = _oom_message(e)
            else:
                r["error"] = f"{type(e).__name__}: {e}"[:2000]
            # the load itself failed: later points would fail the same way
            if r["status"] == "error" and "model" not in loaded:
                loaded["load_error"] = r["error"]
        finally:
            gc.collect()
            if s["device"] == "cuda" and torch.cuda.is_available():
                torch.cuda.empty_cache()
        r["details"]["wall_s"] = round(time.perf_counter() - t0, 3)
        yield _finish(r)
    loaded.clear()


def _simulated_oom(s: dict[str, Any]) -> None:
    limit = os.environ.get(SIMULATE_OOM_ENV)
    if limit and s["context"] > int(limit):
        import torch

        raise torch.cuda.OutOfMemoryError(f"simulated out of memory ({SIMULATE_OOM_ENV}={limit})")


def _set_load(r: dict[str, Any], weights: dict[str, int]) -> None:
    r["weights"] = weights
    r["phases"]["load"].update(weights_bytes=weights["total_bytes"], kv_cache_bytes=0)


def _reuse_load(r: dict[str, Any], loaded: dict[str, Any]) -> None:
    r["weights"] = loaded["weights"]
    r["phases"]["load"] = dict(loaded["load_phase"])
    r["details"].update(loaded["load_details"], model_loaded_by_earlier_point=True)


def _tokens_per_s(r: dict[str, Any], s: dict[str, Any], g: dict[str, Any]) -> None:
    d = r["details"]
    d["prefill_s"], d["decode_s"] = g["prefill_s"], g["decode_s"]
    d["prefill_tokens_per_s"] = (
        round(s["batch"] * (s["context"] - s["new_tokens"]) / g["prefill_s"], 1) if g["prefill_s"] else None
    )
    d["decode_tokens_per_s"] = round(s["batch"] * s["new_tokens"] / g["decode_s"], 1) if g["decode_s"] else None


def _tracked_run(s, r, model, extra_tensors, device, *, weights) -> None:
    """cpu and trace: run generate under LiveBytes, recording each phase's live peak."""
    from . import generate
    from .load import cache_bytes, stored_tensors
    from .track import LiveBytes, storage_key

    _set_load(r, weights)
    ph = r["phases"]
    tracker = LiveBytes(detail=True)
    # Load order: module order, each weight followed by the tensors stored with it (bitsandbytes
    # stand-ins' quant state, keyed by the weight's storage), as the estimator packs them
    # (estimate._weights): the order decides which medium blocks share a 20 MiB segment.
    # ``extra_tensors`` lists each stand-in's weight and then its quant state (trace.materialise).
    stored = stored_tensors(model)
    weight_keys = {storage_key(t) for _, _, t in stored}
    follow: dict[int, list] = {}
    owner = None
    for t in extra_tensors:
        k = storage_key(t)
        if k in weight_keys:
            owner = k
        else:
            follow.setdefault(owner, []).append(t)
    for _, _, t in stored:
        tracker.track(t, "weights")
        for x in follow.get(storage_key(t), ()):
            tracker.track(x, "weights")
    for t in extra_tensors:  # anything not stored with a weight (tracked once: LiveBytes dedups)
        tracker.track(t, "weights")
    ph["load"]["peak_allocated_bytes"] = tracker.live_rounded
    cur: dict[str, Any] = {"name": None}
    raw: dict[str, int] = {}
    detail: dict[str, list] = {}

    def phase(name: str, cache) -> None:
        prev = cur["name"]
        if prev is not None:
            kv = cache_bytes(cache)
            ph[prev].update(
                weights_bytes=weights["total_bytes"],
                kv_cache_bytes=kv,
                activations_bytes=max(0, tracker.peak - weights["total_bytes"] - kv),
                peak_allocated_bytes=tracker.peak_rounded,
            )
            raw[prev], detail[prev] = tracker.peak, tracker.peak_detail
        tracker.reset_peak()
        cur["name"] = name

    with tracker:
        g = generate.run(model, s, device, phase=phase)
    if device == "meta":  # trace: peak allocated/reserved from a caching-allocator simulation
        from .allocsim import apply

        apply(r, tracker.events)
    best = max(raw, key=lambda n: ph[n]["peak_allocated_bytes"])
    r["details"].update(peak_live_bytes=max(raw.values()), peak_phase=best, peak_tensors=_summarise(detail[best]))
    r["activations_bytes"] = max(0, max(raw.values()) - weights["total_bytes"] - cache_bytes(g["cache"]))
    _tokens_per_s(r, s, g)


def _summarise(detail: list) -> list[dict[str, Any]]:
    """Live tensors at the peak, grouped by (dtype, shape, op), largest first (top 25)."""
    groups: dict[tuple, list[int]] = {}
    for n, dtype, shape, op in detail:
        g = groups.setdefault((op if op == "weights" else "", dtype, shape if op != "weights" else ()), [0, 0])
        g[0] += 1
        g[1] += n
    rows = [
        {"what": k[0] or "activation", "dtype": k[1], "shape": list(k[2]), "count": v[0], "bytes": v[1]}
        for k, v in groups.items()
    ]
    rows.sort(key=lambda x: -x["bytes"])
    return rows[:25]


# What cpu and trace runs (live tensor bytes, no allocator) say about each counter.
_LIVE_COUNTERS = {
    "kv_cache_bytes": "DynamicCache K/V tensor bytes at the end",
    "activations_bytes": "peak live tensor bytes (unrounded) - weights - KV at the end",
    "peak_reserved_bytes": None,
    "device_used_bytes": None,
}


def _measure_trace(s: dict[str, Any], r: dict[str, Any], loaded: dict[str, Any]) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from . import trace

    r["counters"] = {
        **_LIVE_COUNTERS,
        "weights_bytes": "tensor bytes of the meta-built model (bnb layouts from bitsandbytes itself)",
        "peak_allocated_bytes": "peak live tensor bytes under FakeTensorMode, each rounded to 512 B "
        "(no allocator block slack, no cuBLAS workspace)",
    }
    if s["weights"] != "random":
        r["details"]["weights_note"] = (
            "trace builds from --model's config, which the checkpoint's config.json "
            "matches in every memory-deciding field; values do not change memory"
        )
    r["details"]["attention"] = "flash-like stand-in" if s["attn"] == "sdpa" else "transformers eager (real code)"
    r["details"]["bnb_transients"] = "analytic (bitsandbytes 0.50 CUDA paths)" if s["quant"] in BNB_QUANTS else None
    model = trace.build(s)
    with FakeTensorMode(allow_non_fake_inputs=True):
        extra = trace.materialise(model)
        weights = trace.stored_parts(model, extra)
        _set_load(r, weights)
        _simulated_oom(s)
        _tracked_run(s, r, model, extra, trace.DEVICE, weights=weights)
    del model
    for k in ("prefill_s", "decode_s", "prefill_tokens_per_s", "decode_tokens_per_s"):
        r["details"][k] = None  # fake tensors: timings mean nothing


def _measure_cpu(s: dict[str, Any], r: dict[str, Any], loaded: dict[str, Any]) -> None:
    from .load import load, weight_parts

    r["counters"] = {
        **_LIVE_COUNTERS,
        "weights_bytes": "tensor bytes the loaded model holds (parameters + quant state + buffers)",
        "peak_allocated_bytes": "peak live tensor bytes of real CPU tensors, each rounded to 512 B "
        "(RSS is useless for this)",
    }
    if "load_error" in loaded:
        raise RuntimeError(loaded["load_error"])
    if "model" not in loaded:
        d = {"rss_before_load_bytes": _rss()}
        t0 = time.perf_counter()
        loaded["model"] = load(s, "cpu")
        d.update(load_s=round(time.perf_counter() - t0, 3), rss_after_load_bytes=_rss())
        loaded["weights"] = weight_parts(loaded["model"])
        loaded["load_details"] = d
        r["details"].update(d)
    else:
        r["details"].update(loaded["load_details"], model_loaded_by_earlier_point=True)
    _set_load(r, loaded["weights"])
    _simulated_oom(s)
    _tracked_run(s, r, loaded["model"], [], "cpu", weights=loaded["weights"])
    r["details"]["rss_end_bytes"] = _rss()


def _measure_cuda(s: dict[str, Any], r: dict[str, Any], loaded: dict[str, Any]) -> None:
    import torch

    from . import generate
    from .load import cache_bytes, load, weight_parts

    r["counters"] = {
        "weights_bytes": "tensor bytes the loaded model holds (parameters + quant state + buffers)",
        "kv_cache_bytes": "DynamicCache K/V tensor bytes at the end",
        "peak_allocated_bytes": "torch.cuda.max_memory_allocated() (peak stats reset after load)",
        "peak_reserved_bytes": "torch.cuda.max_memory_reserved()",
        "device_used_bytes": "NVML used memory of this process at the end of the phase",
        "activations_bytes": None,
    }
    d, ph = r["details"], r["phases"]
    if "load_error" in loaded:
        raise RuntimeError(loaded["load_error"])
    if "model" not in loaded:
        torch.cuda.init()
        ld: dict[str, Any] = {"nvml_before_load": dict(zip(("process_bytes", "device_bytes"), _nvml_used()))}
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        loaded["model"] = model = load(s, "cuda")
        torch.cuda.synchronize()
        ld["load_s"] = round(time.perf_counter() - t0, 3)
        w = loaded["weights"] = weight_parts(model)
        mine, dev = _nvml_used()
        loaded["load_phase"] = dict(
            weights_bytes=w["total_bytes"],
            kv_cache_bytes=0,
            activations_bytes=None,
            peak_allocated_bytes=torch.cuda.max_memory_allocated(),
            peak_reserved_bytes=torch.cuda.max_memory_reserved(),
            device_used_bytes=mine,
        )
        ld["load"] = {
            "allocated_bytes": torch.cuda.memory_allocated(),
            "reserved_bytes": torch.cuda.memory_reserved(),
            "nvml_device_used_bytes": dev,
            "host_rss_bytes": _rss(),
        }
        loaded["load_details"] = ld
        r["weights"], r["phases"]["load"] = w, dict(loaded["load_phase"])
        d.update(ld)
    else:
        _reuse_load(r, loaded)
    model, w = loaded["model"], loaded["weights"]
    _simulated_oom(s)
    # Load transients must not count as inference (memory-model §4.9): collect, empty, reset.
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    d["start_allocated_bytes"] = torch.cuda.memory_allocated()
    d["start_reserved_bytes"] = torch.cuda.memory_reserved()
    cur: dict[str, Any] = {"name": None}

    def phase(name: str, cache) -> None:
        prev = cur["name"]
        if prev is not None:
            torch.cuda.synchronize()
            mine, dev = _nvml_used()
            ph[prev].update(
                weights_bytes=w["total_bytes"],
                kv_cache_bytes=cache_bytes(cache),
                peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                peak_reserved_bytes=torch.cuda.max_memory_reserved(),
                device_used_bytes=mine,
            )
            d[prev] = {
                "allocated_end_bytes": torch.cuda.memory_allocated(),
                "reserved_end_bytes": torch.cuda.memory_reserved(),
                "nvml_device_used_bytes": dev,
                "host_rss_bytes": _rss(),
            }
            torch.cuda.reset_peak_memory_stats()
        cur["name"] = name

    g = generate.run(model, s, "cuda", phase=phase, sync=torch.cuda.synchronize)
    _tokens_per_s(r, s, g)
    d["device_used_source"] = (
        "NVML device used - device used before CUDA init (per-process hidden)"
        if _NVML_BASELINE.get("fallback_used")
        else "NVML per-process used memory"
    )
    del g
