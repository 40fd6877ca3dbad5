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
from estimator.units import GiB, one_line, parse_context, parse_int, shown

from . import state
from .compute import gpu_by_key, gpu_keys, model_key, spec_of
from .escape import md
from .figures import tokens_label
from .tables import gpu_display_name, short_gpu_name

MODEL_LABELS = state.MODEL_LABELS
KV_LABELS = {
    "auto": "auto (compute dtype)",
    "fp32": "fp32",
    "bf16": "bf16",
    "fp16": "fp16",
    "fp8": "fp8",
    "int8": "int8",
    "int4": "int4",
}
ATTN_LABELS = {"sdpa": "SDPA", "eager": "Eager"}
_WIDGET_KEYS = (
    state.MODEL,
    state.QUANT,
    state.KV_DTYPE,
    state.CTX_SLIDER,
    state.CTX_TEXT,
    state.BATCH,
    state.ATTN,
    state.GPU,
    state.GPU_MEM_GIB,
    state.KEEP_FREE_GIB,
    state.PREFILL_CHUNK,
    state.CONFIG_PASTE,
)
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
    gpu_key: str | None  # catalog key, or None for a custom size
    capacity_bytes: int  # what the model may use: the GPU's memory less keep_free_bytes
    capacity_label: str  # short GPU name for captions
    keep_free_bytes: int = 0  # kept free for other programs (desktop, browser, another process)
    prefill_chunk: int | None = None  # prompt tokens per prefill forward (None: the whole prompt)

    def settings(self) -> dict[str, Any]:
        """Keyword arguments of ``estimator.estimate`` (model as its cache key)."""
        return {
            "model": self.model_key,
            "quant": self.quant,
            "context": self.context,
            "batch": self.batch,
            "kv_dtype": self.kv_dtype,
            "attn": self.attn,
            "gpu": self.gpu_key,
            "gpu_memory_bytes": None if self.gpu_key and not self.keep_free_bytes else self.capacity_bytes,
            "prefill_chunk": self.prefill_chunk,
        }


def quant_label(q: str) -> str:
    return estimator.QUANTS[q].label


def quant_choice_label(q: str) -> str:
    """The weight-quantization choice in plain words first: "4-bit · bnb NF4"."""
    return f"{estimator.QUANTS[q].bits}-bit · {quant_label(q)}"


QUANT_HELP = (
    "Bits stored per weight: 16-bit is the checkpoint as published (BF16); 8-bit and 4-bit "
    "quantize the linear layers (the embedding and norms stay 16-bit). Fewer bits, less memory. "
    + " ".join(f"{quant_label(q)}: {estimator.QUANTS[q].note}." for q in estimator.TRANSFORMERS_QUANTS)
)


def gpu_label(key: str) -> str:
    if key == state.CUSTOM_GPU:
        return "Custom memory size…"
    g = gpu_by_key(key)
    return gpu_display_name(g.name, g.memory_bytes)


# ---------------------------------------------------------------------------- query string

# GPU memory in GiB as a query value: ASCII digits only (float() also takes "١٢", "nan", "1e400").
_MEM_RE = re.compile(r"[0-9]{1,4}(\.[0-9]{1,6})?", re.ASCII)
MIN_MEM_GIB, MAX_MEM_GIB = 0.25, 4096.0


def parse_typed_context(text: object, window: int) -> int:
    """A typed context (``8k``, ``32768``) that fits the model's window and holds the new tokens;
    InvalidSpecError naming the window otherwise."""
    ctx = parse_context(text)  # type: ignore[arg-type]  (refuses non-strings itself)
    if ctx > window:
        raise estimator.InvalidSpecError(
            f"context must be at most the model's window (max_position_embeddings {window:,} tokens): {shown(text)}"
        )
    if ctx < state.MIN_CONTEXT:
        raise estimator.InvalidSpecError(
            f"context must be at least {state.MIN_CONTEXT} tokens: the window holds the prompt and the "
            f"{state.NEW_TOKENS} new tokens: {shown(text)}"
        )
    return ctx


