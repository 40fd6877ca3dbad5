"""Calibration: does the estimate's range cover what was measured?

For every public measurement the estimator reproduces (``engines.public.compare()``, one logged
number per row) and every committed cuda point of a transformers sweep (``validation/**/sweep.jsonl``
under the repository, when there are any: a cpu or trace point measures no CUDA context and no
real allocator, so it is not one): the logged value, the point estimate, the residual, and whether
the estimate covers it. A term with a range (device used and peak reserved of a transformers
estimate: ``overhead.CUDA_CONTEXT_RANGE_BYTES``, ``overhead.FRAGMENTATION_HIGH``; a vLLM estimate's
non-torch growth and CUDA graphs, the public-log rows in ``public.RANGES``) covers a value inside
[low, high]; a term without one (weights, KV, activations, allocated, and the other public-log
rows) covers it only within its existing tolerance. Coverage is covered / total over the rows with
an estimate; the target is at least 95%.

No constant is fitted here: the report only counts. ``python -m estimator calibration [--json]``
prints it; ``validation/calibration.md`` and ``.json`` are its committed output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .engines import public

TARGET = 0.95
ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "validation"
# Counters of a cuda point and the estimate's range fields for them (None: no range, tolerance).
CUDA_COUNTERS = {
    "weights_bytes": None,
    "kv_cache_bytes": None,
    "peak_allocated_bytes": None,
    "peak_reserved_bytes": ("peak_reserved_low_bytes", "peak_reserved_high_bytes"),
    "device_used_bytes": ("device_used_low_bytes", "device_used_high_bytes"),
}
# Tolerance of a cuda counter without a range: weights and KV exact, allocated 1% (the trace's
# allocator replay is within 0.31% of it: validation/trace/validation.json).
CUDA_REL_TOL = {"weights_bytes": 0.0, "kv_cache_bytes": 0.0, "peak_allocated_bytes": 0.01}


def public_rows() -> list[dict[str, Any]]:
    """The public measurements as calibration rows (``public.compare()``, row for row)."""
    out = []
    for r in public.compare():
        got, want = r["estimate"], r["measured"]
        tol = public.tolerance(r["id"]) if got is not None else None
        low = high = None
        covered = r["within"] is True if got is not None else None
        note = r["note"] or ("" if r["within"] else "outside the row's tolerance")
        if r["id"] in public.RANGES and got is not None:
            low, high = public.RANGES[r["id"]]()
            covered, tol = low <= want <= high, None
            note = "" if covered else "outside the range"
        out.append(
            {
                "id": r["id"],
                "source": "public log",
                "engine": f"{r['engine']} {r['engine_version']}",
                "counter": r["counter"],
                "unit": r["unit"],
                "measured": want,
                "estimate": got,
                "residual": None if got is None else got - want,
                "low": low,
                "high": high,
                "tolerance": tol,
                "covered": covered,
                "note": note,
            }
        )
    return out


def cuda_points(root: Path = VALIDATION) -> list[Mapping[str, Any]]:
    """The committed sweep records measured on a CUDA device (status ok)."""
    from .report import device_class

    out: list[Mapping[str, Any]] = []
    for path in sorted(root.glob("**/sweep.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            s = rec.get("settings") if isinstance(rec, dict) else None
            if isinstance(s, dict) and device_class(s.get("device")) == "cuda" and rec.get("status") == "ok":
                out.append(rec)
    return out


def cuda_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Calibration rows of cuda sweep points: each counter the record measured, against the
    estimate of its setting and that estimate's range."""
    from .estimate import estimate
    from .report import estimate_arguments, measured_report

    out = []
    for i, rec in enumerate(records):
        est = estimate(**estimate_arguments(rec))
        meas = measured_report(rec)
        for counter, rng in CUDA_COUNTERS.items():
            want, got = meas.value(counter), est.value(counter)
            if want is None or got is None:
                continue
            low = high = tol = None
            if rng is not None:
                low, high = getattr(est, rng[0]), getattr(est, rng[1])
                covered = low <= want <= high
            else:
                tol = CUDA_REL_TOL[counter] * want
                covered = abs(got - want) <= tol
            out.append(
                {
                    "id": f"cuda-{i + 1}",
                    "source": "cuda sweep",
                    "engine": "transformers",
                    "counter": counter,
                    "unit": "bytes",
                    "measured": want,
                    "estimate": got,
                    "residual": got - want,
                    "low": low,
                    "high": high,
                    "tolerance": tol,
                    "covered": covered,
                    "note": "" if covered else "outside the range" if rng else "outside the tolerance",
                }
            )
    return out


