"""Widget keys, defaults and the URL query-string mapping shared by pages and tests.

Tests address widgets by these keys (``at.selectbox(key=state.QUANT)``), so renaming one is
an interface change.
"""

from __future__ import annotations

import dataclasses
import math

import estimator
from estimator.estimate import MAX_CONTEXT as ESTIMATOR_MAX_CONTEXT

# Widget keys (sidebar of the calculator page).
MODEL = "model"
CONFIG_UPLOAD = "config_upload"
CONFIG_PASTE = "config_paste"
QUANT = "quant"
KV_DTYPE = "kv_dtype"
CTX_SLIDER = "ctx_slider"
CTX_TEXT = "ctx_text"
BATCH = "batch"
ATTN = "attn"
GPU = "gpu"
GPU_MEM_GIB = "gpu_mem_gib"
KEEP_FREE_GIB = "keep_free_gib"  # GPU memory kept free for other programs (desktop, browser)
PREFILL_CHUNK = "prefill_chunk"  # prompt tokens per prefill forward (0: the whole prompt at once)

# Non-widget session keys.
CONTEXT = "context"  # canonical context in tokens (int); the slider and text field mirror it
CTX_ERROR = "ctx_error"  # message of the last rejected typed context, or None
WINDOW = "window"  # the chosen model's window (largest context), from the last run
SETTINGS = "settings"  # last settings dict the calculator computed (read by other pages)
QP_LOADED = "_qp_loaded"  # query string already applied to this session
MEASURE_RESULT = "measure_result"
DETAILS_TAB = "details_tab"  # which detail tab of the calculator is open (its label)
# Short labels: all five fit one 390 px phone row (tests/app/test_e2e_browser.py checks).
DETAIL_TABS = ("Context chart", "Quantizations", "GPUs", "Method", "Export")

CUSTOM_MODEL = "custom"  # MODEL value meaning "uploaded or pasted config.json"
MODEL_LABELS = {
    "llama-3.2-1b": "Llama 3.2 1B",
    "llama-3.2-3b": "Llama 3.2 3B",
    "llama-3.1-8b": "Llama 3.1 8B",
    CUSTOM_MODEL: "Custom config.json…",
}
CUSTOM_GPU = "custom"  # GPU value meaning "type a memory size"

DEFAULTS = {
    MODEL: "llama-3.2-3b",
    QUANT: "bf16",
    KV_DTYPE: "auto",
    CONTEXT: 8192,
    BATCH: 1,
    ATTN: "sdpa",
    GPU: "rtx-4090-24gb",
    GPU_MEM_GIB: 24.0,
    KEEP_FREE_GIB: 0.0,
    PREFILL_CHUNK: 0,
}
PREFILL_CHUNKS = (0, 256, 512, 1024, 2048, 4096)  # the chunk choices (0 = no chunking)
MAX_KEEP_FREE_GIB = 64.0

# The context is the window (prompt + generated tokens), as vLLM's max_model_len; the app keeps
# transformers' default of 32 new tokens, so a context must hold them and a one-token prompt.
NEW_TOKENS = next(f.default for f in dataclasses.fields(estimator.Settings) if f.name == "new_tokens")
MIN_CONTEXT = NEW_TOKENS + 1
MAX_CONTEXT = ESTIMATOR_MAX_CONTEXT  # 16M tokens: no context above it is ever valid
MAX_BATCH = 1024
MAX_QUERY_TEXT = 64  # longer query values are ignored unread
# Layers of an uploaded config.json the app computes (the library takes up to 4,096): twice the
# deepest public dense decoder (Llama 3.1 405B, 126 layers). Per-session work grows with the layers:
# measured on this 2-core machine, the context chart's sweep of a 4,096-layer config cost 5.1 s of
# server CPU, of a 256-layer one 0.5 s, a 128-layer one 0.37 s (app.compute.sweep_rows, cold).
MAX_APP_LAYERS = 256

# URL query parameter -> session key.
QUERY_KEYS = {
    "model": MODEL,
    "quant": QUANT,
    "kv": KV_DTYPE,
    "ctx": CONTEXT,
    "batch": BATCH,
    "attn": ATTN,
    "gpu": GPU,
    "mem": GPU_MEM_GIB,
}


def window_of(spec: estimator.ModelSpec) -> int:
    """The largest context of a model: its window (``max_position_embeddings``), at most 16M."""
    return min(spec.max_position_embeddings, MAX_CONTEXT)


def context_stops(window: int) -> tuple[int, ...]:
    """Slider stops up to ``window``: 1K, 1.5K, 2K, 3K, ... and the window itself. A window under
    1K gets stops from just above the new tokens instead."""
    lo = 1024 if window > 1024 else MIN_CONTEXT
    stops = {int(m * 2**e) for e in range(5, 25) for m in (1, 1.5)}
    return tuple(sorted({s for s in stops if lo <= s < window} | {max(window, MIN_CONTEXT)}))


def sweep_contexts(window: int, points: int = 64) -> tuple[int, ...]:
    """Contexts of the memory-vs-context chart and the CSV sweep: ``points`` log-spaced contexts
    up to the window itself, from 1K (for a window under 16K, from a sixteenth of it, and never at or
    below the new tokens). Empty when the window cannot hold a prompt and the new tokens."""
    if window < MIN_CONTEXT:
        return ()
    lo = min(1024, max(MIN_CONTEXT, window // 16))
    if window == lo:
        return (lo,)
    r = math.log2(window / lo)
    return tuple(sorted({min(window, int(round(lo * 2 ** (r * i / (points - 1))))) for i in range(points)} | {window}))


# The slider stops and the chart's contexts for a 128K window (Llama 3.2's): 1K, 1.5K, ... 96K, 128K.
CONTEXT_STOPS = context_stops(131072)
SWEEP_CONTEXTS = sweep_contexts(131072)


def nearest_stop(tokens: int, stops: tuple[int, ...] = CONTEXT_STOPS) -> int:
    """The slider stop closest to ``tokens`` on a log scale."""
    t = max(1, tokens)
    return min(stops, key=lambda s: abs(math.log(s) - math.log(t)))