def parse_query(params: dict[str, str]) -> dict[str, Any]:
    """Session values from query parameters; unknown, malformed or out-of-range values are ignored."""

    def get(k: str) -> str | None:
        v = params.get(k)
        return v if isinstance(v, str) and len(v) <= state.MAX_QUERY_TEXT else None

    out: dict[str, Any] = {}
    v = get("model")
    if v in estimator.PRESETS or v == state.CUSTOM_MODEL:
        out[state.MODEL] = v
    v = get("quant")
    if v in estimator.TRANSFORMERS_QUANTS:
        out[state.QUANT] = v
    v = get("kv")
    if v in estimator.KV_DTYPES:
        out[state.KV_DTYPE] = v
    v = get("attn")
    if v in ATTN_LABELS:
        out[state.ATTN] = v
    v = get("gpu")
    if v is not None and (v == state.CUSTOM_GPU or v in gpu_keys()):
        out[state.GPU] = v
    preset = out.get(state.MODEL)
    window = state.window_of(
        estimator.load_preset(preset if preset in estimator.PRESETS else state.DEFAULTS[state.MODEL])
    )
    try:
        out[state.CONTEXT] = parse_typed_context(get("ctx"), window)
    except estimator.EstimatorError:
        pass
    try:
        out[state.BATCH] = parse_int(get("batch"), "batch", 1, state.MAX_BATCH)  # type: ignore[arg-type]
    except estimator.EstimatorError:
        pass
    v = get("mem")
    if v is not None and _MEM_RE.fullmatch(v) and MIN_MEM_GIB <= float(v) <= MAX_MEM_GIB:
        out[state.GPU_MEM_GIB] = float(v)
    v = get("chunk")
    if v is not None and v.isascii() and v.isdigit() and len(v) <= 5 and int(v) in state.PREFILL_CHUNKS:
        out[state.PREFILL_CHUNK] = int(v)
    v = get("free")
    if v is not None and _MEM_RE.fullmatch(v) and 0 <= float(v) <= state.MAX_KEEP_FREE_GIB:
        out[state.KEEP_FREE_GIB] = float(v)
    return out


def query_for(inp: Inputs, model_choice: str) -> dict[str, str]:
    q = {
        "quant": inp.quant,
        "kv": inp.kv_dtype,
        "ctx": str(inp.context),
        "batch": str(inp.batch),
        "attn": inp.attn,
        "gpu": inp.gpu_key or state.CUSTOM_GPU,
    }
    # A custom config.json cannot travel in a link: the link says "custom", and opening it asks for
    # the file again instead of silently showing a preset.
    q = {"model": model_choice, **q}
    if inp.gpu_key is None:
        q["mem"] = f"{(inp.capacity_bytes + inp.keep_free_bytes) / GiB:g}"
    if inp.keep_free_bytes:
        q["free"] = f"{inp.keep_free_bytes / GiB:g}"
    if inp.prefill_chunk:
        q["chunk"] = str(inp.prefill_chunk)
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
        parsed = parse_query(dict(st.query_params.to_dict()))
        if parsed.get(state.CONTEXT):
            ss.pop(state.CTX_SLIDER, None)
            ss.pop(state.CTX_TEXT, None)
        ss.update(parsed)
    for k, v in state.DEFAULTS.items():
        ss.setdefault(k, v)
    ss.setdefault(state.CTX_SLIDER, state.nearest_stop(ss[state.CONTEXT]))
    ss.setdefault(state.CTX_TEXT, tokens_label(ss[state.CONTEXT]))
    ss.setdefault(state.CTX_ERROR, None)


def apply_change(change: dict[str, Any]) -> None:
    """A one-click remedy (``compute.remedies``): set these inputs; a context also moves the
    typed field and the slider. Runs as a button callback, before the widgets are drawn."""
    ss = st.session_state
    for k, v in change.items():
        if k == state.CONTEXT:
            window = ss.get(state.WINDOW) or state.window_of(estimator.load_preset(state.DEFAULTS[state.MODEL]))
            ss[state.CONTEXT], ss[state.CTX_TEXT], ss[state.CTX_ERROR] = int(v), tokens_label(int(v)), None
            ss[state.CTX_SLIDER] = state.nearest_stop(int(v), state.context_stops(window))
        else:
            ss[k] = v


def _on_slider() -> None:
    ss = st.session_state
    ss[state.CONTEXT] = int(ss[state.CTX_SLIDER])
    ss[state.CTX_TEXT] = tokens_label(ss[state.CONTEXT])
    ss[state.CTX_ERROR] = None


