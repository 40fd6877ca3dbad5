"""Widget keys, defaults and the URL query-string mapping shared by pages and tests.

Tests address widgets by these keys (``at.selectbox(key=state.QUANT)``), so renaming one is
an interface change.
"""

from __future__ import annotations

import math

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

# Non-widget session keys.
CONTEXT = "context"            # canonical context in tokens (int); the slider and text field mirror it
CTX_ERROR = "ctx_error"        # message of the last rejected typed context, or None
SETTINGS = "settings"          # last settings dict the calculator computed (read by other pages)
QP_LOADED = "_qp_loaded"       # query string already applied to this session
MEASURE_RESULT = "measure_result"
DETAILS_TAB = "details_tab"    # which detail tab of the calculator is open (its label)
DETAIL_TABS = ("Memory vs context", "Quantizations", "GPUs", "How is this computed", "Export")

CUSTOM_MODEL = "custom"        # MODEL value meaning "uploaded or pasted config.json"
CUSTOM_GPU = "custom"          # GPU value meaning "type a memory size"

DEFAULTS = {
    MODEL: "llama-3.2-3b",
    QUANT: "bf16",
    KV_DTYPE: "auto",
    CONTEXT: 8192,
    BATCH: 1,
    ATTN: "sdpa",
    GPU: "rtx-4090-24gb",
    GPU_MEM_GIB: 24.0,
}

MIN_CONTEXT = 1
MAX_CONTEXT = 1 << 20          # the estimator's max_context cap
MAX_BATCH = 1024

# Log-spaced stops of the context slider: 1K, 1.5K, 2K, 3K, ... 96K, 128K.
CONTEXT_STOPS = tuple(sorted({int(m * 2**e) for e in range(10, 18) for m in (1, 1.5) if m * 2**e <= 131072}))
# Contexts of the memory-vs-context chart and the CSV sweep: 64 log-spaced points, 1K..128K.
SWEEP_CONTEXTS = tuple(sorted({int(round(1024 * 2 ** (7 * i / 63))) for i in range(64)}))

# URL query parameter -> session key.
QUERY_KEYS = {"model": MODEL, "quant": QUANT, "kv": KV_DTYPE, "ctx": CONTEXT, "batch": BATCH,
              "attn": ATTN, "gpu": GPU, "mem": GPU_MEM_GIB}


def nearest_stop(tokens: int) -> int:
    """The slider stop closest to ``tokens`` on a log scale."""
    t = max(1, tokens)
    return min(CONTEXT_STOPS, key=lambda s: abs(math.log(s) - math.log(t)))
