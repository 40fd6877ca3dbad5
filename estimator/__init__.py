"""GPU memory estimator for LLM inference (pure Python, standard library only).

>>> from estimator import estimate
>>> e = estimate("llama-3.2-3b", quant="bf16", context=8192, gpu="rtx-4090-24gb")
>>> e.weights_bytes, e.fits
(6425500160, True)

See docs/api.md for the whole API and docs/memory-model.md for how each number is derived.
"""

from .errors import EstimatorError, InvalidSpecError, UnknownNameError
from .estimate import Estimate, Settings, estimate, estimate_settings, make_settings
from .gpus import Gpu, get_gpu, gpu_catalog
from .kv import KV_DTYPES, kv_bytes_per_token, kv_cache_bytes
from .model import (
    DEFAULT_PRESET,
    PRESETS,
    ModelSpec,
    from_hf_config,
    load_model,
    load_preset,
    param_breakdown,
    parse_config_text,
)
from .quant import (
    PRECISION_ORDER,
    QUANTS,
    TRANSFORMERS_QUANTS,
    effective_bits_per_param,
    get_quant,
    weight_bytes,
    weight_tensors,
)
from .report import COUNTERS
from .solve import best_quant, context_grid, max_batch, max_context, smallest_gpu, sweep
from .training import TrainingEstimate, estimate_training

__all__ = [
    "COUNTERS",
    "DEFAULT_PRESET",
    "Estimate",
    "EstimatorError",
    "Gpu",
    "InvalidSpecError",
    "KV_DTYPES",
    "ModelSpec",
    "PRECISION_ORDER",
    "PRESETS",
    "QUANTS",
    "Settings",
    "TRANSFORMERS_QUANTS",
    "TrainingEstimate",
    "UnknownNameError",
    "best_quant",
    "context_grid",
    "effective_bits_per_param",
    "estimate",
    "estimate_settings",
    "estimate_training",
    "from_hf_config",
    "get_gpu",
    "get_quant",
    "gpu_catalog",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "load_model",
    "load_preset",
    "make_settings",
    "max_batch",
    "max_context",
    "param_breakdown",
    "parse_config_text",
    "smallest_gpu",
    "sweep",
    "weight_bytes",
    "weight_tensors",
]
