"""Measured results from the runtime (``validation/**/*.jsonl``) and their comparison with estimates.

Each JSONL line is one point: ``{"settings": {...}, "status": "ok"|"oom"|"error", "weights_bytes",
"kv_cache_bytes", "peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes", "phases",
"environment": {gpu_name, gpu_total_memory_bytes, driver, cuda, torch, transformers, bitsandbytes}}``.
Counters a device cannot measure are null (CPU runs have no reserved or device counter; a trace's
allocated and reserved are simulated for the GPU named in ``details.allocator_sim.gpu`` and it has
no device counter).

A line that is not a record (not UTF-8 or not JSON, NaN or Infinity, nested too deeply, not an
object, ``settings``/``phases``/``environment``/``details`` not objects, a counter that is not a
non-negative integer) is skipped and reported as ``file:line: why``.

Pure functions: the estimate is passed in as a callable, so tests need neither Streamlit nor torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from estimator.report import PHASE_FIELDS, MemoryReport, compare_record, device_class, estimate_arguments
from estimator.units import MAX_SIZE_BYTES, MiB, one_line, shown

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = "VRAM_VALIDATION_DIR"  # overrides the results folder (tests point it at fixtures)
COUNTERS = PHASE_FIELDS  # a record's byte fields (estimator.report)
TABLE_COUNTERS = COUNTERS + ("peak_live_bytes",)  # peak_live_bytes: cpu/trace live-tensor peak
ENV_KEYS = ("gpu_name", "gpu_total_memory_bytes", "driver", "cuda", "torch", "transformers", "bitsandbytes")
MAX_FILE_BYTES = 64 << 20
MAX_PROBLEMS = 100  # problems kept per load; the rest are only counted


def results_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or ROOT / "validation")


@dataclass
class Loaded:
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "file:line: why" for skipped lines
    files: list[str] = field(default_factory=list)
    skipped: int = 0  # every skipped line or file (problems stops at MAX_PROBLEMS)

    def problem(self, text: str) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)


def counter_value(v: Any) -> int | None:
    """A measured counter as int bytes, or None when it is absent or not a plausible byte count
    (a bool, a float, a string, negative, over 1 EiB)."""
    if type(v) is int and 0 <= v <= MAX_SIZE_BYTES:
        return v
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _parse_line(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), parse_constant=_no_constant)


def _why_not_record(rec: Any) -> str | None:
    """Why a parsed line is not a usable record, or None."""
    if not isinstance(rec, dict):
        return f"not a JSON object (a {type(rec).__name__})"
    if not isinstance(rec.get("settings"), dict):
        return "no 'settings' object"
    for k in ("phases", "environment", "details"):
        if rec.get(k) is not None and not isinstance(rec[k], dict):
            return f"'{k}' is not an object: {shown(rec[k], 40)}"
    if not isinstance(rec.get("status", "ok"), str):
        return f"'status' is not a string: {shown(rec['status'], 40)}"
    checks = [(k, rec.get(k)) for k in COUNTERS]
    checks.append(("details.peak_live_bytes", (rec.get("details") or {}).get("peak_live_bytes")))
    for phase, vals in (rec.get("phases") or {}).items():
        if not isinstance(vals, dict):
            return f"phase {shown(phase, 40)} is not an object: {shown(vals, 40)}"
        checks += [(f"phases.{phase}.{k}", vals.get(k)) for k in COUNTERS]
    env = rec.get("environment") or {}
    checks.append(("environment.gpu_total_memory_bytes", env.get("gpu_total_memory_bytes")))
    for name, v in checks:
        if v is not None and counter_value(v) is None:
            return f"{shown(name, 60)} is not a byte count (an integer >= 0): {shown(v, 40)}"
    for k in ENV_KEYS:
        if not isinstance(env.get(k), (str, int, float, type(None))):
            return f"environment.{k} is not a string or number: {shown(env[k], 40)}"
    return None


def load_results(root: Path) -> Loaded:
    """Every JSON object in ``root/**/*.jsonl``; malformed lines are skipped and reported."""
    out = Loaded()
    if not root.is_dir():
        return out
    for path in sorted(root.rglob("*.jsonl")):
        rel = str(path.relative_to(root))
        out.files.append(rel)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                out.problem(f"{rel}: larger than 64 MiB, skipped")
                continue
            data = path.read_bytes()
        except OSError as e:
            out.problem(f"{rel}: cannot be read ({e.strerror or type(e).__name__})")
            continue
        for i, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                rec = _parse_line(line)
            except UnicodeDecodeError:
                out.problem(f"{rel}:{i}: not UTF-8 text")
                continue
            except RecursionError:
                out.problem(f"{rel}:{i}: JSON nested too deeply")
                continue
            except ValueError as e:
                out.problem(f"{rel}:{i}: not JSON ({one_line(str(e))[:120]})")
                continue
            why = _why_not_record(rec)
            if why:
                out.problem(f"{rel}:{i}: {why}")
                continue
            rec["_source"] = f"{rel}:{i}"
            out.records.append(rec)
    return out


def device_kind(rec: Mapping[str, Any]) -> str:
    """'gpu' (a CUDA/ROCm device), 'trace' (fake-tensor trace) or 'cpu'."""
    dev = _text(rec.get("settings", {}).get("device") or "", 40)
    kind = device_class(dev)
    return {"cuda": "gpu"}.get(kind, kind) or dev.lower() or "unknown"


def _text(v: Any, limit: int = 60) -> str:
    return v[:limit] if isinstance(v, str) else shown(v, limit)


def point_label(rec: Mapping[str, Any]) -> str:
    s = rec.get("settings", {})
    return (
        f"{_text(s.get('model', '?'))} {_text(s.get('quant', '?'))} ctx {_text(s.get('context', '?'))} "
        f"b{_text(s.get('batch', '?'))} [{_text(s.get('device', '?'))}]"
    )


def compare(
    records: Iterable[Mapping[str, Any]], estimate_fn: Callable[..., MemoryReport]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Pair every measured counter of every ``ok`` record with the estimate at its settings, through
    ``estimator.report.compare_record``: what `python -m runtime validate` compares.

    Returns (points, problems). A point: counter, measured_bytes, estimate_bytes, error_bytes
    (estimate - measured), error_pct, label, kind, source.
    """
    points: list[dict[str, Any]] = []
    problems: list[str] = []
    for rec in records:
        if rec.get("status", "ok") != "ok":
            continue
        try:
            est = estimate_fn(**estimate_arguments(rec))
        except Exception as e:  # noqa: BLE001 - a bad record must not break the page
            problems.append(f"{_text(rec.get('_source', '?'))}: cannot estimate ({one_line(str(e))[:300]})")
            continue
        for c, v in compare_record(rec, est).items():
            m, e = v["measured"], v["estimate"]
            if m is None or e is None:
                continue
            points.append(
                {
                    "counter": c,
                    "measured_bytes": m,
                    "estimate_bytes": e,
                    "error_bytes": e - m,
                    "error_pct": None if v["rel_error"] is None else 100.0 * v["rel_error"],
                    "label": point_label(rec),
                    "kind": device_kind(rec),
                    "source": rec.get("_source", ""),
                }
            )
    return points, problems