def _on_text() -> None:
    ss = st.session_state
    text = ss[state.CTX_TEXT]
    window = ss.get(state.WINDOW) or state.window_of(estimator.load_preset(state.DEFAULTS[state.MODEL]))
    try:
        ctx = parse_typed_context(text, window)
    except estimator.EstimatorError as e:
        ss[state.CTX_ERROR] = one_line(str(e))
        return
    ss[state.CONTEXT] = ctx
    ss[state.CTX_SLIDER] = state.nearest_stop(ctx, state.context_stops(window))
    ss[state.CTX_ERROR] = None


def _fit_context_to(window: int) -> str | None:
    """Keep the context within ``window`` (a model with a shorter window was chosen) and the slider
    on one of its stops; called before the context widgets are drawn. Returns a note if it moved."""
    ss = st.session_state
    note = None
    ctx = ss[state.CONTEXT]
    if window >= state.MIN_CONTEXT and not state.MIN_CONTEXT <= ctx <= window:
        new = min(max(ctx, state.MIN_CONTEXT), window)
        note = f"Context set to {new:,} tokens: this model's window is {window:,} tokens."
        ss[state.CONTEXT], ss[state.CTX_TEXT], ss[state.CTX_ERROR] = new, tokens_label(new), None
    stops = state.context_stops(window)
    if ss.get(state.CTX_SLIDER) not in stops or note:
        ss[state.CTX_SLIDER] = state.nearest_stop(ss[state.CONTEXT], stops)
    return note


# ---------------------------------------------------------------------------- widgets


def _custom_model() -> Any:
    """ModelSpec from the uploaded file or pasted text; st.error + st.stop on bad input."""
    up = st.file_uploader(
        "config.json",
        type=["json"],
        key=state.CONFIG_UPLOAD,
        max_upload_size=1,
        help="A Hugging Face config.json of a Llama-family decoder (max 1 MiB).",
    )
    st.text_area(
        "…or paste it",
        key=state.CONFIG_PASTE,
        height=110,
        placeholder='{"model_type": "llama", "hidden_size": 3072, ...}',
    )
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
    if spec.num_hidden_layers > state.MAX_APP_LAYERS:
        return estimator.InvalidSpecError(
            f"num_hidden_layers must be at most {state.MAX_APP_LAYERS:,} here (the command line takes up "
            f"to 4,096): {spec.num_hidden_layers:,}"
        )
    return spec


