"""Check a log: paste or upload a real engine log and see, term by term, what it states against what
the estimator predicts for the same settings (``estimator.check``)."""

from __future__ import annotations

from typing import Any

import streamlit as st

import estimator
from app import compute
from app.escape import md
from app.inputs import gpu_label
from app.state import MODEL_LABELS
from estimator.check import CheckResult, check_log, format_range, format_value

MAX_UPLOAD_BYTES = 2 << 20  # a startup log's memory lines fit in a few KB; the whole log in well under 2 MiB
AUTO = ""  # the select boxes' "read it from the log" choice


def term_rows(r: CheckResult) -> list[dict[str, Any]]:
    """The table: per term logged, predicted, difference (all as text, none empty), error, the
    prediction's range (where derivation stops) and whether the log lies in it, and the owner."""
    return [
        {
            "Term": t.name,
            "Logged": format_value(t.logged, t.unit),
            "Predicted": format_value(t.predicted, t.unit),
            "Difference": format_value(t.difference, t.unit),
            "Error": "-" if t.rel_error is None else f"{100 * t.rel_error:+.1f}%",
            "Range": "exact" if t.low is None or t.high is None else format_range(t.low, t.high, t.unit),
            "In range": {None: "-", True: "yes", False: "no"}[t.within_range],
            "Owner (mechanism)": t.owner or "-",
        }
        for t in r.terms
    ]


def render() -> None:
    st.title("Check a log")
    st.caption(
        "Paste or upload a vLLM startup log, a llama.cpp / Ollama / llama-cpp-python log, or a runtime "
        "sweep (JSONL). The settings it states are read from it; each memory line is compared with the "
        f"estimate for the same settings. Logs are capped at {MAX_UPLOAD_BYTES >> 20} MiB and never stored."
    )
    up = st.file_uploader(
        "Log file", type=["log", "txt", "jsonl", "out"], key="check_upload", max_upload_size=MAX_UPLOAD_BYTES >> 20
    )
    text = st.text_area("…or paste it", key="check_paste", height=200)
    c1, c2 = st.columns(2)
    model = c1.selectbox(
        "Model (only when the log names none)",
        [AUTO, *estimator.PRESETS],
        key="check_model",
        format_func=lambda k: "from the log" if k == AUTO else MODEL_LABELS.get(k, k),
    )
    gpu = c2.selectbox(
        "GPU (only when the log states no memory)",
        [AUTO, *compute.gpu_keys()],
        key="check_gpu",
        format_func=lambda k: "from the log" if k == AUTO else gpu_label(k),
    )
    data: bytes | str | None = None
    if up is not None:
        if up.size > MAX_UPLOAD_BYTES:
            st.error(f"The file is {up.size:,} bytes; logs are capped at {MAX_UPLOAD_BYTES:,} bytes.")
            return
        data = up.getvalue()
    elif text.strip():
        if len(text) > MAX_UPLOAD_BYTES:
            st.error(f"The pasted text is {len(text):,} characters; logs are capped at {MAX_UPLOAD_BYTES:,}.")
            return
        data = text
    if data is None:
        st.info("Paste or upload a log to check it.")
        return
    try:
        r = check_log(data, model=model or None, gpu=gpu or None)
    except estimator.EstimatorError as e:
        st.error(md(str(e)))
        return
    head = f"{r.engine} log" + (f", {r.engine_version}" if r.engine_version else "")
    st.subheader(head)
    st.markdown("**Settings read from the log:** " + md(", ".join(f"{k} = {v}" for k, v in r.inferred.items())))
    if r.terms:
        st.dataframe(term_rows(r), hide_index=True, key="check_table", width="stretch")
    else:
        st.warning("The log has no memory line this checker compares.")
    for n in r.notes:
        st.caption(md(n))
    if r.unparsed_lines:
        st.caption(f"{r.unparsed_lines:,} lines were not memory lines and were ignored.")


render()
