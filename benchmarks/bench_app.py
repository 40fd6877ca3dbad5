"""Server-side rerun time of the calculator page (target: under 150 ms).

    python benchmarks/bench_app.py [--repeat 20]

Measures, on this machine:
  1. cold compute: everything the page asks the estimator for, with no cache (first visit);
  2. AppTest reruns of the whole page (script run + element tree, no browser):
     - "same settings": a rerun with nothing changed (e.g. a tab click or a resize),
     - "new context": the typed context changes to a value not seen before (max-context
       tables stay cached, the per-GPU fits and per-quant rows are recomputed),
     - "new quant": the quantization changes (cached after the first visit of each quant),
     - "new batch": batch changes, so the sweep and the headline's max context are recomputed,
     - "GPUs tab": the GPU table open (first open computes the 34 GPUs x 11 quants context grid;
       a new context then re-estimates the 34 GPUs).
Only the open detail tab computes (st.tabs with on_change="rerun").
Prints a table and exits 1 if the median "new context" rerun is over the target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_MS = 150.0


def _ms(f) -> float:
    t = time.perf_counter()
    f()
    return 1000 * (time.perf_counter() - t)


def cold_compute() -> dict[str, float]:
    """The page's estimator calls, uncached, at the default settings."""
    from app import compute, state

    m, gpu = "llama-3.2-3b", state.DEFAULTS[state.GPU]
    out = {
        "estimate": _ms(lambda: compute.estimate_report(m, "bf16", 8192, 1, "auto", "sdpa", gpu, None)),
        "max_context (1 quant)": _ms(lambda: compute.largest_context(m, "bf16", 1, "auto", "sdpa", gpu, None)),
        "sweep (11 quants x 64 contexts)": _ms(lambda: compute.sweep_rows(m, 1, "auto", "sdpa", gpu, None)),
    }
    import estimator

    def gpu_table() -> None:
        for g in estimator.gpu_catalog():
            compute.estimate_report(m, "bf16", 8192, 1, "auto", "sdpa", g.key, None)
            for q in estimator.TRANSFORMERS_QUANTS:
                compute.largest_context(m, q, 1, "auto", "sdpa", g.key, None)

    out[f"GPU table ({len(estimator.gpu_catalog())} GPUs x {len(estimator.TRANSFORMERS_QUANTS)} quants)"] = _ms(
        gpu_table
    )
    return out


def apptest_reruns(repeat: int) -> dict[str, list[float]]:
    import os

    from streamlit.testing.v1 import AppTest

    from app import state

    os.environ.setdefault("VRAM_APP_CUDA", "0")
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    first = _ms(at.run)
    assert not at.exception, at.exception
    res: dict[str, list[float]] = {
        "first run (cold caches)": [first],
        "same settings": [],
        "new context": [],
        "new quant": [],
        "new batch (all recomputed)": [],
    }
    for _ in range(repeat):
        res["same settings"].append(_ms(at.run))
    for i in range(repeat):
        at.text_input(key=state.CTX_TEXT).set_value(str(5000 + 997 * i))
        res["new context"].append(_ms(at.run))
    quants = ["nf4", "int8", "fp8", "bf16"]
    for i in range(repeat):
        at.selectbox(key=state.QUANT).set_value(quants[i % len(quants)])
        res["new quant"].append(_ms(at.run))
    for i in range(min(repeat, 5)):
        at.number_input(key=state.BATCH).set_value(2 + i)
        res["new batch (all recomputed)"].append(_ms(at.run))
    at.session_state[state.DETAILS_TAB] = "GPUs"
    res["GPUs tab: first open"] = [_ms(at.run)]
    res["GPUs tab: new context"] = []
    for i in range(repeat):
        at.text_input(key=state.CTX_TEXT).set_value(str(7000 + 991 * i))
        res["GPUs tab: new context"].append(_ms(at.run))
    assert not at.exception, at.exception
    at.switch_page("app/pages/engines.py")
    res["Engines page: first open"] = [_ms(at.run)]
    res["Engines page: new context"] = []
    for i in range(repeat):
        at.number_input(key="eng_context").set_value(6000 + 991 * i)
        res["Engines page: new context"].append(_ms(at.run))
    assert not at.exception, at.exception
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    print("cold compute (no cache), ms")
    for k, v in cold_compute().items():
        print(f"  {k:<45} {v:9.1f}")
    print(f"\ncalculator page rerun via AppTest (server side), ms, {args.repeat} runs")
    print(f"  {'case':<30} {'median':>8} {'p90':>8} {'max':>8}")
    res = apptest_reruns(args.repeat)
    for k, v in res.items():
        v = sorted(v)
        p90 = v[min(len(v) - 1, int(0.9 * len(v)))]
        print(f"  {k:<30} {statistics.median(v):8.1f} {p90:8.1f} {v[-1]:8.1f}")
    med = statistics.median(res["new context"])
    ok = med < TARGET_MS
    print(f"\nmedian 'new context' rerun {med:.1f} ms: {'OK' if ok else 'OVER'} (target {TARGET_MS:.0f} ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
