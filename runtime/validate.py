"""Compare measurements with the estimator, point by point and counter by counter.

For each measured point the estimator runs on the same settings (the runtime's settings keys
are the estimator's), and each counter gets ``estimate``, ``measured`` and the relative error
``(estimate - measured) / measured``. Which counters are compared depends on the device:

- all devices: ``weights_bytes``, ``kv_cache_bytes`` (both expected exact);
- cpu / trace: ``activations_bytes`` and ``peak_live_bytes``: the unrounded live-tensor peak,
  against the estimator's ``weights + kv_cache + activations`` (its peak before allocator
  rounding and the cuBLAS workspace, which live tensors cannot show);
- trace also: ``peak_allocated_bytes`` and ``peak_reserved_bytes`` SIMULATED by replaying the
  traced allocations through the caching-allocator model (runtime/allocsim.py), against the
  estimate for the GPU the simulation stands for (``details.allocator_sim.gpu``);
- cuda: ``peak_allocated_bytes``, ``peak_reserved_bytes``, ``device_used_bytes``.

Outputs a markdown table plus a JSON file with the same rows and a summary (max and median
absolute relative error per counter).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

EST_KEYS = ("quant", "context", "batch", "kv_dtype", "attn", "new_tokens", "cache", "padding", "logits",
            "prefill_chunk", "bnb_compute_dtype")
COUNTERS = {
    "cpu": ("weights_bytes", "kv_cache_bytes", "activations_bytes", "peak_live_bytes"),
    "trace": ("weights_bytes", "kv_cache_bytes", "activations_bytes", "peak_live_bytes", "peak_allocated_bytes",
              "peak_reserved_bytes"),
    "cuda": ("weights_bytes", "kv_cache_bytes", "peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes"),
}


def _gpu_for(env: dict[str, Any] | None):
    """The catalog GPU matching a cuda result's environment (estimator.gpus.match_gpu); None off-GPU."""
    if not env or not env.get("gpu_total_memory_bytes"):
        return None
    from estimator.gpus import match_gpu

    return match_gpu(env["gpu_total_memory_bytes"], "sm" + str(env.get("gpu_capability") or "").replace(".", ""))


def sim_gpu(result: dict[str, Any]) -> str | None:
    """The catalog GPU a trace result's allocator simulation stands for (None: no simulation)."""
    sim = (result.get("details") or {}).get("allocator_sim")
    gpu = sim.get("gpu") if isinstance(sim, dict) else None
    return gpu if isinstance(gpu, str) else None


def estimate_for(result: dict[str, Any]) -> dict[str, Any]:
    """``estimator.estimate(...).to_dict()`` for a result's settings (and its GPU on cuda)."""
    from estimator import estimate

    s = result["settings"]
    kw = {k: s[k] for k in EST_KEYS if k in s}
    gpu = _gpu_for(result.get("environment")) if s.get("device") == "cuda" else sim_gpu(result)
    est = estimate(s["model"], gpu=gpu, **kw)
    d = est.to_dict()
    d["peak_live_bytes"] = d["weights_bytes"] + d["kv_cache_bytes"] + d["activations_bytes"]
    return d


def _measured(result: dict[str, Any], counter: str) -> int | None:
    if counter == "peak_live_bytes":
        return (result.get("details") or {}).get("peak_live_bytes")
    if result["settings"].get("device") == "trace" and counter in ("peak_allocated_bytes", "peak_reserved_bytes") \
            and sim_gpu(result) is None:
        return None  # a trace from before the allocator simulation: its counters are live-tensor peaks
    return result.get(counter)


def compare(result: dict[str, Any], est: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row: the point's settings and, per counter, estimate / measured / relative error."""
    s = result["settings"]
    row: dict[str, Any] = {"settings": s, "status": result["status"], "counters": {}}
    if result["status"] != "ok":
        return row
    if est is None:
        try:
            est = estimate_for(result)
        except Exception as e:  # an estimator error is a finding, not a crash of the report
            row["estimate_error"] = f"{type(e).__name__}: {e}"
            return row
    for c in COUNTERS.get(s["device"], ()):
        m, e = _measured(result, c), est.get(c)
        rel = (e - m) / m if isinstance(m, int) and isinstance(e, int) and m else None
        row["counters"][c] = {"estimate": e, "measured": m, "rel_error": rel}
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per counter: points compared, max and median absolute relative error."""
    errs: dict[str, list[float]] = {}
    for r in rows:
        for c, v in r["counters"].items():
            if v["rel_error"] is not None:
                errs.setdefault(c, []).append(abs(v["rel_error"]))
    return {c: {"points": len(v), "max_abs_rel_error": max(v), "median_abs_rel_error": statistics.median(v)}
            for c, v in errs.items()}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.3f}%"


def _gib(x: int | None) -> str:
    from estimator.units import GiB

    return "-" if x is None else f"{x / GiB:.3f}"


def to_markdown(rows: list[dict[str, Any]], summary: dict[str, Any], env: dict[str, Any] | None) -> str:
    lines = ["# Estimator vs measurement", ""]
    if env:
        keys = ("device", "gpu_name", "gpu_total_memory_bytes", "driver", "cuda", "torch", "transformers", "bitsandbytes")
        lines.append("Environment: " + ", ".join(f"{k}={env.get(k)}" for k in keys if env.get(k) is not None))
        lines.append("")
    lines += ["Relative error = (estimate - measured) / measured. Sizes in GiB (2^30 B); exact bytes in the JSON.", ""]
    lines += ["## Summary", "", "| counter | points | max abs error | median abs error |", "|---|---|---|---|"]
    for c, v in summary.items():
        lines.append(f"| {c} | {v['points']} | {100 * v['max_abs_rel_error']:.3f}% | "
                     f"{100 * v['median_abs_rel_error']:.3f}% |")
    lines += ["", "## Points", "", "| model | quant | context | batch | attn | device | status | counter | "
              "estimate GiB | measured GiB | rel error |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["settings"]
        head = f"| {Path(str(s['model'])).name} | {s['quant']} | {s['context']} | {s['batch']} | {s['attn']} | {s['device']}"
        if not r["counters"]:
            lines.append(f"{head} | {r['status']} | - | - | - | - |")
        for c, v in r["counters"].items():
            lines.append(f"{head} | {r['status']} | {c} | {_gib(v['estimate'])} | {_gib(v['measured'])} | "
                         f"{_pct(v['rel_error'])} |")
    return "\n".join(lines) + "\n"


def validate(results: list[dict[str, Any]], out_dir: str | Path | None = None) -> dict[str, Any]:
    """Compare every result with the estimator; write ``validation.md`` and ``validation.json``
    into ``out_dir`` when given. Returns the JSON report."""
    rows = [compare(r) for r in results]
    summary = summarise(rows)
    env = next((r.get("environment") for r in results if r.get("environment")), None)
    report = {"summary": summary, "rows": rows, "environment": env}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "validation.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "validation.md").write_text(to_markdown(rows, summary, env))
    return report
