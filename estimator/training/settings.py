"""One fine-tuning setting, validated once (the estimator and the runtime share it).

The training step modelled is the plain PyTorch loop of PEFT's and transformers' examples, one
optimizer step over ``grad_accum`` micro-batches:

    for micro-batch: loss = model(input_ids=ids, labels=ids).loss / grad_accum; loss.backward()
    optimizer.step(); optimizer.zero_grad(set_to_none=True)

with the model output dropped before ``backward`` (as the Trainer's ``compute_loss`` does), SDPA
attention, every sequence ``seq_len`` tokens (no padding). ``mixed_precision``: ``"off"`` runs
the weights' and adapters' own dtypes, as PEFT leaves them; ``"bf16"`` is the Trainer's
``bf16=True``: accelerate 1.16 ``Accelerator.prepare_model`` wraps the forward in
``torch.autocast("cuda", dtype=torch.bfloat16)`` and ``convert_outputs_to_fp32`` (the backward
runs outside autocast). Full fine-tuning with ``quant="fp32"`` is fp32 master weights (the model
loaded in fp32) under that autocast.

``packed``: padding-free batches (transformers' ``DataCollatorWithFlattening``, TRL's
``padding_free``/``packing``): the ``micro_batch`` sequences are one row [1, N] of
N = micro_batch x seq_len tokens, ``position_ids`` restarting at 0 per sequence, ``labels`` -100 at
each sequence's first token, no attention mask, and ``use_cache=False`` (the Trainer's default,
``TrainingArguments.use_cache``). ``attn_implementation``: the model's ``sdpa`` or
``flash_attention_2`` (flash-attn 2, varlen on a packed row).
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
MIXED_PRECISION = ("off", "bf16")
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2")
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
    mixed_precision: str = "off"
    packed: bool = False
    attn_implementation: str = "sdpa"
    loss: str = "transformers"
    liger_layers: bool = False
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
        if not isinstance(self.packed, bool):
            raise InvalidSpecError(f"packed must be true or false: {self.packed!r}")
        _choice("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        if self.packed and self.micro_batch < 2:
            raise InvalidSpecError(
                f"micro_batch: a packed row needs at least 2 sequences (one is an unpacked row): {self.micro_batch!r}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise InvalidSpecError(f"dropout must be a number in [0, 1): {self.dropout!r}")
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if self.method == "qlora":
            _choice("quant", self.quant, QLORA_QUANTS)
        else:
            _choice("quant", self.quant, FULL_PRECISIONS if self.method == "full" else FULL_PRECISIONS[:1])
        if (
            self.loss != "transformers"
            and self.mixed_precision != "off"
            and self.method != "full"
            and self.adapter_dtype == "fp32"
            and (
                self.grad_checkpointing != "off"
                or (self.method == "lora" and (self.targets != LAYER_TARGETS or self.dropout > 0))
            )
        ):
            # with the logits gone, a decoder layer's own moment under autocast is the step's peak:
            # the checkpointed recompute in backward (3B trace at 8K: 1.23 GB for LoRA, 996 MB for
            # QLoRA above the estimate), or, for LoRA, the forward's fp32 input casts, a candidate
            # for all-linear targets without dropout only (estimate: down_proj's LoRA forward)
            raise InvalidSpecError(
                f"loss: {self.loss} under mixed_precision bf16 with fp32 adapters is modelled without "
                "gradient checkpointing, and for lora with all-linear targets and no dropout (a decoder "
                f"layer's moment under autocast, above the loss's, is not modelled otherwise): {self.loss!r}"
            )
        if self.quant == "fp32" and self.mixed_precision == "off":
            # fp32 activations would take SDPA's math path, modelled for QLoRA's layers only
            raise InvalidSpecError(
                "quant: fp32 weights are modelled as master weights under mixed_precision bf16 "
                "(pure fp32 training is not modelled): 'fp32'"
            )
        self._check_liger_layers()
        if self.method != "full" and not self.targets:
            raise InvalidSpecError(f"targets must name at least one module: {self.targets!r}")

    def _check_liger_layers(self) -> None:
        """``liger_layers``: Liger's RMSNorm, SwiGLU and RoPE kernels (the Trainer's default
        ``liger_kernel_config``), modelled for Llama (QLoRA, bf16 autocast, LoRA dropout, packed
        rows and flash_attention_2 with the default loss only); each other combination is refused
        by name until traced."""
        if not isinstance(self.liger_layers, bool):
            raise InvalidSpecError(f"liger_layers must be true or false: {self.liger_layers!r}")
        if not self.liger_layers:
            return
        why = None
        if self.method == "qlora" and self.loss == "liger":
            # with the final norm's backward in place a decoder layer's backward moment (not a
            # candidate) is the peak of the narrow trace: not modelled
            why = "qlora and loss liger together"
        elif self.mixed_precision != "off" and (self.quant == "fp32" or self.loss == "liger"):
            # traced under autocast for bf16 weights and 4-bit bases with the default loss
            why = f"mixed_precision {self.mixed_precision} with fp32 master weights or loss liger"
        elif self.loss == "liger" and (self.packed or self.attn_implementation != "sdpa"):
            # the Liger loss's layer moments are traced on unpacked SDPA rows only
            why = f"loss liger and a packed row or attn_implementation {self.attn_implementation}"
        elif self.model.model_type != "llama":
            why = f"model_type {self.model.model_type} (apply_liger_kernel_to_llama's patches only)"
        elif self.dropout and self.loss == "liger":
            why = "LoRA dropout and loss liger together"
        elif self.loss == "liger" and self.method == "lora" and self.grad_checkpointing == "reentrant":
            # a decoder layer's moment is then the peak: traced without checkpointing and non-reentrant
            why = "loss liger on lora with reentrant checkpointing"
        elif (
            self.loss == "liger"
            and self.method == "lora"
            and (self.targets != LAYER_TARGETS or self.adapter_dtype != "fp32")
        ):
            why = "loss liger on lora other than all-linear fp32 adapters"
        if why is not None:
            raise InvalidSpecError(
                f"liger_layers: Liger's RMSNorm, SwiGLU and RoPE kernels are not modelled with {why}: True"
            )

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
            "mixed_precision": self.mixed_precision,
            "packed": self.packed,
            "attn_implementation": self.attn_implementation,
            "loss": self.loss,
            "liger_layers": self.liger_layers,
            "engine": "transformers-train",
            "gpu": self.gpu.key if self.gpu else None,
        }
