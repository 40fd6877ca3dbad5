"""Settings of one measured point: the estimator's ``Settings`` plus ``RuntimeOptions``.

A point is stored (JSONL ``settings``) as the estimator's ``Settings`` keys (docs/api.md), with the
model by its reference (preset name or config path), plus the runtime-only options ``device``,
``weights`` and ``isolation``. ``make_settings`` fills the defaults (the estimator's, one set) and
validates: the shared fields by building the estimator's ``Settings`` (one validator), then what
only the runtime limits (the quantizations it can load, DynamicCache, no padding). So a
measurement and an estimate of the same point match field by field.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

from estimator.errors import EstimatorError, InvalidSpecError
from estimator.estimate import ATTN_IMPLS, BNB_COMPUTE_DTYPES, LOGITS_MODES, Settings
from estimator.model import DEFAULT_PRESET, load_model
from estimator.quant import QUANTS, compute_dtype
from estimator.report import ESTIMATE_KEYS
from estimator.units import parse_context, parse_int, shown

# Quants the reference runtime can load through transformers (docs/api.md names). fp8, GPTQ
# and AWQ need kernels or checkpoints this runtime does not build.
RUNTIME_QUANTS = ("fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq", "fp4", "fp4-dq")
BNB_QUANTS = ("int8", "nf4", "nf4-dq", "fp4", "fp4-dq")
DEVICES = ("cuda", "cpu", "trace")
ISOLATIONS = ("process", "shared-process", "in-process")
# The estimator's choices, re-exported for the runtime CLI's --help.
ATTNS, COMPUTE_DTYPES, LOGITS = ATTN_IMPLS, BNB_COMPUTE_DTYPES, LOGITS_MODES
# The Settings fields a record stores (the model by its reference; max_cache_len and gpu are the
# estimator's only: the runtime measures DynamicCache on the device it runs on).
ESTIMATOR_KEYS = ("model",) + tuple(k for k in ESTIMATE_KEYS if k != "max_cache_len")


class SettingsError(ValueError):
    """Bad input; the message names the field and the value."""


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """What only a measurement has: where it runs, which weights, how it is isolated."""

    device: str = "trace"
    weights: str = "random"  # "random", a local checkpoint folder, or a hub id
    isolation: str = "in-process"  # "process", "shared-process" or "in-process"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise SettingsError(f"device must be one of {', '.join(DEVICES)}: {shown(self.device)}")
        if self.isolation not in ISOLATIONS:
            raise SettingsError(f"isolation must be one of {', '.join(ISOLATIONS)}: {shown(self.isolation)}")
        w = self.weights
        if not isinstance(w, str) or not (w == "random" or os.path.isdir(w) or _HUB_ID.match(w)):
            raise SettingsError(
                f"weights must be 'random', an existing local checkpoint folder or a hub id: {shown(w)}"
            )


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings)}
DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_PRESET,
    **{k: _FIELD_DEFAULTS[k] for k in ESTIMATOR_KEYS[1:]},
    "engine": "transformers",
    **{f.name: f.default for f in dataclasses.fields(RuntimeOptions)},
}

# Keys that identify a point in a sweep (resume matches on these).
POINT_KEYS = ESTIMATOR_KEYS + ("engine", "device", "weights")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name", as on the Hugging Face hub


def _int(s: dict, key: str) -> None:
    """Parse an integer field in place: ints, or ASCII text ("8192"; "8K" for context). The range is
    the estimator's (``Settings``)."""
    v = s[key]
    try:
        s[key] = parse_context(v, key) if key == "context" else parse_int(v, key)
    except InvalidSpecError:
        what = "a positive token count like 8192 or 8K" if key == "context" else "an integer"
        raise SettingsError(f"{key} must be {what}: {shown(v)}") from None


def make_settings(**kw: Any) -> dict[str, Any]:
    """Fill the defaults and validate; the record's settings dict. Raises SettingsError naming the
    field and the value."""
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
    for key in ("context", "batch", "new_tokens") + (("prefill_chunk",) if s["prefill_chunk"] is not None else ()):
        _int(s, key)
    RuntimeOptions(s["device"], s["weights"], s["isolation"])
    if s["engine"] != "transformers":
        raise SettingsError(f"engine must be transformers: {shown(s['engine'])}")
    if not isinstance(s["model"], str) or not s["model"]:
        raise SettingsError(f"model must be a preset name or a path to a config.json: {shown(s['model'])}")
    if s["padding"] in ("false", 0):
        s["padding"] = False
    try:
        spec = load_model(s["model"])
        Settings(model=spec, **{k: s[k] for k in ESTIMATOR_KEYS[1:]})  # the estimator's validator
    except EstimatorError as e:
        raise SettingsError(str(e)) from None
    # What the runtime measures, narrower than what the estimator models:
    if s["cache"] != "dynamic":
        raise SettingsError(
            f"cache: the reference runtime measures DynamicCache only (generate() default): {shown(s['cache'])}"
        )
    if s["padding"]:
        raise SettingsError(f"padding: the reference runtime measures unpadded batches only: {shown(s['padding'])}")
    if s["kv_dtype"] != "auto" and s["kv_dtype"] != compute_dtype(s["quant"]):
        raise SettingsError(
            f"kv_dtype: DynamicCache stores K/V in the compute dtype ({compute_dtype(s['quant'])}); "
            f"use auto: {shown(s['kv_dtype'])}"
        )
    return s


def point_key(s: dict[str, Any]) -> tuple:
    """What identifies a point for sweep resume."""
    return tuple((k, s.get(k, DEFAULTS[k])) for k in POINT_KEYS)
