"""One fine-tuning setting, validated once (the estimator and the runtime share it).

The training step modelled is the plain PyTorch loop of PEFT's and transformers' examples, one
optimizer step over ``grad_accum`` micro-batches:

    for micro-batch: loss = model(input_ids=ids, labels=ids).loss / grad_accum; loss.backward()
    optimizer.step(); optimizer.zero_grad(set_to_none=True)

with the model output dropped before ``backward`` (as the Trainer's ``compute_loss`` does), no
autocast (the weights' and adapters' own dtypes, as PEFT leaves them), SDPA attention, every
sequence ``seq_len`` tokens (no padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidSpecError
from ..gpus import Gpu
from ..model import ModelSpec
from ..units import check_int
from .params import LAYER_TARGETS, MAX_RANK, check_method, targets_label
from .static import ADAPTER_DTYPES, FULL_PRECISIONS, QLORA_QUANTS, check_optimizer

GRAD_CHECKPOINTING = ("off", "non-reentrant", "reentrant")
# the loss: transformers' ``ForCausalLMLoss`` over the full logits, or Liger-Kernel's fused linear
# cross-entropy (``LigerForCausalLMLoss``, what the Trainer's ``use_liger_kernel`` swaps in)
LOSSES = ("transformers", "liger")
MAX_SEQ_LEN = 1 << 24
MAX_MICRO_BATCH = 1 << 16
MAX_GRAD_ACCUM = 1 << 16


def _choice(name: str, v: Any, options: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in options:
        raise InvalidSpecError(f"{name} must be one of {', '.join(options)}: {v!r}")
    return v


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSettings:
    """A fine-tuning step. ``quant`` is the base's storage: the bnb 4-bit scheme for qlora, the
    training precision for full and lora (bf16)."""

    model: ModelSpec
    method: str = "lora"
    rank: int = 16
    targets: tuple[str, ...] = LAYER_TARGETS
    dropout: float = 0.0
    quant: str = "bf16"
    adapter_dtype: str = "fp32"
    optimizer: str = "adamw"
    seq_len: int = 2048
    micro_batch: int = 1
    grad_accum: int = 1
    grad_checkpointing: str = "off"
    loss: str = "transformers"
    gpu: Gpu | None = None

    def __post_init__(self) -> None:
        check_method(self.method)
        check_optimizer(self.optimizer)
        check_int(self.rank, "rank", 1, MAX_RANK)
        check_int(self.seq_len, "seq_len", 2, MAX_SEQ_LEN)
        window = self.model.max_position_embeddings
        if self.seq_len > window:
            raise InvalidSpecError(
                f"seq_len must be at most the model's window (max_position_embeddings {window:,}): {self.seq_len!r}"
            )
        check_int(self.micro_batch, "micro_batch", 1, MAX_MICRO_BATCH)
        check_int(self.grad_accum, "grad_accum", 1, MAX_GRAD_ACCUM)
        _choice("grad_checkpointing", self.grad_checkpointing, GRAD_CHECKPOINTING)
        _choice("loss", self.loss, LOSSES)
        _choice("adapter_dtype", self.adapter_dtype, ADAPTER_DTYPES)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise InvalidSpecError(f"dropout must be a number in [0, 1): {self.dropout!r}")
        if self.method == "qlora":
            _choice("quant", self.quant, QLORA_QUANTS)
        else:
            _choice("quant", self.quant, FULL_PRECISIONS)
        if self.method != "full" and not self.targets:
            raise InvalidSpecError(f"targets must name at least one module: {self.targets!r}")

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch."""
        return self.seq_len * self.micro_batch

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "method": self.method,
            "rank": self.rank if self.method != "full" else None,
            "targets": targets_label(self.targets) if self.method != "full" else None,
            "dropout": self.dropout if self.method != "full" else None,
            "quant": self.quant,
            "adapter_dtype": self.adapter_dtype if self.method != "full" else None,
            "optimizer": self.optimizer,
            "seq_len": self.seq_len,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "grad_checkpointing": self.grad_checkpointing,
            "loss": self.loss,
            "engine": "transformers-train",
            "gpu": self.gpu.key if self.gpu else None,
        }
