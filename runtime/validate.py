"""Compare measurements with the estimator, point by point and counter by counter.

For each measured point the estimator runs on the same settings and GPU
(``estimator.report.estimate_arguments``), and each counter the point's device can be checked on
(``estimator.report.COMPARED``) gets ``estimate``, ``measured`` and the relative error
``(estimate - measured) / measured`` from ``estimator.report.compare_record``: the same comparison
the app's Validation page shows. In short: weights and KV cache everywhere (expected exact); on
cpu / trace the activations and the live-tensor peak (against weights + KV + activations); on
trace also allocated and reserved SIMULATED for ``details.allocator_sim.gpu`` (runtime/allocsim.py);
on cuda the torch and NVML counters.

Outputs a markdown table plus a JSON file with the same rows and a summary (max and median
absolute relative error per counter).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from estimator.report import compare_record, estimate_arguments


def compare(result: dict[str, Any]) -> dict[str, Any]:
    """One row: the point's settings and, per counter, estimate / measured / relative error."""
    s = result["settings"]
    row: dict[str, Any] = {"settings": s, "status": result["status"], "counters": {}}
    if result["status"] != "ok":
        return row
    try:
        from estimator import estimate

        est = estimate(**estimate_arguments(result))
    except Exception as e:  # an estimator error is a finding, not a crash of the report
        row["estimate_error"] = f"{type(e).__name__}: {e}"
        return row
    row["counters"] = compare_record(result, est)
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per counter: points compared, max and median absolute relative error."""
    errs: dict[str, list[float]] = {}
    for r in rows:
        for c, v in r["counters"].items():
            if v["rel_error"] is not None:
                errs.setdefault(c, []).append(abs(v["rel_error"]))
    return {
        c: {"points": len(v), "max_abs_rel_error": max(v), "median_abs_rel_error": statistics.median(v)}
        for c, v in errs.items()
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.3f}%"


def _gib(x: int | None) -> str:
    from estimator.units import GiB

    return "-" if x is None else f"{x / GiB:.3f}"


def to_markdown(rows: list[dict[str, Any]], summary: dict[str, Any], env: dict[str, Any] | None) -> str:
    lines = ["# Estimator vs measurement", ""]
    if env:
        keys = (
            "device",
            "gpu_name",
            "gpu_total_memory_bytes",
            "driver",
            "cuda",
            "torch",
            "transformers",
            "bitsandbytes",
        )
        lines.append("Environment: " + ", ".join(f"{k}={env.get(k)}" for k in keys if env.get(k) is not None))
        lines.append("")
    lines += ["Relative error = (estimate - measured) / measured. Sizes in GiB (2^30 B); exact bytes in the JSON.", ""]
    lines += ["## Summary", "", "| counter | points | max abs error | median abs error |", "|---|---|---|---|"]
    for c, v in summary.items():
        lines.append(
            f"| {c} | {v['points']} | {100 * v['max_abs_rel_error']:.3f}% | {100 * v['median_abs_rel_error']:.3f}% |"
        )
    lines += [
        "",
        "## Points",
        "",
        "| model | quant | context | batch | attn | device | status | counter | "
        "estimate GiB | measured GiB | rel error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["settings"]
        head = f"| {Path(str(s['model'])).name} | {s['quant']} | {s['context']} | {s['batch']} | {s['attn']} | {s['device']}"
        if not r["counters"]:
            lines.append(f"{head} | {r['status']} | - | - | - | - |")
        for c, v in r["counters"].items():
            lines.append(
                f"{head} | {r['status']} | {c} | {_gib(v['estimate'])} | {_gib(v['measured'])} | "
                f"{_pct(v['rel_error'])} |"
            )
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
