"""Training solvers: largest sequence length, largest micro-batch, smallest GPU, the method that
fits, and a sweep. Each asks ``estimate_train_settings`` (the same numbers as the report) and
judges a fit on device used (the point, as the inference solvers do).

The largest sequence length and micro-batch are binary searches: every term of a training step's
memory grows with the tokens of a micro-batch (saved activations, the loss's [N, V] tensors;
checked by a hypothesis property in tests/training), so "fits" is true up to a point and false
after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from ..estimate import PRE_SM80_ARCHS
from ..gpus import Gpu, get_gpu, gpu_catalog
from ..solve import largest_true
from .estimate import TrainingEstimate, estimate_train_settings, make_train_settings
from .settings import MAX_MICRO_BATCH, TrainSettings

# "Cheapest method that fits": the one that changes the model least, full fine-tuning, then LoRA
# (bf16 base), then QLoRA on an NF4 base; the first that fits is the answer.
METHOD_ORDER = (("full", "bf16"), ("lora", "bf16"), ("qlora", "nf4"))


def _settings(model: Any, gpu: Any, kw: dict[str, Any]) -> TrainSettings:
    if isinstance(model, TrainSettings):
        return replace(model, **kw) if kw else model
    if kw.get("method") == "qlora" and "quant" not in kw:
        kw = {**kw, "quant": "nf4"}
    return make_train_settings(model, gpu=gpu, **kw)


def _memory(s: TrainSettings, gpu_memory_bytes: int | None) -> int:
    if gpu_memory_bytes is not None:
        return gpu_memory_bytes
    if s.gpu is None:
        from ..errors import InvalidSpecError

        raise InvalidSpecError("gpu: give a catalog GPU or gpu_memory_bytes to solve for a fit: None")
    return s.gpu.memory_bytes


def _fits(s: TrainSettings, memory: int) -> bool:
    return estimate_train_settings(s).device_used_bytes <= memory


def max_seq_len(model: Any = "llama-3.2-3b", *, gpu: Any = None, gpu_memory_bytes: int | None = None, **kw: Any) -> int:
    """The largest sequence length that fits (and every shorter one), at most the model's window;
    1 when not even two tokens fit (the smallest step that has a next-token loss)."""
    kw.pop("seq_len", None)
    s = _settings(model, gpu, {**kw, "seq_len": 2})
    mem = _memory(s, gpu_memory_bytes)
    return largest_true(lambda t: _fits(replace(s, seq_len=t), mem), 2, s.model.max_position_embeddings)


def max_micro_batch(
    model: Any = "llama-3.2-3b", *, gpu: Any = None, gpu_memory_bytes: int | None = None, **kw: Any
) -> int:
    """The largest micro-batch that fits (and every smaller one); 0 when one sequence does not
    (packed: when a row of two does not, the fewest a packed row holds)."""
    kw.pop("micro_batch", None)
    lo = 2 if kw.get("packed") else 1
    s = _settings(model, gpu, {**kw, "micro_batch": lo})
    mem = _memory(s, gpu_memory_bytes)
    n = largest_true(lambda b: _fits(replace(s, micro_batch=b), mem), lo, MAX_MICRO_BATCH)
    return n if n >= lo else 0


def smallest_gpu(model: Any = "llama-3.2-3b", *, gpus: Iterable[Gpu] | None = None, **kw: Any) -> Gpu | None:
    """The sm80+ catalog GPU with the least memory on which the step fits; None if none does."""
    s = _settings(model, None, kw)
    for g in sorted(gpus if gpus is not None else gpu_catalog(), key=lambda g: (g.memory_bytes, g.key)):
        if g.arch in PRE_SM80_ARCHS:  # not modelled for training (estimate_training refuses them)
            continue
        if _fits(replace(s, gpu=g), g.memory_bytes):
            return g
    return None


def best_method(
    model: Any = "llama-3.2-3b", *, gpu: Any = None, gpu_memory_bytes: int | None = None, **kw: Any
) -> str | None:
    """The cheapest method that fits: the first of full, lora, qlora (nf4) whose step fits, with
    every other setting as given; None when even QLoRA does not fit."""
    kw = {k: v for k, v in kw.items() if k not in ("method", "quant")}
    for method, quant in METHOD_ORDER:
        s = _settings(model, gpu, {**kw, "method": method, "quant": quant})
        if _fits(s, _memory(s, gpu_memory_bytes)):
            return method
    return None


def sweep(
    model: Any = "llama-3.2-3b", seq_lens: Iterable[int] = (512, 1024, 2048, 4096, 8192), **kw: Any
) -> list[TrainingEstimate]:
    """One estimate per sequence length, every other setting as given."""
    kw.pop("seq_len", None)
    gpu = kw.pop("gpu", None)
    s = _settings(model, get_gpu(gpu) if gpu is not None else None, {**kw, "seq_len": 2})
    return [estimate_train_settings(replace(s, seq_len=t)) for t in seq_lens]
