"""GPU catalog: the memory the driver reports to CUDA programs, per card, with its source.

Data: ``estimator/data/gpus.json``. ``memory_bytes`` is what ``cudaMemGetInfo`` /
``torch.cuda.get_device_properties().total_memory`` reports where a driver reading was found
(each entry's ``memory_source`` quotes it); otherwise the nominal capacity, marked as such.

For speed (``estimator.speed``): ``bandwidth_bytes_per_s`` is the peak memory bandwidth (SI, the
vendor's figure, ``bandwidth_source``) and ``flops_per_s`` the dense (no sparsity) peak per dtype
(fp32 on CUDA cores; fp16, bf16, fp8 and int8 on tensor / matrix cores, FP32 accumulate), each with
``flops_source``: a datasheet, or SM count x boost clock x the per-SM rate of the architecture's
whitepaper where the sheet prints only sparse or FP16-accumulate figures.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .errors import UnknownNameError


@dataclass(frozen=True, slots=True)
class Gpu:
    key: str
    name: str
    vendor: str
    arch: str
    memory_bytes: int
    memory_source: str
    cls: str
    bandwidth_bytes_per_s: int | None = None
    bandwidth_source: str = ""
    # dense peak FLOP/s per dtype ("fp32", "fp16", "bf16", "fp8", "int8"), as sorted pairs so the
    # dataclass stays hashable; ``flops(dtype)`` reads one
    flops_per_s: tuple[tuple[str, int], ...] = ()
    flops_source: str = ""

    def flops(self, dtype: str) -> int | None:
        """Dense peak FLOP/s (or OP/s for int8) of ``dtype``; None where the catalog has none."""
        return dict(self.flops_per_s).get(dtype)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "vendor": self.vendor,
            "arch": self.arch,
            "memory_bytes": self.memory_bytes,
            "source": self.memory_source,
            "class": self.cls,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "bandwidth_source": self.bandwidth_source,
            "flops_per_s": dict(self.flops_per_s),
            "flops_source": self.flops_source,
        }


@functools.lru_cache(maxsize=1)
def gpu_catalog() -> tuple[Gpu, ...]:
    """All catalog GPUs, smallest memory first."""
    raw = json.loads(resources.files("estimator").joinpath("data/gpus.json").read_text())
    gpus = [
        Gpu(
            key=g["key"],
            name=g["name"],
            vendor=g["vendor"],
            arch=g["arch"],
            memory_bytes=int(g["memory_bytes"]),
            memory_source=g["memory_source"],
            cls=g["class"],
            bandwidth_bytes_per_s=g.get("bandwidth_bytes_per_s"),
            bandwidth_source=g.get("bandwidth_source", ""),
            flops_per_s=tuple(sorted((k, int(v)) for k, v in (g.get("flops_per_s") or {}).items())),
            flops_source=g.get("flops_source", ""),
        )
        for g in raw["gpus"]
    ]
    return tuple(sorted(gpus, key=lambda g: (g.memory_bytes, g.key)))


@functools.lru_cache(maxsize=1)
def _by_key() -> dict[str, Gpu]:
    return {g.key: g for g in gpu_catalog()}


def get_gpu(key: str | Gpu) -> Gpu:
    if isinstance(key, Gpu):
        return key
    try:
        return _by_key()[key]
    except (KeyError, TypeError):
        raise UnknownNameError(f"gpu must be a catalog key (see 'python -m estimator gpus'): {key!r}") from None


def custom_gpu(memory_bytes: int, arch: str = "generic") -> Gpu:
    return Gpu(
        key="custom",
        name="Custom GPU",
        vendor="nvidia",
        arch=arch,
        memory_bytes=memory_bytes,
        memory_source="entered by the user",
        cls="custom",
    )


def match_gpu(memory_bytes: int, arch: str) -> Gpu:
    """The catalog GPU of the same architecture with the nearest memory (within 10%), else a custom
    GPU with this memory and architecture. Used to estimate a measurement's own GPU from the
    environment it recorded (``torch.cuda`` total memory and compute capability)."""
    same = [g for g in gpu_catalog() if g.arch == arch]
    if same:
        best = min(same, key=lambda g: abs(g.memory_bytes - memory_bytes))
        if abs(best.memory_bytes - memory_bytes) <= 0.1 * memory_bytes:
            return best
    return custom_gpu(memory_bytes, arch=arch)