def report(root: Path = VALIDATION) -> dict[str, Any]:
    """Every row and the summary: covered / total over the rows with an estimate, and the target."""
    rows = public_rows() + cuda_rows(cuda_points(root))
    judged = [r for r in rows if r["covered"] is not None]
    covered = sum(r["covered"] for r in judged)
    coverage = covered / len(judged) if judged else None
    return {
        "summary": {
            "covered": covered,
            "total": len(judged),
            "coverage": coverage,
            "target": TARGET,
            "meets_target": coverage is not None and coverage >= TARGET,
            "not_estimated": [r["id"] for r in rows if r["covered"] is None],
            "cuda_points": sum(r["source"] == "cuda sweep" for r in rows),
        },
        "rows": rows,
    }


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "bytes":
        return f"{v / (1 << 30):.3f} GiB"
    return f"{v:.4g}"


def summary_line(rep: Mapping[str, Any]) -> str:
    s = rep["summary"]
    pct = "-" if s["coverage"] is None else f"{100 * s['coverage']:.1f}%"
    met = "meets" if s["meets_target"] else "below"
    return f"coverage {s['covered']} / {s['total']} = {pct} (target >= {100 * s['target']:.0f}%: {met})"


def format_text(rep: Mapping[str, Any]) -> str:
    """The report as a table, one row per measured value, then the summary line."""
    lines = [
        f"{'row':<8} {'counter':<44} {'unit':<10} {'logged':>11} {'estimate':>11} {'residual':>11} "
        f"{'range / tolerance':>24}  covered"
    ]
    for r in rep["rows"]:
        u = r["unit"]
        if r["low"] is not None:
            band = f"{_num(r['low'], u)}-{_num(r['high'], u)}"
        else:
            band = "-" if r["tolerance"] is None else f"+-{_num(r['tolerance'], u)}"
        cov = {True: "yes", False: "no", None: "not estimated"}[r["covered"]]
        lines.append(
            f"{r['id']:<8} {r['counter'][:44]:<44} {u[:10]:<10} {_num(r['measured'], u):>11} "
            f"{_num(r['estimate'], u):>11} {_num(r['residual'], u):>11} {band:>24}  {cov}"
        )
    lines.append(summary_line(rep))
    s = rep["summary"]
    if not s["cuda_points"]:
        lines.append(
            "no committed cuda sweep points (validation/**/sweep.jsonl): the ranges are not yet checked on a GPU"
        )
    for r in rep["rows"]:
        if r["covered"] is not True and r["note"]:
            lines.append(f"{r['id']}: {r['note']}")
    return "\n".join(lines)


def format_markdown(rep: Mapping[str, Any]) -> str:
    """``validation/calibration.md``."""
    out = [
        "# Calibration: does the estimate cover what was measured?",
        "",
        "Generated by `python -m estimator calibration --markdown > validation/calibration.md`"
        " (and `--json > validation/calibration.json`); see `estimator/calibration.py`.",
        "",
        "A term with a range (a transformers estimate's peak reserved and device used; a vLLM estimate's "
        "non-torch growth and CUDA-graph capture) covers a value inside [low, high]; a term without one "
        "(weights, KV, activations, allocated, the other public-log rows) only within its existing "
        "tolerance (`estimator/engines/public.py`). No constant is fitted to a row; the per-graph bound "
        "of the CUDA-graph range is the largest per-graph excess over the two graph-capture rows "
        "(GT-007, GT-033), so those two rows are in-sample.",
        "",
        f"**{summary_line(rep)}**",
        "",
    ]
    if not rep["summary"]["cuda_points"]:
        out += [
            "No committed cuda sweep point exists yet (`validation/**/sweep.jsonl` holds cpu and trace "
            "points only), so the transformers ranges are not yet checked on a GPU: every row below is a "
            "public engine log.",
            "",
        ]
    out += [
        "| row | engine | counter | unit | logged | estimate | residual | range / tolerance | covered | why not |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        u = r["unit"]
        if r["low"] is not None:
            band = f"{_num(r['low'], u)}-{_num(r['high'], u)}"
        else:
            band = "-" if r["tolerance"] is None else f"±{_num(r['tolerance'], u)}"
        cov = {True: "yes", False: "no", None: "not estimated"}[r["covered"]]
        note = r["note"].replace("|", "/") if r["covered"] is not True else ""
        out.append(
            f"| {r['id']} | {r['engine']} | {r['counter'].replace('|', '/')} | {u} | {_num(r['measured'], u)} | "
            f"{_num(r['estimate'], u)} | {_num(r['residual'], u)} | {band} | {cov} | {note} |"
        )
    return "\n".join(out) + "\n"
