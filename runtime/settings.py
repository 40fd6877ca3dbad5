"""Settings of one measured point, validated without importing torch.

The keys are the estimator's ``Settings`` keys (docs/api.md), plus the runtime-only keys
``device``, ``weights`` and ``isolation``, so that a measurement and an estimate of the same
point can be matched and subtracted field by field.
"""

from __future__ import annotations

import os
import re
from typing import Any

from estimator.quant import QUANTS
from estimator.errors import InvalidSpecError
from estimator.units import parse_context, parse_int, shown

# Quants the reference runtime can load through transformers (docs/api.md names). fp8, GPTQ
# and AWQ need kernels or checkpoints this runtime does not build.
RUNTIME_QUANTS = ("fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq", "fp4", "fp4-dq")
BNB_QUANTS = ("int8", "nf4", "nf4-dq", "fp4", "fp4-dq")
DEVICES = ("cuda", "cpu", "trace")
ATTNS = ("sdpa", "eager")
COMPUTE_DTYPES = ("bf16", "fp32", "fp16")
LOGITS = ("last", "full", "full-fp32")
ISOLATIONS = ("process", "shared-process", "in-process")

DEFAULTS: dict[str, Any] = {
    "model": "llama-3.2-3b",
    "quant": "bf16",
    "context": 8192,
    "batch": 1,
    "kv_dtype": "auto",
    "attn": "sdpa",
    "new_tokens": 32,
    "cache": "dynamic",
    "padding": False,
    "logits": "last",
    "prefill_chunk": None,
    "bnb_compute_dtype": "bf16",
    "engine": "transformers",
    # runtime-only
    "device": "trace",
    "weights": "random",
    "isolation": "in-process",
}

# Keys that identify a point in a sweep (resume matches on these).
POINT_KEYS = ("model", "quant", "context", "batch", "kv_dtype", "attn", "new_tokens", "cache", "padding",
              "logits", "prefill_chunk", "bnb_compute_dtype", "engine", "device", "weights")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name", as on the Hugging Face hub


class SettingsError(ValueError):
    """Bad input; the message names the field and the value."""


def compute_dtype(quant: str) -> str:
    """dtype of the unquantized parameters and activations: fp32 for fp32, fp16 for fp16, else bf16."""
    return {"fp32": "fp32", "fp16": "fp16"}.get(quant, "bf16")


def kv_dtype_resolved(s: dict[str, Any]) -> str:
    return compute_dtype(s["quant"]) if s["kv_dtype"] == "auto" else s["kv_dtype"]


def _int(s: dict, key: str, lo: int, hi: int | None = None) -> None:
    """Validate an integer field in place: ints, or ASCII text ("8192"; "8K" for context)."""
    v = s[key]
    try:
        s[key] = parse_context(v, key) if key == "context" else parse_int(v, key)
    except InvalidSpecError:
        what = "a positive token count like 8192 or 8K" if key == "context" else "an integer"
        raise SettingsError(f"{key} must be {what}: {shown(v)}") from None
    v = s[key]
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise SettingsError(f"{key} must be an integer {rng}: {shown(v)}")


def _choice(s: dict, key: str, choices: tuple) -> None:
    if s[key] not in choices:
        raise SettingsError(f"{key} must be one of {', '.join(map(str, choices))}: {shown(s[key])}")


def make_settings(**kw: Any) -> dict[str, Any]:
    """Fill defaults and validate. Raises SettingsError naming the field and value."""
    unknown = set(kw) - set(DEFAULTS)
    if unknown:
        k = sorted(unknown)[0]
        raise SettingsError(f"unknown setting {k!r}: {shown(kw[k])}")
    s = dict(DEFAULTS)
    s.update({k: v for k, v in kw.items() if v is not None or k == "prefill_chunk"})
    if s["quant"] not in RUNTIME_QUANTS:
        known = isinstance(s["quant"], str) and s["quant"] in QUANTS
        why = "is not loadable by the reference runtime" if known else "is unknown"
        raise SettingsError(f"quant {why}; use one of {', '.join(RUNTIME_QUANTS)}: {shown(s['quant'])}")
    _int(s, "context", 1, 1 << 20)
    _int(s, "batch", 1, 4096)
    _int(s, "new_tokens", 0, 1 << 16)
    if s["prefill_chunk"] is not None:
        _int(s, "prefill_chunk", 1, 1 << 20)
    _choice(s, "device", DEVICES)
    _choice(s, "attn", ATTNS)
    _choice(s, "bnb_compute_dtype", COMPUTE_DTYPES)
    _choice(s, "logits", LOGITS)
    _choice(s, "isolation", ISOLATIONS)
    if s["cache"] != "dynamic":
        raise SettingsError(f"cache: the reference runtime measures DynamicCache only (generate() default): {shown(s['cache'])}")
    if s["padding"] not in (False, "false", 0):
        raise SettingsError(f"padding: the reference runtime measures unpadded batches only: {shown(s['padding'])}")
    s["padding"] = False
    if s["engine"] != "transformers":
        raise SettingsError(f"engine must be transformers: {shown(s['engine'])}")
    if s["kv_dtype"] != "auto" and s["kv_dtype"] != compute_dtype(s["quant"]):
        raise SettingsError(
            f"kv_dtype: DynamicCache stores K/V in the compute dtype ({compute_dtype(s['quant'])}); "
            f"use auto: {shown(s['kv_dtype'])}")
    w = s["weights"]
    if not isinstance(w, str) or not (w == "random" or os.path.isdir(w) or _HUB_ID.match(w)):
        raise SettingsError(f"weights must be 'random', an existing local checkpoint folder or a hub id: {shown(w)}")
    if not isinstance(s["model"], str) or not s["model"]:
        raise SettingsError(f"model must be a preset name or a path to a config.json: {shown(s['model'])}")
    if s["new_tokens"] > s["context"] - 1:  # last: every single field is valid by now
        raise SettingsError(f"new_tokens must be at most context - 1 ({s['context'] - 1:,}): the context is the "
                            f"window (prompt + new tokens) and the prompt needs a token: {shown(s['new_tokens'])}")
    return s


def point_key(s: dict[str, Any]) -> tuple:
    """What identifies a point for sweep resume."""
    return tuple((k, s.get(k, DEFAULTS[k])) for k in POINT_KEYS)
