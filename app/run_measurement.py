"""Running the reference runtime on this machine's GPU from the app (validation page).

torch is never imported into the app's process: whether CUDA is usable is asked in a subprocess,
and only when torch and the runtime package are importable at all.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import streamlit as st

from . import compute

ROOT = Path(__file__).resolve().parents[1]
CUDA_ENV = "VRAM_APP_CUDA"  # "0"/"1" forces the answer (tests); unset: ask torch in a subprocess


def cuda_available() -> bool:
    """True when torch and the runtime are importable and torch sees a CUDA device."""
    forced = os.environ.get(CUDA_ENV)
    if forced is not None:
        return forced == "1"
    return _probe_cuda()


@st.cache_resource(show_spinner=False)
def _probe_cuda() -> bool:
    """Ask torch in a subprocess (once per server), so torch never loads into the app."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("runtime") is None:
        return False
    try:
        r = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.stdout.strip().endswith("True")


def measure_command(s: dict) -> list[str]:
    """The runtime CLI call that measures ``s`` (calculator settings) on the local GPU."""
    model = compute.model_from_key(s["model"])
    if not isinstance(model, str):
        raise ValueError("measurements need a preset model, not an uploaded config")
    return [
        sys.executable,
        "-m",
        "runtime",
        "measure",
        "--model",
        model,
        "--quant",
        s["quant"],
        "--context",
        str(s["context"]),
        "--batch",
        str(s["batch"]),
        "--kv-dtype",
        s["kv_dtype"],
        "--attn",
        s["attn"],
        "--device",
        "cuda",
        "--json",
    ]
