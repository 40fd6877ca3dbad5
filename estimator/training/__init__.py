"""Fine-tuning memory: full, LoRA and QLoRA training steps (see docs/training.md).

``params`` counts trainable parameters as PEFT does; ``static`` the weights, adapters, gradients
and optimizer states; ``activations`` what autograd saves and the step's transients;
``estimate`` puts them together as the one report type (``estimate_training``).
"""

from .estimate import TrainingEstimate, estimate_train_settings, estimate_training, make_train_settings
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
    "TrainingEstimate",
    "adapters",
    "estimate_train_settings",
    "estimate_training",
    "make_train_settings",
    "parse_targets",
    "trainable_params",
]
