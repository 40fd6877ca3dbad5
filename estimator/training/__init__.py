"""Fine-tuning memory: full, LoRA and QLoRA training steps (see docs/training.md).

``params`` counts trainable parameters as PEFT does.
"""

from .params import (
    ALL_LINEAR,
    LAYER_TARGETS,
    METHODS,
    TARGET_MODULES,
    Adapter,
    TrainableParams,
    adapters,
    parse_targets,
    trainable_params,
)

__all__ = [
    "ALL_LINEAR",
    "LAYER_TARGETS",
    "METHODS",
    "TARGET_MODULES",
    "Adapter",
    "TrainableParams",
    "adapters",
    "parse_targets",
    "trainable_params",
]