def sidebar() -> Inputs:
    """Draw the calculator's inputs in the sidebar and return them (stops the page on bad input)."""
    init_state()
    ss = st.session_state
    sb = st.sidebar
    with sb:
        st.subheader("Model")
        choice = st.selectbox(
            "Model",
            [*estimator.PRESETS, state.CUSTOM_MODEL],
            key=state.MODEL,
            format_func=MODEL_LABELS.get,
            label_visibility="collapsed",
        )
        model: Any = choice
        label = MODEL_LABELS.get(choice, choice)
        if choice == state.CUSTOM_MODEL:
            model = _custom_model()
            spec = model if isinstance(model, estimator.ModelSpec) else None
        else:
            spec = spec_of(choice)
        # The context is the window: it stops at the model's max_position_embeddings.
        window = (
            state.window_of(spec)
            if spec is not None
            else (ss.get(state.WINDOW) or state.window_of(spec_of(state.DEFAULTS[state.MODEL])))
        )
        ss[state.WINDOW] = window
        st.subheader("Target GPU")
        gkey = st.selectbox(
            "GPU", [*gpu_keys(), state.CUSTOM_GPU], key=state.GPU, format_func=gpu_label, label_visibility="collapsed"
        )
        if gkey == state.CUSTOM_GPU:
            mem = st.number_input("GPU memory (GiB)", min_value=0.25, max_value=4096.0, step=1.0, key=state.GPU_MEM_GIB)
            capacity, cap_label, gpu_key = int(mem * GiB), f"{mem:g} GiB GPU", None
        else:
            g = gpu_by_key(gkey)
            capacity, cap_label, gpu_key = g.memory_bytes, short_gpu_name(g.name), gkey
        keep = st.number_input(
            "Keep free (GiB)",
            min_value=0.0,
            max_value=state.MAX_KEEP_FREE_GIB,
            step=0.5,
            key=state.KEEP_FREE_GIB,
            help="GPU memory other programs use at the same time (a laptop's desktop and "
            "browser, another model): the model may use the rest.",
        )
        keep_bytes = int(keep * GiB)
        if keep_bytes >= capacity:
            st.error(f"Keep free ({keep:g} GiB) must be less than the GPU's {capacity / GiB:g} GiB.")
            st.stop()
        if keep_bytes:
            capacity, cap_label = capacity - keep_bytes, f"{cap_label} less {keep:g} GiB kept free"
        st.subheader("Precision")
        quant = st.selectbox(
            "Weight quantization",
            estimator.TRANSFORMERS_QUANTS,
            key=state.QUANT,
            format_func=quant_choice_label,
            help=QUANT_HELP,
        )
        kv = st.selectbox(
            "KV-cache dtype", estimator.KV_DTYPES, key=state.KV_DTYPE, format_func=lambda k: KV_LABELS.get(k, k)
        )
        st.subheader("Workload")
        moved = _fit_context_to(window)
        st.select_slider(
            "Context (tokens)",
            options=state.context_stops(window),
            key=state.CTX_SLIDER,
            format_func=tokens_label,
            on_change=_on_slider,
            help=f"The window: prompt plus the {state.NEW_TOKENS} generated tokens, as vLLM's "
            "max_model_len or llama.cpp's n_ctx.",
        )
        st.text_input(
            "Exact context",
            key=state.CTX_TEXT,
            on_change=_on_text,
            help=f"Any token count up to this model's window ({window:,} tokens): 8k, 32768, 100k. k = 1024 tokens.",
        )
        if ss.get(state.CTX_ERROR):
            st.error(md(ss[state.CTX_ERROR]))
        elif moved:
            st.info(moved)
        batch = st.number_input("Batch (sequences)", min_value=1, max_value=state.MAX_BATCH, step=1, key=state.BATCH)
        chunk = st.selectbox(
            "Prefill",
            state.PREFILL_CHUNKS,
            key=state.PREFILL_CHUNK,
            format_func=lambda c: f"in chunks of {c:,} tokens" if c else "whole prompt at once",
            help="Feed the prompt in chunks (transformers' generate with prefill_chunk_size): "
            "each forward then holds one chunk's activations, and attention scores of "
            "chunk x context instead of prompt x context.",
        )
        attn = st.radio(
            "Attention",
            list(ATTN_LABELS),
            key=state.ATTN,
            horizontal=True,
            format_func=ATTN_LABELS.get,
            help="SDPA (the transformers default) runs fused kernels that avoid the full "
            "score matrix where the GPU supports them; eager attention holds "
            "heads × context² scores per layer at prefill.",
        )
    ss[_SAVED] = {k: ss[k] for k in _WIDGET_KEYS if k in ss}

    if isinstance(model, estimator.EstimatorError):
        st.error("Could not read this config.json: " + md(model))
        st.stop()
    if model is None:
        st.info(
            "Upload or paste a Hugging Face `config.json` in the sidebar to size a custom model"
            + (
                " (this link was made with one; a link cannot carry the file)."
                if st.query_params.get("model") == state.CUSTOM_MODEL
                else "."
            )
        )
        st.stop()
    if window < state.MIN_CONTEXT:
        st.error(
            f"This model's window ({window:,} tokens, max_position_embeddings) is too short: a context "
            f"holds at least one prompt token and the {state.NEW_TOKENS} new tokens."
        )
        st.stop()
    if not isinstance(model, str):
        label = model.name if model.name not in ("custom", "pasted config") else "Custom model"
    inp = Inputs(
        model=model,
        model_key=model_key(model),
        model_label=label,
        quant=quant,
        kv_dtype=kv,
        context=int(ss[state.CONTEXT]),
        batch=int(batch),
        attn=attn,
        gpu_key=gpu_key,
        capacity_bytes=capacity,
        capacity_label=cap_label,
        keep_free_bytes=keep_bytes,
        prefill_chunk=int(chunk) or None,
    )
    want = query_for(inp, choice)
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)
    ss[state.SETTINGS] = inp.settings()
    return inp
