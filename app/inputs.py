"""Sidebar inputs of the calculator, their session state and the URL query string.

``sidebar()`` draws the widgets (keys from ``app.state``), keeps the context slider and the
typed context field in step, and returns an ``Inputs``. The query string is read once per
session (a shared link reproduces the view) and rewritten whenever the settings change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import streamlit as st

import estimator
from estimator.units import GiB, parse_context

from . import state
from .compute import gpu_by_key, gpu_keys, model_key
from .figures import tokens_label

MODEL_LABELS = {"llama-3.2-1b": "Llama 3.2 1B", "llama-3.2-3b": "Llama 3.2 3B",
                "llama-3.1-8b": "Llama 3.1 8B", state.CUSTOM_MODEL: "Custom config.json…"}
KV_LABELS = {"auto": "auto (compute dtype)", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16",
             "fp8": "fp8", "int8": "int8", "int4": "int4"}
ATTN_LABELS = {"sdpa": "SDPA", "eager": "Eager"}
_WIDGET_KEYS = (state.MODEL, state.QUANT, state.KV_DTYPE, state.CTX_SLIDER, state.CTX_TEXT,
                state.BATCH, state.ATTN, state.GPU, state.GPU_MEM_GIB, state.CONFIG_PASTE)
_SAVED = "_saved_inputs"


@dataclass(frozen=True)
class Inputs:
    """What the user chose. ``model`` is a preset name or a ModelSpec from an uploaded config."""

    model: Any
    model_key: str
    model_label: str
    quant: str
    kv_dtype: str
    context: int
    batch: int
    attn: str
    gpu_key: str | None           # catalog key, or None for a custom size
    capacity_bytes: int
    capacity_label: str           # short GPU name for captions

    def settings(self) -> dict[str, Any]:
        """Keyword arguments of ``estimator.estimate`` (model as its cache key)."""
        return {"model": self.model_key, "quant": self.quant, "context": self.context,
                "batch": self.batch, "kv_dtype": self.kv_dtype, "attn": self.attn,
                "gpu": self.gpu_key,
                "gpu_memory_bytes": None if self.gpu_key else self.capacity_bytes}


def quant_label(q: str) -> str:
    return estimator.QUANTS[q].label


def gpu_label(key: str) -> str:
    if key == state.CUSTOM_GPU:
        return "Custom memory size…"
    g = gpu_by_key(key)
    return f"{short_gpu_name(g.name)} · {g.memory_bytes / GiB:g} GiB"


def short_gpu_name(name: str) -> str:
    """'NVIDIA GeForce RTX 4090 24GB' -> 'RTX 4090' (the catalog's marketing size is in GB, not GiB)."""
    name = name.replace("NVIDIA GeForce ", "").replace("NVIDIA ", "").replace("AMD Instinct ", "")
    return re.sub(r"\s+\d+(\.\d+)?\s*GB$", "", name)


# ---------------------------------------------------------------------------- query string

def _parse_query(params: dict[str, str]) -> dict[str, Any]:
    """Session values from query parameters; unknown or malformed values are ignored."""
    out: dict[str, Any] = {}
    v = params.get("model")
    if v in estimator.PRESETS:
        out[state.MODEL] = v
    v = params.get("quant")
    if v in estimator.TRANSFORMERS_QUANTS:
        out[state.QUANT] = v
    v = params.get("kv")
    if v in estimator.KV_DTYPES:
        out[state.KV_DTYPE] = v
    v = params.get("attn")
    if v in ATTN_LABELS:
        out[state.ATTN] = v
    v = params.get("gpu")
    if v == state.CUSTOM_GPU or v in gpu_keys():
        out[state.GPU] = v
    try:
        ctx = parse_context(params["ctx"])
        if state.MIN_CONTEXT <= ctx <= state.MAX_CONTEXT:
            out[state.CONTEXT] = ctx
    except (KeyError, estimator.EstimatorError):
        pass
    try:
        b = int(params["batch"])
        if 1 <= b <= state.MAX_BATCH:
            out[state.BATCH] = b
    except (KeyError, ValueError):
        pass
    try:
        m = float(params["mem"])
        if 0.25 <= m <= 4096:
            out[state.GPU_MEM_GIB] = m
    except (KeyError, ValueError):
        pass
    return out


def query_for(inp: Inputs, model_choice: str) -> dict[str, str]:
    q = {"quant": inp.quant, "kv": inp.kv_dtype, "ctx": str(inp.context), "batch": str(inp.batch),
         "attn": inp.attn, "gpu": inp.gpu_key or state.CUSTOM_GPU}
    if model_choice != state.CUSTOM_MODEL:
        q = {"model": model_choice, **q}
    if inp.gpu_key is None:
        q["mem"] = f"{inp.capacity_bytes / GiB:g}"
    return q


# ---------------------------------------------------------------------------- state

def init_state() -> None:
    """Fill session state: saved inputs from another page, then the query string, then defaults."""
    ss = st.session_state
    saved = ss.get(_SAVED, {})
    for k in _WIDGET_KEYS:
        if k not in ss and k in saved:
            ss[k] = saved[k]
    if not ss.get(state.QP_LOADED):
        ss[state.QP_LOADED] = True
        parsed = _parse_query(dict(st.query_params.to_dict()))
        if parsed.get(state.CONTEXT):
            ss.pop(state.CTX_SLIDER, None)
            ss.pop(state.CTX_TEXT, None)
        ss.update(parsed)
    for k, v in state.DEFAULTS.items():
        ss.setdefault(k, v)
    ss.setdefault(state.CTX_SLIDER, state.nearest_stop(ss[state.CONTEXT]))
    ss.setdefault(state.CTX_TEXT, tokens_label(ss[state.CONTEXT]))
    ss.setdefault(state.CTX_ERROR, None)


def _on_slider() -> None:
    ss = st.session_state
    ss[state.CONTEXT] = int(ss[state.CTX_SLIDER])
    ss[state.CTX_TEXT] = tokens_label(ss[state.CONTEXT])
    ss[state.CTX_ERROR] = None


def _on_text() -> None:
    ss = st.session_state
    text = ss[state.CTX_TEXT]
    try:
        ctx = parse_context(text)
        if ctx > state.MAX_CONTEXT:
            raise estimator.InvalidSpecError(
                f"context must be at most {state.MAX_CONTEXT:,} tokens (1M): {text!r}")
    except estimator.EstimatorError as e:
        ss[state.CTX_ERROR] = str(e)
        return
    ss[state.CONTEXT] = ctx
    ss[state.CTX_SLIDER] = state.nearest_stop(ctx)
    ss[state.CTX_ERROR] = None


# ---------------------------------------------------------------------------- widgets

def _custom_model() -> Any:
    """ModelSpec from the uploaded file or pasted text; st.error + st.stop on bad input."""
    up = st.file_uploader("config.json", type=["json"], key=state.CONFIG_UPLOAD, max_upload_size=2,
                          help="A Hugging Face config.json of a Llama-family decoder (max 1 MiB).")
    st.text_area("…or paste it", key=state.CONFIG_PASTE, height=110,
                 placeholder='{"model_type": "llama", "hidden_size": 3072, ...}')
    if up is not None:
        data: bytes | str = up.getvalue()
        name = up.name.removesuffix(".json")
    else:
        data = st.session_state.get(state.CONFIG_PASTE) or ""
        name = "pasted config"
    if not data or not str(data).strip():
        return None
    try:
        # parse_config_text caps the size (1 MiB) and bounds every field, so a config with
        # absurd numbers is refused here instead of stalling the sweeps.
        spec = estimator.parse_config_text(data, name=name)
    except estimator.EstimatorError as e:
        return e
    return spec


def sidebar() -> Inputs:
    """Draw the calculator's inputs in the sidebar and return them (stops the page on bad input)."""
    init_state()
    ss = st.session_state
    sb = st.sidebar
    with sb:
        st.subheader("Model")
        choice = st.selectbox("Model", [*estimator.PRESETS, state.CUSTOM_MODEL], key=state.MODEL,
                              format_func=MODEL_LABELS.get, label_visibility="collapsed")
        model: Any = choice
        label = MODEL_LABELS.get(choice, choice)
        if choice == state.CUSTOM_MODEL:
            model = _custom_model()
        st.subheader("Target GPU")
        gkey = st.selectbox("GPU", [*gpu_keys(), state.CUSTOM_GPU], key=state.GPU,
                            format_func=gpu_label, label_visibility="collapsed")
        if gkey == state.CUSTOM_GPU:
            mem = st.number_input("GPU memory (GiB)", min_value=0.25, max_value=4096.0, step=1.0,
                                  key=state.GPU_MEM_GIB)
            capacity, cap_label, gpu_key = int(mem * GiB), f"{mem:g} GiB GPU", None
        else:
            g = gpu_by_key(gkey)
            capacity, cap_label, gpu_key = g.memory_bytes, short_gpu_name(g.name), gkey
        st.subheader("Precision")
        quant = st.selectbox("Weight quantization", estimator.TRANSFORMERS_QUANTS, key=state.QUANT,
                             format_func=quant_label)
        kv = st.selectbox("KV-cache dtype", estimator.KV_DTYPES, key=state.KV_DTYPE,
                          format_func=lambda k: KV_LABELS.get(k, k))
        st.subheader("Workload")
        st.select_slider("Context (tokens)", options=state.CONTEXT_STOPS, key=state.CTX_SLIDER,
                         format_func=tokens_label, on_change=_on_slider)
        st.text_input("Exact context", key=state.CTX_TEXT, on_change=_on_text,
                      help="Any token count up to 1M: 8k, 32768, 100k. k = 1024 tokens.")
        if ss.get(state.CTX_ERROR):
            st.error(ss[state.CTX_ERROR])
        batch = st.number_input("Batch (sequences)", min_value=1, max_value=state.MAX_BATCH, step=1,
                                key=state.BATCH)
        attn = st.radio("Attention", list(ATTN_LABELS), key=state.ATTN, horizontal=True,
                        format_func=ATTN_LABELS.get,
                        help="SDPA (the transformers default) runs fused kernels that avoid the full "
                             "score matrix where the GPU supports them; eager attention holds "
                             "heads × context² scores per layer at prefill.")
    ss[_SAVED] = {k: ss[k] for k in _WIDGET_KEYS if k in ss}

    if isinstance(model, estimator.EstimatorError):
        st.error(f"Could not read this config.json: {model}")
        st.stop()
    if model is None:
        st.info("Upload or paste a Hugging Face `config.json` in the sidebar to size a custom model.")
        st.stop()
    if not isinstance(model, str):
        label = model.name if model.name not in ("custom", "pasted config") else "Custom model"
    inp = Inputs(model=model, model_key=model_key(model), model_label=label, quant=quant, kv_dtype=kv,
                 context=int(ss[state.CONTEXT]), batch=int(batch), attn=attn, gpu_key=gpu_key,
                 capacity_bytes=capacity, capacity_label=cap_label)
    want = query_for(inp, choice)
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)
    ss[state.SETTINGS] = inp.settings()
    return inp

