"""Measured results from the runtime (``validation/**/*.jsonl``) and their comparison with estimates.

Each JSONL line is one point: ``{"settings": {...}, "status": "ok"|"oom"|"error", "weights_bytes",
"kv_cache_bytes", "peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes", "phases",
"environment": {gpu_name, gpu_total_memory_bytes, driver, cuda, torch, transformers, bitsandbytes}}``.
Counters a device cannot measure are null (CPU and trace runs have no reserved or device counter).

Pure functions: the estimate is passed in as a callable, so tests need neither Streamlit nor torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = "VRAM_VALIDATION_DIR"     # overrides the results folder (tests point it at fixtures)
COUNTERS = ("weights_bytes", "kv_cache_bytes", "activations_bytes", "peak_allocated_bytes",
            "peak_reserved_bytes", "device_used_bytes")
TABLE_COUNTERS = COUNTERS + ("peak_live_bytes",)  # peak_live_bytes: cpu/trace live-tensor peak
# Settings keys of a result file that ``estimator.estimate`` accepts.
ESTIMATE_KEYS = ("model", "quant", "context", "batch", "kv_dtype", "attn", "new_tokens", "cache",
                 "padding", "logits", "prefill_chunk", "bnb_compute_dtype", "max_cache_len")
ENV_KEYS = ("gpu_name", "gpu_total_memory_bytes", "driver", "cuda", "torch", "transformers", "bitsandbytes")
MAX_FILE_BYTES = 64 << 20


def results_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or ROOT / "validation")


@dataclass
class Loaded:
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # "file:line: why" for skipped lines
    files: list[str] = field(default_factory=list)


def load_results(root: Path) -> Loaded:
    """Every JSON object in ``root/**/*.jsonl``; malformed lines are skipped and reported."""
    out = Loaded()
    if not root.is_dir():
        return out
    for path in sorted(root.rglob("*.jsonl")):
        rel = str(path.relative_to(root))
        out.files.append(rel)
        if path.stat().st_size > MAX_FILE_BYTES:
            out.problems.append(f"{rel}: larger than 64 MiB, skipped")
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                out.problems.append(f"{rel}:{i}: not JSON ({e})")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("settings"), dict):
                out.problems.append(f"{rel}:{i}: no 'settings' object")
                continue
            rec["_source"] = f"{rel}:{i}"
            out.records.append(rec)
    return out


def device_kind(rec: Mapping[str, Any]) -> str:
    """'gpu' (a CUDA/ROCm device), 'trace' (fake-tensor trace) or 'cpu'."""
    dev = str(rec.get("settings", {}).get("device") or "").lower()
    if dev == "trace" or dev.startswith("trace"):
        return "trace"
    if dev.startswith(("cuda", "gpu", "rocm", "hip")):
        return "gpu"
    return "cpu" if dev.startswith("cpu") else (dev or "unknown")


def point_label(rec: Mapping[str, Any]) -> str:
    s = rec.get("settings", {})
    return (f"{s.get('model', '?')} {s.get('quant', '?')} ctx {s.get('context', '?')} "
            f"b{s.get('batch', '?')} [{s.get('device', '?')}]")


def estimate_kwargs(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments of ``estimator.estimate`` that reproduce a measured point's settings."""
    s = rec["settings"]
    kw = {k: s[k] for k in ESTIMATE_KEYS if s.get(k) is not None}
    env = rec.get("environment") or {}
    if s.get("gpu"):
        kw["gpu"] = s["gpu"]
    elif env.get("gpu_total_memory_bytes"):
        # The measurement's own GPU (arch sets the cuBLAS workspace and the CUDA context), as
        # `python -m runtime validate` picks it.
        from estimator.gpus import match_gpu
        kw["gpu"] = match_gpu(int(env["gpu_total_memory_bytes"]),
                              "sm" + str(env.get("gpu_capability") or "").replace(".", ""))
    return kw


def compare(records: Iterable[Mapping[str, Any]],
            estimate_fn: Callable[..., Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Pair every measured counter of every ``ok`` record with the estimate at its settings.

    Returns (points, problems). A point: counter, measured_bytes, estimate_bytes, error_bytes
    (estimate - measured), error_pct, label, kind, source.
    """
    points: list[dict[str, Any]] = []
    problems: list[str] = []
    for rec in records:
        if rec.get("status", "ok") != "ok":
            continue
        try:
            est = estimate_fn(**estimate_kwargs(rec))
        except Exception as e:  # noqa: BLE001 - a bad record must not break the page
            problems.append(f"{rec.get('_source', '?')}: cannot estimate ({e})")
            continue
        pairs = [(c, rec.get(c), est.get(c)) for c in COUNTERS]
        if device_kind(rec) != "gpu":
            # cpu/trace count live tensor bytes: their "peak_allocated" has no allocator blocks and
            # no cuBLAS workspace, so compare the live peak with weights + KV + activations instead
            # (as `python -m runtime validate` does).
            live = (rec.get("details") or {}).get("peak_live_bytes")
            pairs = [p for p in pairs if p[0] != "peak_allocated_bytes"]
            pairs.append(("peak_live_bytes", live,
                          est["weights_bytes"] + est["kv_cache_bytes"] + est["activations_bytes"]))
        for c, m, e in pairs:
            if m is None or e is None:
                continue
            e = int(e)
            points.append({"counter": c, "measured_bytes": int(m), "estimate_bytes": e,
                           "error_bytes": e - int(m), "error_pct": 100.0 * (e - m) / m if m else None,
                           "label": point_label(rec), "kind": device_kind(rec),
                           "source": rec.get("_source", "")})
    return points, problems


def error_table(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per counter: number of points, mean and worst relative error, mean signed error in MiB."""
    out = []
    for c in TABLE_COUNTERS:
        ps = [p for p in points if p["counter"] == c]
        if not ps:
            continue
        pct = [p["error_pct"] for p in ps if p["error_pct"] is not None]
        out.append({
            "Counter": c.removesuffix("_bytes").replace("_", " "),
            "Points": len(ps),
            "Mean |error| %": round(sum(abs(x) for x in pct) / len(pct), 3) if pct else None,
            "Worst |error| %": round(max(abs(x) for x in pct), 3) if pct else None,
            "Mean error (MiB)": round(sum(p["error_bytes"] for p in ps) / len(ps) / (1 << 20), 2),
            "Exact matches": sum(1 for p in ps if p["error_bytes"] == 0),
        })
    return out


def environments(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Distinct measurement environments with the number of points each."""
    seen: dict[tuple, dict[str, Any]] = {}
    for rec in records:
        env = rec.get("environment") or {}
        row = {"device": rec.get("settings", {}).get("device")}
        row.update({k: env.get(k) for k in ENV_KEYS})
        key = tuple(sorted((k, str(v)) for k, v in row.items()))
        if key in seen:
            seen[key]["points"] += 1
        else:
            seen[key] = {**row, "points": 1}
    return list(seen.values())


def status_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in records:
        s = str(rec.get("status", "ok"))
        out[s] = out.get(s, 0) + 1
    return out