def error_table(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per counter: number of points, mean and worst relative error, mean signed error in MiB."""
    out = []
    for c in TABLE_COUNTERS:
        ps = [p for p in points if p["counter"] == c]
        if not ps:
            continue
        pct = [p["error_pct"] for p in ps if p["error_pct"] is not None]
        out.append(
            {
                "Counter": c.removesuffix("_bytes").replace("_", " "),
                "Points": len(ps),
                "Mean |error| %": round(sum(abs(x) for x in pct) / len(pct), 3) if pct else None,
                "Worst |error| %": round(max(abs(x) for x in pct), 3) if pct else None,
                "Mean error (MiB)": round(sum(p["error_bytes"] for p in ps) / len(ps) / MiB, 2),
                "Exact matches": sum(1 for p in ps if p["error_bytes"] == 0),
            }
        )
    return out


def environments(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Distinct measurement environments with the number of points each."""
    seen: dict[tuple, dict[str, Any]] = {}
    for rec in records:
        env = rec.get("environment") or {}
        dev = rec.get("settings", {}).get("device")
        row = {"device": None if dev is None else _text(dev)}
        row.update(
            {
                k: env.get(k) if isinstance(env.get(k), (int, float, type(None))) else _text(env[k], 200)
                for k in ENV_KEYS
            }
        )
        key = tuple(sorted((k, str(v)) for k, v in row.items()))
        if key in seen:
            seen[key]["points"] += 1
        else:
            seen[key] = {**row, "points": 1}
    return list(seen.values())


def status_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in records:
        s = _text(rec.get("status", "ok"), 40)
        out[s] = out.get(s, 0) + 1
    return out
