"""Validation page: the estimate against the runtime's measured results."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import streamlit as st

import estimator
from app import compute, figures, results, state
from app.escape import md
from app.run_measurement import cuda_available, measure_command
from estimator.report import MemoryReport, compare
from estimator.units import GiB

ROOT = Path(__file__).resolve().parents[2]
KIND_TITLES = {"gpu": "GPU measurements", "trace": "Trace results (fake-tensor, no GPU)", "cpu": "CPU runs"}


@st.cache_data(show_spinner=False, ttl=60)
def _load(root: str) -> results.Loaded:
    return results.load_results(Path(root))


def _estimate(**kw) -> estimator.Estimate:
    kw.setdefault("gpu", None)
    return estimator.estimate(**kw)


def _run_measurement(s: dict) -> None:
    cmd = measure_command(s)
    with st.status("Measuring on this GPU…", expanded=True) as status:
        st.code(" ".join(cmd[1:]), language="bash")
        lines: list[str] = []
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        log = st.empty()
        for line in proc.stdout:
            lines.append(line.rstrip())
            log.text("\n".join(lines[-8:]))
        rc = proc.wait()
        result = None
        for line in reversed(lines):
            try:
                result = json.loads(line)
                break
            except (ValueError, RecursionError):
                continue
        if rc != 0 or not isinstance(result, dict):
            status.update(label=f"Measurement failed (exit {rc})", state="error")
            st.session_state[state.MEASURE_RESULT] = None
            return
        status.update(label="Measured", state="complete", expanded=False)
    st.session_state[state.MEASURE_RESULT] = result


def _section(kind: str, records: list[dict]) -> None:
    st.subheader(KIND_TITLES.get(kind) or md(kind))
    if kind == "trace":
        st.caption(
            "A trace runs the real transformers forward on fake tensors and counts live tensor bytes: "
            "its live peak is compared with the estimate's weights + KV cache + activations. Its peak "
            "allocated and reserved are simulated by replaying every allocation and free through a "
            "model of PyTorch's caching allocator (runtime/allocsim.py); it has no CUDA context."
        )
    elif kind == "cpu":
        st.caption(
            "CPU runs count real CPU tensors. bitsandbytes' CPU kernels allocate differently from its "
            "CUDA kernels (which the estimate models), so their activation rows differ by design; "
            "weights and KV cache must match exactly."
        )
    points, problems = results.compare(records, _estimate)
    counts = results.status_counts(records)
    st.caption(
        f"{len(records)} points ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
        f"{len(points)} measured counters compared."
    )
    if points:
        left, right = st.columns([1, 1])
        left.plotly_chart(figures.parity_figure(points), key=f"parity_{kind}")
        with right:
            st.markdown("**Error per counter** (estimate − measured)")
            st.dataframe(results.error_table(points), hide_index=True, key=f"errors_{kind}")
            st.caption("A positive error means the estimate is above the measurement (safe side).")
        st.markdown("**Where it was measured**")
        st.dataframe(
            results.environments(records),
            hide_index=True,
            key=f"env_{kind}",
            column_config={
                "gpu_total_memory_bytes": st.column_config.NumberColumn("GPU memory (B)", format="localized")
            },
        )
        with st.expander("Every compared point"):
            st.dataframe(
                [
                    {
                        k: p[k]
                        for k in (
                            "label",
                            "counter",
                            "measured_bytes",
                            "estimate_bytes",
                            "error_bytes",
                            "error_pct",
                            "source",
                        )
                    }
                    for p in points
                ],
                hide_index=True,
            )
    else:
        st.info("These results have no measured counter to compare.")
    for p in problems:
        st.warning(md(p))


@st.cache_data(show_spinner=False)
def _public_rows() -> list[dict]:
    from estimator.engines import public

    return public.compare()


def public_logs_table(rows: list[dict]) -> list[dict[str, str]]:
    """The public-log comparison as text cells (no empty or None cell)."""
    out = []
    for r in rows:
        verdict = {True: "yes", False: "no", None: "not derivable"}[r["within"]]
        out.append(
            {
                "Row": r["id"],
                "Engine": f"{r['engine']} {r['engine_version']}",
                "Counter": r["counter"],
                "Logged": f"{r['measured']:g} {r['unit']}",
                "Estimate": "-" if r["estimate"] is None else f"{r['estimate']:.4g}",
                "Error": "-" if r["error_pct"] is None else f"{r['error_pct']:+.2f}%",
                "Within tolerance": verdict,
                "Why not": r["note"] or "-",
                "Source": r["source"],
            }
        )
    return out


def _public_logs() -> None:
    st.divider()
    st.subheader("Public engine logs")
    rows = _public_rows()
    ok = sum(r["within"] is True for r in rows)
    judged = sum(r["within"] is not None for r in rows)
    st.caption(
        f"Numbers vLLM, llama.cpp / Ollama and ExecuTorch printed in public logs, each reproduced by the "
        f"estimator from the log's own settings (estimator/engines/public.py): {ok} of {judged} within "
        "tolerance (weights 0.1%, KV exact, compute buffers and activations 5%, vLLM KV pool 1%, "
        "non-torch ±0.05 GiB); the rest say why they cannot be derived from the log's inputs."
    )
    st.dataframe(public_logs_table(rows), hide_index=True, key="public_logs")


@st.cache_data(show_spinner=False)
def _calibration_report() -> dict:
    from estimator import calibration

    return calibration.report()


def calibration_table(rows: list[dict]) -> list[dict[str, str]]:
    """The calibration rows as text cells: logged, estimate, residual, range or tolerance, covered."""
    out = []
    for r in rows:
        u = r["unit"]

        def num(v: float | None, u: str = u) -> str:
            if v is None:
                return "-"
            return f"{v / GiB:.3f} GiB" if u == "bytes" else f"{v:.4g}"

        if r["low"] is not None:
            band = f"{num(r['low'])} to {num(r['high'])}"
        else:
            band = "-" if r["tolerance"] is None else f"±{num(r['tolerance'])}"
        out.append(
            {
                "Row": r["id"],
                "Counter": r["counter"],
                "Unit": u,
                "Logged": num(r["measured"]),
                "Estimate": num(r["estimate"]),
                "Residual": num(r["residual"]),
                "Range / tolerance": band,
                "Covered": {True: "yes", False: "no", None: "not estimated"}[r["covered"]],
                "Why not": (r["note"] or "-") if r["covered"] is not True else "-",
            }
        )
    return out


def _calibration() -> None:
    from estimator import calibration

    st.divider()
    st.subheader("Calibration: does the range cover the measurement?")
    rep = _calibration_report()
    st.markdown("**" + md(calibration.summary_line(rep)) + "**")
    st.caption(
        "Every public measurement the estimator reproduces, and every committed cuda sweep point: a term "
        "with a range (peak reserved and device used: CUDA context, allocator fragmentation) is covered "
        "inside it; a term without one only within its tolerance. No constant is fitted to a row "
        "(`python -m estimator calibration`, committed as validation/calibration.md)."
        + ("" if rep["summary"]["cuda_points"] else " No cuda sweep point is committed yet.")
    )
    st.dataframe(calibration_table(rep["rows"]), hide_index=True, key="calibration")


def render() -> None:
    st.title("Validation")
    st.markdown(
        "How far the estimate is from memory measured by the reference runtime (`runtime/`), "
        "per counter: **peak allocated** (`torch.cuda.max_memory_allocated`), **peak reserved** "
        "(`max_memory_reserved`) and **device used** (NVML, what nvidia-smi shows)."
    )
    root = results.results_dir()
    loaded = _load(str(root))
    by_kind: dict[str, list[dict]] = {}
    for rec in loaded.records:
        by_kind.setdefault(results.device_kind(rec), []).append(rec)

    if "gpu" not in by_kind:
        st.warning(
            "**No GPU measurements exist yet.** The numbers on the calculator are estimates that "
            "have not been checked against a real GPU. "
            + (
                "Trace results (exact tensor bytes from a fake-tensor run, no allocator or CUDA "
                "context) are shown below."
                if "trace" in by_kind
                else "Run `python -m runtime sweep` on a CUDA machine and commit its JSONL files under "
                "`validation/` to fill this page."
            )
        )
    if not loaded.records:
        shown = root.relative_to(ROOT) if root.is_relative_to(ROOT) else root
        st.info("No result files found under " + md(f"{shown}/"))
    for kind in ("gpu", "trace", *sorted(k for k in by_kind if k not in ("gpu", "trace"))):
        if kind in by_kind:
            _section(kind, by_kind[kind])
    if loaded.skipped:
        with st.expander(f"{loaded.skipped:,} lines skipped"):
            st.text(
                "\n".join(loaded.problems)
                + (
                    f"\n… and {loaded.skipped - len(loaded.problems):,} more"
                    if loaded.skipped > len(loaded.problems)
                    else ""
                )
            )

    _public_logs()
    _calibration()

    st.divider()
    st.subheader("Measure on this machine")
    s = st.session_state.get(state.SETTINGS)
    if not cuda_available():
        st.caption(
            "No CUDA GPU with torch and the runtime extras was found on this machine, so the "
            "measurement button is hidden. Install `.[runtime]` on a GPU host to measure here."
        )
        return
    if s is None:
        st.info("Open the calculator first: the measurement uses its settings.")
        return
    if not isinstance(compute.model_from_key(s["model"]), str):
        st.info("Measurements run the preset models only; pick a preset on the calculator.")
        return
    st.caption(
        f"Runs the reference runtime in a subprocess at the calculator's settings: {s['quant']}, "
        f"{s['context']:,} tokens, batch {s['batch']}, KV {s['kv_dtype']}, {s['attn']}."
    )
    if st.button("Measure these settings", key="measure_button", icon=":material/play_arrow:"):
        _run_measurement(s)
    result = st.session_state.get(state.MEASURE_RESULT)
    if result:
        est = _estimate(**{k: v for k, v in s.items() if k != "model"}, model=compute.model_from_key(s["model"]))
        measured = MemoryReport.from_dict({"settings": s, **result})
        rows = [{"counter": c, **v} for c, v in compare(est, measured, results.COUNTERS).items()]
        st.dataframe(rows, hide_index=True, key="measure_table")


render()
