"""The runtime's own JSONL (``python -m runtime sweep``): each measured point against the estimate,
counter by counter (``estimator.report.compare_record``, what ``python -m runtime validate`` does)."""

from __future__ import annotations

import json
from typing import Any

from ..report import compare_record, estimate_arguments
from . import CheckResult, LogNotRecognised, Term

OWNERS = {
    "weights_bytes": "quant.weight_tensors (exact tensor bytes)",
    "kv_cache_bytes": "kv.kv_cache_bytes (exact)",
    "activations_bytes": "activations (forward replay)",
    "peak_live_bytes": "activations (forward replay) + weights + KV",
    "peak_allocated_bytes": "allocator (block rounding, pools)",
    "peak_reserved_bytes": "allocator (segments; fragmentation not modelled)",
    "device_used_bytes": "overhead (CUDA context) + reserved",
}


def _records(text: str) -> tuple[list[dict[str, Any]], int]:
    recs, skipped = [], 0
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            skipped += bool(line)
            continue
        try:
            r = json.loads(line)
        except (ValueError, RecursionError):
            skipped += 1
            continue
        if isinstance(r, dict) and isinstance(r.get("settings"), dict) and "status" in r:
            recs.append(r)
        else:
            skipped += 1
    return recs, skipped


def detect(text: str) -> bool:
    return bool(_records(text[: 1 << 20])[0])


def check(text: str, **options: Any) -> CheckResult:
    from ..estimate import estimate

    recs, skipped = _records(text)
    if not recs:
        raise LogNotRecognised("log: no runtime JSONL record (a JSON object with settings and status)")
    terms: list[Term] = []
    notes: list[str] = []
    for i, r in enumerate(recs):
        s = r["settings"]
        label = f"{s.get('quant')} ctx {s.get('context')} b{s.get('batch')} [{s.get('device')}]"
        if r.get("status") != "ok":
            notes.append(f"point {i + 1} ({label}): {r.get('status')}, not compared")
            continue
        est = estimate(**estimate_arguments(r))
        for c, v in compare_record(r, est).items():
            low, high = (getattr(est, c.replace("_bytes", end), None) for end in ("_low_bytes", "_high_bytes"))
            terms.append(
                Term(
                    f"{label}: {c.removesuffix('_bytes')}",
                    v["measured"],
                    v["estimate"],
                    owner=OWNERS.get(c, ""),
                    line=f"line {i + 1}",
                    low=low,
                    high=high,
                )
            )
    first = recs[0]["settings"]
    inferred = {k: first.get(k) for k in ("model", "quant", "context", "batch", "device") if k in first}
    inferred["points"] = len(recs)
    tf = (recs[0].get("environment") or {}).get("transformers")
    version = f"transformers {tf}" if tf else None
    return CheckResult("runtime", version, inferred, tuple(terms), tuple(notes), skipped)
